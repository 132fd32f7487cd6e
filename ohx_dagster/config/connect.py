"""Account connection and webhook subscription settings: where the receiver is reached from the
outside, for the OAuth redirect (ohx_dagster/providers/api/connect.py, ohx_dagster/receiver/
connect.py) and for the providers' webhook callbacks (ohx_dagster/providers/api/subscription.py).

| variable | default | meaning |
|---|---|---|
| OHX_OAUTH_REDIRECT_BASE | (unset: /connect, /oauth and /auth/staff are not mounted) | public base URL of the receiver; the callback, to register at each provider, is <base>/oauth/<provider>/callback |
| OHX_<P>_AUTHORIZE_URL | the provider's (providers/<name>/__init__.py) | another authorization endpoint (P = OURA, WITHINGS, GOOGLE_HEALTH, POLAR_ACCESSLINK, DEXCOM; Dexcom's sandbox: https://sandbox-api.dexcom.com/v2/oauth2/login) |
| OHX_WEBHOOK_BASE_URL | OHX_OAUTH_REDIRECT_BASE | the receiver's public base URL for provider callbacks; unset with the redirect base: nothing is subscribed |
| OHX_CONNECT_TOKEN | (retired) | set, the receiver refuses to start: each staff member has their own token (`ohx staff add NAME`) |

The OAuth apps (OHX_<P>_CLIENT_ID, OHX_<P>_CLIENT_SECRET) are the API sources'
(ohx_dagster/config/providers.py); a provider without them cannot be connected (404). The webhook
secrets the callbacks carry are the receiver's (ohx_dagster/config/receiver.py: a provider whose
route is not mounted is not subscribed).
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from ohx_dagster.config import environment
from ohx_dagster.config import receiver as webhooks
from ohx_dagster.config.redact import Redacted
from ohx_dagster.core.errors import ConfigError

REDIRECT_BASE_ENV: Final = "OHX_OAUTH_REDIRECT_BASE"
BASE_URL_ENV: Final = "OHX_WEBHOOK_BASE_URL"
RETIRED_TOKEN_ENV: Final = "OHX_CONNECT_TOKEN"
_AUTHORIZE_SUFFIX: Final = "_AUTHORIZE_URL"


@dataclass(frozen=True, slots=True, repr=False)
class ConnectionSettings(Redacted):
    """The OAuth redirect's settings (OHX_OAUTH_REDIRECT_BASE, OHX_<P>_AUTHORIZE_URL)."""

    # OHX_OAUTH_REDIRECT_BASE, stripped ("": unset, the connect routes are not mounted).
    redirect_base: str = ""
    # Whether the retired OHX_CONNECT_TOKEN is set.
    retired_token: bool = False
    # env prefix (OHX_OURA) -> OHX_OURA_AUTHORIZE_URL, the ones set.
    authorize_urls: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectionSettings:
        env = environment.resolve(env)
        return cls(
            redirect_base=env.get(REDIRECT_BASE_ENV, "").strip(),
            retired_token=bool(env.get(RETIRED_TOKEN_ENV, "").strip()),
            authorize_urls={
                name.removesuffix(_AUTHORIZE_SUFFIX): value
                for name, value in env.items()
                if name.startswith("OHX_") and name.endswith(_AUTHORIZE_SUFFIX) and value
            },
        )

    @property
    def base_url(self) -> str:
        """The redirect base without its trailing slash ("": unset)."""
        return self.redirect_base.rstrip("/")

    def refuse_retired(self) -> None:
        """ConfigError when the retired shared connect token is still set."""
        if self.retired_token:
            raise ConfigError(
                f"{RETIRED_TOKEN_ENV} is retired: give each staff member their own token with "
                f"`ohx staff add NAME`, then unset {RETIRED_TOKEN_ENV}"
            )

    def redirect_uri(self, provider: str) -> str:
        """The provider's OAuth callback under the redirect base; ConfigError naming the
        variable when the base is not an http(s) URL."""
        base = self.base_url
        if not base.startswith(("https://", "http://")):
            raise ConfigError(
                f"{REDIRECT_BASE_ENV}={base!r}: expected the receiver's public base URL "
                "(https://...), under which /oauth/<provider>/callback is registered"
            )
        return f"{base}/oauth/{provider}/callback"

    def authorize_url(self, env_prefix: str, default: str) -> str:
        """OHX_<P>_AUTHORIZE_URL when set, else the provider's own endpoint."""
        return self.authorize_urls.get(env_prefix) or default


@dataclass(frozen=True, slots=True, repr=False)
class SubscriptionSettings(Redacted):
    """Where providers call us back, and the receiver secrets their callbacks carry."""

    _secrets = ("oura_verification_token", "withings_callback_token")

    callback_base: str
    oura_verification_token: str | None = None
    withings_callback_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SubscriptionSettings | None:
        """None when no public base URL is set (nothing can be subscribed)."""
        env = environment.resolve(env)
        base = (env.get(BASE_URL_ENV) or env.get(REDIRECT_BASE_ENV) or "").strip().rstrip("/")
        if not base:
            return None
        if not base.startswith(("https://", "http://")):
            raise ConfigError(f"{BASE_URL_ENV}={base!r}: expected the receiver's public base URL")
        # The receiver mounts /webhooks/oura with the client secret and the verification token,
        # /webhooks/withings with the callback token (ohx_dagster/config/receiver.py).
        oura = env.get(webhooks.OURA_TOKEN, "").strip() if env.get(webhooks.OURA_SECRET) else ""
        withings = env.get(webhooks.WITHINGS_TOKEN, "").strip()
        return cls(base, oura or None, withings or None)

    @property
    def oura_callback(self) -> str:
        return f"{self.callback_base}/webhooks/oura"

    @property
    def withings_callback(self) -> str:
        token = quote(self.withings_callback_token or "", safe="")
        return f"{self.callback_base}/webhooks/withings?token={token}"
