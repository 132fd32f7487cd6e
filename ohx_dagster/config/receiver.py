"""Webhook receiver settings from the environment, read in one place. Every variable, its default
and what it is for. ReceiverSettings (Settings.receiver) holds both parts: the secrets and the
limits.

Secrets: a provider whose variables are all unset is not mounted (its route answers 404; the
receiver logs it at startup).

| variable | route | meaning |
|---|---|---|
| OHX_OURA_CLIENT_SECRET | oura | client secret: x-oura-signature key |
| OHX_OURA_VERIFICATION_TOKEN | oura | verification_token given when subscribing |
| OHX_WITHINGS_CALLBACK_TOKEN | withings | shared secret in the callback URL (?token=) |
| OHX_SIMULATED_WEBHOOK_SECRET | simulated | development only: HMAC key of the simulator's events |
| OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION | google_health | Authorization value Google sends |
| OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET | google_health | Google's Tink keyset: https URL or file |
| OHX_POLAR_ACCESSLINK_CLIENT_SECRET | polar_accesslink | the AccessLink OAuth app: mounts it |
| OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY | polar_accesslink | the webhook's signing key |

Google Health: the authorization value is the subscriber's endpointAuthorization.secret, scheme
included (`Bearer <secret>`); the keyset verifies the notifications' signatures and defaults to
GOOGLE_HEALTH_KEYSET_URL (gstatic). Setting the keyset without the authorization is an error.

Polar AccessLink: the route is mounted with the OAuth app (its client secret), because Polar
PINGs it while the app's one webhook is being created, before it hands out the signature key;
until the key is set the route answers PINGs only (providers/polar/accesslink_subscriptions.py
creates the webhook and shows the key once). The key without the client secret is an error.

Routes are /webhooks/<route>. Half a configuration (a verification token without its secret) or
a value too short to be a secret is an error at startup that names the variable; the one
exception is Oura's client secret alone, which is the OAuth app's secret for API sync without
webhooks. No route has a default secret: /webhooks/simulated, the embedded development source,
exists only when OHX_SIMULATED_WEBHOOK_SECRET is set (scripts/dev sets a random one per start);
never set it in production.

Limits: the receiver is a public endpoint. Each variable is also an `ohx-webhooks` flag (named in
LIMIT_VARIABLES: --header-timeout, --body-timeout, --keep-alive, --max-connections,
--max-connections-per-address, --rate-per-minute, --rate-burst, --trusted-proxies), which wins
over the variable.

| variable | default | meaning |
|---|---|---|
| OHX_WEBHOOK_HEADER_TIMEOUT_S | 10 | seconds for a request line and headers to arrive (1) |
| OHX_WEBHOOK_BODY_TIMEOUT_S | 10 | seconds for a body to arrive once its headers did (2) |
| OHX_WEBHOOK_KEEP_ALIVE_S | 5 | an idle keep-alive connection is closed after it (3) |
| OHX_WEBHOOK_MAX_CONNECTIONS | 1000 | connections beyond which requests get 503 (4) |
| OHX_WEBHOOK_MAX_CONNECTIONS_PER_ADDRESS | 100 | open connections per client address (7) |
| OHX_WEBHOOK_RATE_PER_MINUTE | 1200 | requests per minute per client address; 0 = no limit (5) |
| OHX_WEBHOOK_RATE_BURST | 200 | requests a client address may send at once (5) |
| OHX_WEBHOOK_TRUSTED_PROXIES | (unset) | proxies whose X-Forwarded-For names the client (6) |

1. Counted from the connection's start, or from a later request's first byte; then 408 and the
   connection is closed. uvicorn 0.54 has no such timeout (timeout_keep_alive starts only after
   a response): ohx_dagster.receiver.serve adds it.
2. Then 408 and the connection is closed. When the answer comes before the body (401, 404, 429),
   the rest of the body counts as the next request's head: (1) bounds it.
3. uvicorn's timeout_keep_alive (whole seconds).
4. uvicorn's limit_concurrency: while that many connections are open (or requests in progress),
   a new request gets 503 and its connection is closed.
5. A token bucket per client address in the app, /healthz exempt; over it, 429 with Retry-After.
   Providers deliver from a few addresses each, so the limit is per address, not per user: raise
   it when one provider's deliveries for all users exceed it. IPv6 clients share a bucket per /64
   (one site's allocation), so rotating addresses inside it does not multiply the rate.
6. Comma-separated addresses or networks (uvicorn proxy_headers with forwarded_allow_ips). Unset:
   the client is the socket's peer and X-Forwarded-For is ignored. Behind a proxy, set it, or
   every request counts against the proxy's address. `*` is refused.
7. A connection beyond it is answered 503 and closed at once, so that one client cannot fill (4)
   and shut everyone out; 0 = no cap. Counted per socket peer (IPv6 per /64); the trusted
   proxies (6) are not capped, since every client behind them shares their address (so behind a
   proxy, set (6) or raise this).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted
from ohx_dagster.core.errors import ConfigError

MIN_SECRET_CHARS: Final = 8

OURA_SECRET: Final = "OHX_OURA_CLIENT_SECRET"
OURA_TOKEN: Final = "OHX_OURA_VERIFICATION_TOKEN"
WITHINGS_TOKEN: Final = "OHX_WITHINGS_CALLBACK_TOKEN"
SIMULATED_SECRET: Final = "OHX_SIMULATED_WEBHOOK_SECRET"
GOOGLE_HEALTH_AUTHORIZATION: Final = "OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION"
GOOGLE_HEALTH_KEYSET: Final = "OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET"
GOOGLE_HEALTH_KEYSET_URL: Final = (
    "https://www.gstatic.com/googlehealthapi/webhooks/webhooks_public_keyset.json"
)
POLAR_ACCESSLINK_SECRET: Final = "OHX_POLAR_ACCESSLINK_CLIENT_SECRET"
POLAR_ACCESSLINK_KEY: Final = "OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY"


@dataclass(frozen=True, slots=True, repr=False)
class OuraSecrets(Redacted):
    _secrets = ("client_secret", "verification_token")

    client_secret: str
    verification_token: str


@dataclass(frozen=True, slots=True, repr=False)
class GoogleHealthSecrets(Redacted):
    _secrets = ("authorization",)

    authorization: str  # the exact Authorization header value Google sends
    keyset_location: str = GOOGLE_HEALTH_KEYSET_URL


@dataclass(frozen=True, slots=True, repr=False)
class PolarAccessLinkSecrets(Redacted):
    """None: the webhook is not created yet (only PINGs are answered)."""

    _secrets = ("signature_secret_key",)

    signature_secret_key: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class WebhookSecrets(Redacted):
    """Per provider its secrets, or None when that provider is not configured (not mounted)."""

    _secrets = ("withings_token", "simulated_secret")

    oura: OuraSecrets | None = None
    withings_token: str | None = None
    simulated_secret: str | None = None
    google_health: GoogleHealthSecrets | None = None
    polar_accesslink: PolarAccessLinkSecrets | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSecrets:
        env = environment.resolve(env)
        oura = _oura(env)
        return cls(
            oura=None if oura is None else OuraSecrets(*oura),
            withings_token=_secret(env, WITHINGS_TOKEN),
            simulated_secret=_secret(env, SIMULATED_SECRET),
            google_health=_google_health(env),
            polar_accesslink=_polar_accesslink(env),
        )

    def of(self, provider: str) -> object | None:
        """The secrets a provider's webhook routes are built with (None: not configured)."""
        return self.withings_token if provider == "withings" else getattr(self, provider, None)

    @property
    def mounted(self) -> dict[str, bool]:
        """Which provider routes the receiver serves."""
        return {
            "oura": self.oura is not None,
            "withings": self.withings_token is not None,
            "google_health": self.google_health is not None,
            "polar_accesslink": self.polar_accesslink is not None,
            "simulated": self.simulated_secret is not None,
        }


