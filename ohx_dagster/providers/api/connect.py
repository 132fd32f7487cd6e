"""Connecting a person's Oura, Withings or Google Health account: the OAuth 2 authorization code
flow (RFC 6749 4.1), started by a clinic's staff for a FHIR patient, finished by the provider's
redirect to our callback.

1. `start(provider, fhir_patient_id=..., timezone=..., ...)` validates the sync config to create,
   stores a pending authorization in `oauth_states` (the SHA-256 of a random `state`, the provider,
   the config, the PKCE verifier where the provider supports PKCE, the creation time) and returns
   the provider's authorization URL.
2. `complete(provider, state=..., code=..., error=...)` takes the pending authorization out of the
   table (single use: a replay finds nothing; older than 10 minutes: expired), exchanges the code
   at the provider's token URL, finds the provider's user id, then `connect_user` stores the tokens
   encrypted and registers the config, and the new-user sensor backfills the person's history.
   A refused state, a denial (`error=access_denied`) or a failed exchange stores nothing.

Per provider, its folder's ProviderApp (ohx_dagster/providers/<name>/__init__.py) says the
authorization endpoint, the scopes asked, whether PKCE is used, and how the person's provider id
is found after the code exchange (`find_user_id`).

Token endpoints and client credentials are the API sources'
(ohx_dagster.providers.api.source). The token answer is RFC 6749 5.1 JSON (errors: HTTP 400
{"error", "error_description"}), or wrapped as {"status": 0, "body": {...}} where the
ProviderApp says so (Withings), an error being a non-zero status with an `error` text.

Variables: OHX_OAUTH_REDIRECT_BASE (the receiver's public base URL; the callback, to register at
each provider, is <base>/oauth/<provider>/callback) and OHX_<P>_AUTHORIZE_URL, read by
ConnectionSettings (ohx_dagster/config/connect.py).

The client authenticates at the token endpoint with client_id/client_secret in the form, or with
HTTP Basic where its ProviderApp says `token_auth="basic"` (Polar); a provider that issues no
refresh token (`refresh_tokens=False`, Polar) is connected with its access token alone.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import orjson
import sqlalchemy as sa

from ohx_dagster.config import environment
from ohx_dagster.config.connect import ConnectionSettings
from ohx_dagster.config.providers import ApiSettings
from ohx_dagster.core.errors import ConfigError, OhxError, ProviderError, ValidationError
from ohx_dagster.core.ids import check_patient_id, check_user_id
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import to_us
from ohx_dagster.privacy.identity import redact
from ohx_dagster.privacy.subjects import erasure_salt, short, subject_hash
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import AuthorizeSpec, ProviderApp
from ohx_dagster.providers.api.http import ApiClient, excerpt
from ohx_dagster.providers.api.tokens import (
    OAuthTokens,
    basic_credentials,
    cipher_from_env,
    connect_user,
)
from ohx_dagster.storage.schema import oauth_states
from ohx_dagster.storage.store import RecordStore

STATE_TTL: Final = timedelta(minutes=10)
EXCHANGE_TIMEOUT_S: Final = 30.0

log = logging.getLogger("ohx_dagster.providers.api.connect")
# Called with the provider's settings and the registered user once a connection is stored (the
# receiver subscribes the provider's webhooks there). It must not undo the connection: whatever
# it raises is logged and swallowed.
AfterConnect = Callable[["ConnectSettings", HealthSyncConfig], object]


class ConnectRefused(OhxError):
    """The callback cannot complete: unknown, used or expired state, the person declined, or the
    provider sent neither code nor error. Nothing is stored."""


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    """One provider's OAuth app as the connect flow needs it."""

    api: ApiSettings
    authorize: AuthorizeSpec
    redirect_uri: str
    app: ProviderApp

    @property
    def provider(self) -> str:
        return self.api.provider

    @classmethod
    def from_env(cls, app: ProviderApp, env: Mapping[str, str] | None = None) -> ConnectSettings:
        env = environment.resolve(env)
        connection = ConnectionSettings.from_env(env)
        redirect_uri = connection.redirect_uri(app.name)
        spec = app.authorize
        url = connection.authorize_url(app.env_prefix, spec.authorize_url)
        return cls(
            api=ApiSettings.from_env(app, env),
            authorize=AuthorizeSpec(
                url, spec.scopes, spec.scope_separator, spec.pkce, spec.extra_params
            ),
            redirect_uri=redirect_uri,
            app=app,
        )


