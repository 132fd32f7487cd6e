"""Provider API settings: each provider's OAuth app and endpoints, read from the variables of its
ProviderApp's `env_prefix` (ohx_dagster/providers/<name>/__init__.py; the provider registry lists
them, and config does not import it: the app is handed in).

| variable | default | meaning |
|---|---|---|
| OHX_OURA_CLIENT_ID, OHX_OURA_CLIENT_SECRET | (required for source "oura") | Oura OAuth app |
| OHX_OURA_API_URL, OHX_OURA_TOKEN_URL | https://api.ouraring.com, .../oauth/token | |
| OHX_WITHINGS_CLIENT_ID, OHX_WITHINGS_CLIENT_SECRET | (required for "withings") | Withings app |
| OHX_WITHINGS_API_URL, OHX_WITHINGS_TOKEN_URL | https://wbsapi.withings.net, .../v2/oauth2 | |
| OHX_GOOGLE_HEALTH_CLIENT_ID, ..._CLIENT_SECRET | (required for "google_health") | Google app |
| OHX_GOOGLE_HEALTH_API_URL, ..._TOKEN_URL | https://health.googleapis.com, oauth2 token | |
| OHX_POLAR_ACCESSLINK_CLIENT_ID | (required for "polar_accesslink") | Polar app |
| OHX_POLAR_ACCESSLINK_CLIENT_SECRET | (required for "polar_accesslink") | Polar app |
| OHX_POLAR_ACCESSLINK_API_URL, ..._TOKEN_URL | https://www.polaraccesslink.com, polarremote.com | |
| OHX_DEXCOM_CLIENT_ID, OHX_DEXCOM_CLIENT_SECRET | (required for "dexcom") | Dexcom app |
| OHX_DEXCOM_API_URL, ..._TOKEN_URL | https://api.dexcom.com, .../v2/oauth2/token | (below) |

Dexcom's sandbox is https://sandbox-api.dexcom.com, its EU and Japan hosts https://api.dexcom.eu and
https://api.dexcom.jp: the three URLs (with OHX_DEXCOM_AUTHORIZE_URL) point the source there.

The secrets are read where the source is built (SourcesResource.get), never stored in run config.
The authorization endpoint (OHX_<P>_AUTHORIZE_URL) is the connect flow's: ohx_dagster/config/
connect.py; the key that encrypts the tokens (OHX_TOKEN_KEY): ohx_dagster/config/tokens.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted
from ohx_dagster.core.errors import ConfigError


class ProviderEndpoints(Protocol):
    """What the settings read of a provider's ProviderApp (ohx_dagster.providers.api.app)."""

    @property
    def name(self) -> str: ...

    @property
    def env_prefix(self) -> str: ...  # OHX_OURA: _CLIENT_ID, _CLIENT_SECRET, _API_URL, ...

    @property
    def api_url(self) -> str: ...

    @property
    def token_url(self) -> str: ...

    @property
    def token_params(self) -> Mapping[str, str]: ...

    @property
    def token_wrapped(self) -> bool: ...

    @property
    def token_auth(self) -> str: ...


@dataclass(frozen=True, slots=True, repr=False)
class OAuthClient(Redacted):
    """A provider's OAuth application: where and as whom to refresh tokens."""

    _secrets = ("client_secret",)

    provider: str
    token_url: str
    client_id: str
    client_secret: str
    # Fields the provider wants beside the standard ones (Withings: action=requesttoken).
    extra_params: Mapping[str, str] = field(default_factory=dict)
    # Withings wraps every answer as {"status": 0, "body": {...}}.
    wrapped: bool = False
    # "form": client_id and client_secret in the form body; "basic": an HTTP Basic header.
    token_auth: str = "form"


@dataclass(frozen=True, slots=True, repr=False)
class ApiSettings(Redacted):
    """A provider API source's settings: its API's base URL and its OAuth app."""

    provider: str
    base_url: str
    oauth: OAuthClient

    @classmethod
    def from_env(cls, app: ProviderEndpoints, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = environment.resolve(env)
        p = app.env_prefix
        missing = [n for n in (f"{p}_CLIENT_ID", f"{p}_CLIENT_SECRET") if not env.get(n)]
        if missing:
            raise ConfigError(
                f"source {app.name!r} needs {' and '.join(missing)} (its OAuth app): set them, "
                f"or take {app.name!r} out of OHX_SOURCES"
            )
        return cls(
            provider=app.name,
            base_url=env.get(f"{p}_API_URL") or app.api_url,
            oauth=OAuthClient(
                provider=app.name,
                token_url=env.get(f"{p}_TOKEN_URL") or app.token_url,
                client_id=env[f"{p}_CLIENT_ID"],
                client_secret=env[f"{p}_CLIENT_SECRET"],
                extra_params=dict(app.token_params),
                wrapped=app.token_wrapped,
                token_auth=app.token_auth,
            ),
        )

    @staticmethod
    def configured(app: ProviderEndpoints, env: Mapping[str, str] | None = None) -> bool:
        """Whether the provider's OAuth client id and secret are both set."""
        env = environment.resolve(env)
        return bool(env.get(f"{app.env_prefix}_CLIENT_ID")) and bool(
            env.get(f"{app.env_prefix}_CLIENT_SECRET")
        )

    @staticmethod
    def named(app: ProviderEndpoints, env: Mapping[str, str] | None = None) -> bool:
        """Whether either of the provider's OAuth client id and secret is set."""
        env = environment.resolve(env)
        return any(env.get(f"{app.env_prefix}_{part}") for part in ("CLIENT_ID", "CLIENT_SECRET"))