@dataclass(frozen=True, slots=True)
class LimitVariable:
    """One limit: its ReceiverLimits field, environment variable and ohx-webhooks flag."""

    field: str
    env: str
    flag: str
    help: str


LIMIT_VARIABLES: Final = (
    LimitVariable(
        "header_timeout_s",
        "OHX_WEBHOOK_HEADER_TIMEOUT_S",
        "--header-timeout",
        "seconds for a request's line and headers to arrive",
    ),
    LimitVariable(
        "body_timeout_s",
        "OHX_WEBHOOK_BODY_TIMEOUT_S",
        "--body-timeout",
        "seconds for a request's body to arrive after its headers",
    ),
    LimitVariable(
        "keep_alive_s",
        "OHX_WEBHOOK_KEEP_ALIVE_S",
        "--keep-alive",
        "seconds an idle keep-alive connection stays open",
    ),
    LimitVariable(
        "max_connections",
        "OHX_WEBHOOK_MAX_CONNECTIONS",
        "--max-connections",
        "open connections beyond which requests get 503",
    ),
    LimitVariable(
        "max_connections_per_address",
        "OHX_WEBHOOK_MAX_CONNECTIONS_PER_ADDRESS",
        "--max-connections-per-address",
        "open connections per client address, 0 = no cap",
    ),
    LimitVariable(
        "rate_per_minute",
        "OHX_WEBHOOK_RATE_PER_MINUTE",
        "--rate-per-minute",
        "requests per minute per client address, 0 = no limit",
    ),
    LimitVariable(
        "rate_burst",
        "OHX_WEBHOOK_RATE_BURST",
        "--rate-burst",
        "requests a client address may send at once",
    ),
    LimitVariable(
        "trusted_proxies",
        "OHX_WEBHOOK_TRUSTED_PROXIES",
        "--trusted-proxies",
        "comma-separated proxy addresses/networks whose X-Forwarded-For is believed",
    ),
)