def _hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sync_config(
    provider: str,
    *,
    fhir_patient_id: str,
    timezone: str = "UTC",
    sync_frequency: str = "hourly",
    aggregation: str = "hourly",
    lookback_days: int = 30,
    user_id: str = "(pending)",
) -> HealthSyncConfig:
    """The config to register; raises ValidationError naming a bad field."""
    check_patient_id(fhir_patient_id)
    return HealthSyncConfig(
        user_id=user_id,
        provider=provider,
        timezone=timezone,
        sync_frequency=sync_frequency,  # type: ignore[arg-type]
        aggregation=aggregation,  # type: ignore[arg-type]
        fhir_patient_id=fhir_patient_id,
        lookback_days=lookback_days,
    )


class ConnectFlow:
    """Start and complete authorizations for the configured providers."""

    def __init__(
        self,
        store: RecordStore,
        settings: Mapping[str, ConnectSettings],
        *,
        token_key: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        timeout_s: float = EXCHANGE_TIMEOUT_S,
        after_connect: AfterConnect | None = None,
    ) -> None:
        self.store = store
        self.after_connect = after_connect
        self.settings = dict(settings)
        self.token_key = token_key
        self.clock = clock
        self.timeout_s = timeout_s
        if self.settings:
            # Tokens cannot be stored without the key: fail now, not after the person consented.
            cipher_from_env(None if token_key is None else {"OHX_TOKEN_KEY": token_key})

    def provider(self, name: str) -> ConnectSettings:
        settings = self.settings.get(name)
        if settings is None:
            raise ConfigError(
                f"provider {name!r} cannot be connected: its OAuth client is not configured "
                f"(configured: {sorted(self.settings)})"
            )
        return settings

    # -- start -----------------------------------------------------------------------------------

    def start(self, provider: str, *, actor: str = "connect flow", **config: Any) -> str:
        """The provider's authorization URL for a new pending authorization (see sync_config for
        the keyword arguments); `actor` (the staff member) is the connection's audit actor."""
        settings = self.provider(provider)
        template = sync_config(provider, **config).to_json()
        del template["user_id"]
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64) if settings.authorize.pkce else None
        now = self.clock()
        with self.store.write() as conn:
            conn.execute(
                oauth_states.delete().where(oauth_states.c.created_at_us < to_us(now - STATE_TTL))
            )
            conn.execute(
                oauth_states.insert().values(
                    state_hash=_hash(state),
                    provider=provider,
                    config=orjson.dumps(template).decode(),
                    code_verifier=verifier,
                    created_at_us=to_us(now),
                    actor=actor,
                )
            )
        spec = settings.authorize
        params = {
            "response_type": "code",
            "client_id": settings.api.oauth.client_id,
            "redirect_uri": settings.redirect_uri,
            "scope": spec.scope_separator.join(spec.scopes),
            "state": state,
            **spec.extra_params,
        }
        if verifier is not None:
            params |= {"code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
        separator = "&" if "?" in spec.authorize_url else "?"
        return f"{spec.authorize_url}{separator}{urlencode(params)}"

    # -- complete --------------------------------------------------------------------------------

    def _take_state(
        self, provider: str, state: str
    ) -> tuple[dict[str, Any], str | None, str | None]:
        """The pending authorization, removed (single use); refused if unknown or expired."""
        t = oauth_states
        key = _hash(state)
        with self.store.write() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.state_hash == key).with_for_update()
            ).one_or_none()
            if row is not None:
                conn.execute(t.delete().where(t.c.state_hash == key))
        if row is None or row.provider != provider:
            raise ConnectRefused(
                f"{provider}: unknown or already used state; start the connection again"
            )
        if row.created_at_us < to_us(self.clock() - STATE_TTL):
            minutes = int(STATE_TTL.total_seconds() // 60)
            raise ConnectRefused(
                f"{provider}: the authorization expired (older than {minutes} minutes); "
                "start the connection again"
            )
        return orjson.loads(row.config), row.code_verifier, row.actor

    def complete(
        self,
        provider: str,
        *,
        state: str | None,
        code: str | None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> HealthSyncConfig:
        """Finish the authorization the provider redirected back; the registered config."""
        settings = self.provider(provider)
        if not state:
            raise ConnectRefused(f"{provider}: the callback has no state")
        template, verifier, actor = self._take_state(provider, state)
        if error:
            detail = f": {error_description[:200]}" if error_description else ""
            raise ConnectRefused(f"{provider}: authorization not granted ({error[:60]}){detail}")
        if not code:
            raise ConnectRefused(f"{provider}: the callback has neither code nor error")
        tokens, body = self._exchange(settings, code, verifier)
        user_id = self._provider_user_id(settings, tokens, body)
        try:
            check_user_id(user_id)  # the rule of every way in (ohx_dagster/core/ids.py)
        except ValidationError as exc:
            raise ProviderError(
                f"{provider}: the provider's user id is not usable ({exc.expected})"
            ) from None
        config = HealthSyncConfig.from_json({**template, "user_id": user_id})
        config = connect_user(
            self.store,
            provider,
            user_id,
            tokens,
            config,
            key=self.token_key,
            actor=actor or "connect flow",
        )
        if self.after_connect is not None:
            try:
                self.after_connect(settings, config)
            except Exception as exc:
                # The traceback with the person's id replaced by their subject, as every log
                # line names them (an error may quote the id).
                salt = erasure_salt()
                log.error(
                    "%s account %s: after-connect step failed\n%s",
                    provider,
                    short(subject_hash(provider, user_id, salt=salt)),
                    redact(
                        "".join(traceback.format_exception(exc)).rstrip(),
                        provider,
                        [user_id],
                        salt=salt,
                    ),
                )
        return config

    def _exchange(
        self, settings: ConnectSettings, code: str, verifier: str | None
    ) -> tuple[OAuthTokens, dict[str, Any]]:
        client = settings.api.oauth
        form = {
            **client.extra_params,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": settings.redirect_uri,
        }
        headers = {"Accept": "application/json"}
        if settings.app.token_auth == "basic":
            headers["Authorization"] = basic_credentials(client.client_id, client.client_secret)
        else:
            form |= {"client_id": client.client_id, "client_secret": client.client_secret}
        if verifier is not None:
            form["code_verifier"] = verifier
        where = f"{client.provider} token exchange ({client.token_url})"
        hidden = (code, client.client_secret, verifier or "", headers.get("Authorization", ""))
        try:
            with httpx.Client(timeout=self.timeout_s) as http:
                response = http.post(client.token_url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"{where}: {type(exc).__name__}: {exc}") from None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict):
            raise ProviderError(
                f"{where}: HTTP {response.status_code}: {_error_of(body, response, hidden)}"
            )
        if client.wrapped:
            status = body.get("status")
            if status != 0:
                raise ProviderError(
                    f"{where}: status {status}: {_error_of(body, response, hidden)}"
                )
            body = body.get("body")
            if not isinstance(body, dict):
                raise payload.bad_field(where, "body", body, "a JSON object")
        tokens = OAuthTokens.from_token_response(
            body,
            now=self.clock(),
            previous_refresh="",
            where=where,
            require_refresh=settings.app.refresh_tokens,
        )
        return tokens, body

    def _provider_user_id(
        self, settings: ConnectSettings, tokens: OAuthTokens, body: dict[str, Any]
    ) -> str:
        api = ApiClient(
            settings.provider, settings.api.base_url, timeout_s=self.timeout_s, attempts=2
        )
        try:
            return settings.app.find_user_id(api, body, tokens.access_token)
        finally:
            api.close()


def _error_of(body: Any, response: httpx.Response, hidden: tuple[str, ...]) -> str:
    """The provider's error field(s), else an excerpt of the body; secrets cut out."""
    if isinstance(body, dict) and (body.get("error") or body.get("error_description")):
        parts = [str(body.get("error") or "")]
        if body.get("error_description"):
            parts.append(str(body["error_description"]))
        return excerpt(": ".join(p for p in parts if p), secrets=hidden)
    return excerpt(response.content, secrets=hidden) or "(empty body)"
