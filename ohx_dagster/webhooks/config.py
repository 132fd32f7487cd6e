"""Webhook secrets from the environment, read in one place. Every variable and what it is for.

| variable | route | meaning |
|---|---|---|
| OHX_WEBHOOK_FITBIT_SECRET | fitbit | app client secret: X-Fitbit-Signature key |
| OHX_WEBHOOK_FITBIT_VERIFY | fitbit | subscriber verification code (GET ?verify=) |
| OHX_OURA_CLIENT_SECRET | oura | client secret: x-oura-signature key |
| OHX_OURA_VERIFICATION_TOKEN | oura | verification_token given when subscribing |
| OHX_WITHINGS_CALLBACK_TOKEN | withings | shared secret in the callback URL (?token=) |
| OHX_SIMULATED_WEBHOOK_SECRET | simulated | HMAC key; dev default `ohx-dev-simulated-secret` |

Routes are /webhooks/<route>.

A provider whose variables are all unset is not mounted (its route answers 404; the receiver
logs it at startup). Half a configuration (a secret without its verification code) or a value
too short to be a secret is an error at startup that names the variable; the one exception is
Oura's client secret alone, which is the OAuth app's secret for API sync without webhooks. Only
the simulated provider has a default, because it is the embedded development source; never use it
in production.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ohx_dagster.errors import ConfigError

SIMULATED_DEV_SECRET: Final = "ohx-dev-simulated-secret"
MIN_SECRET_CHARS: Final = 8

FITBIT_SECRET: Final = "OHX_WEBHOOK_FITBIT_SECRET"
FITBIT_VERIFY: Final = "OHX_WEBHOOK_FITBIT_VERIFY"
OURA_SECRET: Final = "OHX_OURA_CLIENT_SECRET"
OURA_TOKEN: Final = "OHX_OURA_VERIFICATION_TOKEN"
WITHINGS_TOKEN: Final = "OHX_WITHINGS_CALLBACK_TOKEN"
SIMULATED_SECRET: Final = "OHX_SIMULATED_WEBHOOK_SECRET"


@dataclass(frozen=True, slots=True)
class FitbitSecrets:
    client_secret: str
    verification_code: str


@dataclass(frozen=True, slots=True)
class OuraSecrets:
    client_secret: str
    verification_token: str


@dataclass(frozen=True, slots=True)
class WebhookSecrets:
    """Per provider its secrets, or None when that provider is not configured (not mounted)."""

    fitbit: FitbitSecrets | None = None
    oura: OuraSecrets | None = None
    withings_token: str | None = None
    simulated_secret: str | None = SIMULATED_DEV_SECRET

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSecrets:
        env = os.environ if env is None else env
        fitbit = _pair(env, FITBIT_SECRET, FITBIT_VERIFY)
        oura = _oura(env)
        withings = _secret(env, WITHINGS_TOKEN)
        simulated = _secret(env, SIMULATED_SECRET) if SIMULATED_SECRET in env else None
        return cls(
            fitbit=None if fitbit is None else FitbitSecrets(*fitbit),
            oura=None if oura is None else OuraSecrets(*oura),
            withings_token=withings,
            simulated_secret=SIMULATED_DEV_SECRET if simulated is None else simulated,
        )

    @property
    def mounted(self) -> dict[str, bool]:
        """Which provider routes the receiver serves."""
        return {
            "fitbit": self.fitbit is not None,
            "oura": self.oura is not None,
            "withings": self.withings_token is not None,
            "simulated": self.simulated_secret is not None,
        }


def _secret(env: Mapping[str, str], name: str) -> str | None:
    if name not in env:
        return None
    value = env[name].strip()
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"{name} is set but {len(value)} characters long: expected a secret of at least "
            f"{MIN_SECRET_CHARS} characters (unset it to leave the provider unmounted)"
        )
    return value


def _oura(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Oura signs webhooks with the OAuth app's client secret, so the secret alone means "the
    API is used"; the route is mounted once the verification token is set too."""
    secret, token = _secret(env, OURA_SECRET), _secret(env, OURA_TOKEN)
    if token is not None and secret is None:
        raise ConfigError(f"{OURA_TOKEN} is set but {OURA_SECRET} is not: set both or neither")
    return None if token is None or secret is None else (secret, token)


def _pair(env: Mapping[str, str], first: str, second: str) -> tuple[str, str] | None:
    a, b = _secret(env, first), _secret(env, second)
    if a is None and b is None:
        return None
    if a is None or b is None:
        missing, present = (first, second) if a is None else (second, first)
        raise ConfigError(f"{present} is set but {missing} is not: set both or neither")
    return a, b