# field -> (type, lowest, highest) of the numeric limits.
_BOUNDS: Final[dict[str, tuple[type[int] | type[float], float, float]]] = {
    "header_timeout_s": (float, 0.01, 3_600),
    "body_timeout_s": (float, 0.01, 3_600),
    "keep_alive_s": (int, 1, 3_600),
    "max_connections": (int, 1, 1_000_000),
    "max_connections_per_address": (int, 0, 1_000_000),
    "rate_per_minute": (int, 0, 100_000_000),
    "rate_burst": (int, 1, 100_000_000),
}


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """How much a client may hold or send (see the module doc's table). The app applies the body
    timeout and the rate limit; the server (ohx_dagster.receiver.serve) applies the rest."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 1_000
    max_connections_per_address: int = 100
    rate_per_minute: int = 1_200
    rate_burst: int = 200
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, bounds in _BOUNDS.items():
            object.__setattr__(self, name, _bounded(name, getattr(self, name), *bounds))
        proxies = self.trusted_proxies
        if isinstance(proxies, str):
            proxies = tuple(proxies.split(","))
        object.__setattr__(self, "trusted_proxies", _proxies("trusted_proxies", proxies))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None
    ) -> ReceiverLimits:
        """The limits from the environment; `flags` (field -> text, from ohx-webhooks) win."""
        env = environment.resolve(env)
        flags = flags or {}
        values: dict[str, object] = {}
        for limit in LIMIT_VARIABLES:
            if flags.get(limit.field) is not None:
                label, text = limit.flag, flags[limit.field]
            elif env.get(limit.env) is not None:
                label, text = limit.env, env[limit.env]
            else:
                continue
            if limit.field == "trusted_proxies":
                values[limit.field] = _proxies(label, tuple(text.split(",")))
            else:
                values[limit.field] = _bounded(label, text.strip(), *_BOUNDS[limit.field])
        return cls(**values)  # type: ignore[arg-type]


def _bounded(
    label: str, value: object, kind: type[int] | type[float], lowest: float, highest: float
) -> int | float:
    whole = "a whole number" if kind is int else "a number"
    expected = f"{whole} from {lowest:g} to {highest:g}"
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise ConfigError(f"{label}={value!r}: expected {expected}")
    try:
        # Any value on purpose: one int() or float() refuses raises, and is reported below.
        number = kind(value)  # type: ignore[call-overload, arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{label}={value!r}: expected {expected}") from None
    if not lowest <= number <= highest:  # NaN fails this too
        raise ConfigError(f"{label}={value!r}: expected {expected}")
    return number


def _proxies(label: str, entries: tuple[str, ...]) -> tuple[str, ...]:
    """Each entry an IP address or network (normalized); `*` (trust anyone) is refused."""
    found = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            if "/" in entry:
                found.append(str(ipaddress.ip_network(entry, strict=False)))
            else:
                found.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise ConfigError(
                f"{label}: {entry!r} is not an IP address or network: list the proxies' "
                "addresses (e.g. 10.0.0.5) or networks (e.g. 10.0.0.0/8); '*' is refused because "
                "any client could then choose its own address"
            ) from None
    return tuple(found)


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


def _google_health(env: Mapping[str, str]) -> GoogleHealthSecrets | None:
    """Mounted with the authorization secret; the keyset is an https URL (http only on this
    machine, for tests) or a file that exists."""
    authorization = _secret(env, GOOGLE_HEALTH_AUTHORIZATION)
    location = env.get(GOOGLE_HEALTH_KEYSET, "").strip()
    if authorization is None:
        if location:
            raise ConfigError(
                f"{GOOGLE_HEALTH_KEYSET} is set but {GOOGLE_HEALTH_AUTHORIZATION} is not: set "
                "the authorization secret too, or neither"
            )
        return None
    if not location:
        return GoogleHealthSecrets(authorization)
    url = urlsplit(location)
    local = url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost", "::1")
    if (url.scheme == "https" and url.hostname) or local:
        return GoogleHealthSecrets(authorization, location)
    if "://" in location or not os.path.isfile(location):
        raise ConfigError(
            f"{GOOGLE_HEALTH_KEYSET}={location!r}: expected an https:// URL or the path of an "
            "existing file (Google's Tink JSON keyset)"
        )
    return GoogleHealthSecrets(authorization, location)


def _polar_accesslink(env: Mapping[str, str]) -> PolarAccessLinkSecrets | None:
    """Mounted with the OAuth app's client secret; the signature key once the webhook exists."""
    secret, key = _secret(env, POLAR_ACCESSLINK_SECRET), _secret(env, POLAR_ACCESSLINK_KEY)
    if key is not None and secret is None:
        raise ConfigError(
            f"{POLAR_ACCESSLINK_KEY} is set but {POLAR_ACCESSLINK_SECRET} is not: the webhook "
            "belongs to the AccessLink OAuth app, set its client id and secret too"
        )
    return None if secret is None else PolarAccessLinkSecrets(key)


@dataclass(frozen=True, slots=True, repr=False)
class ReceiverSettings(Redacted):
    """The webhook receiver's settings: its providers' secrets and its limits (the limits of
    the environment alone; `ohx-webhooks` flags win over them: ReceiverLimits.from_env)."""

    secrets: WebhookSecrets
    limits: ReceiverLimits

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReceiverSettings:
        env = environment.resolve(env)
        return cls(WebhookSecrets.from_env(env), ReceiverLimits.from_env(env))


def simulated_secret(env: Mapping[str, str] | None = None) -> str:
    """OHX_SIMULATED_WEBHOOK_SECRET, stripped ("": unset), as the simulator that signs with it
    reads it (the receiver checks it: WebhookSecrets)."""
    return environment.resolve(env).get(SIMULATED_SECRET, "").strip()
