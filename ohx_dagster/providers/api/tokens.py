"""Per-user OAuth2 tokens of the provider APIs, encrypted at rest, refreshed when they expire.

- One row per (provider, user) in `oauth_tokens` (ohx_dagster/storage/schema.py): the access and
  refresh tokens as one Fernet ciphertext (key from OHX_TOKEN_KEY, ohx_dagster/config/tokens.py;
  several keys separated by commas rotate: the first encrypts, all decrypt), the scope and expiry
  in clear (not secrets; an operator can see who must reconnect without the key).
- A missing or malformed key is a ConfigError when a token is read or written, not before: a
  deployment without API sources needs no key.
- Refresh (refresh-token grant at the provider's token URL) happens when the access token is
  expired, or once after a 401. Providers that rotate refresh tokens (Oura, Withings) accept
  each one once, so two runs refreshing the same person at once must not both spend it: a run
  first takes a short lease on the row (one small transaction), talks to the token endpoint with
  NO transaction open (a slow token endpoint never holds the database's write lock), then stores
  the answer at once, before anything uses the new access token. A run that finds the lease
  taken waits for the other's answer and uses it.
- A refresh token the provider refuses (OAuth `invalid_grant`: spent, e.g. because the answer
  that rotated it was lost in transit, or revoked) raises NeedsReauthorization: the sync puts
  the person in "needs reauthorization", schedules skip them, and the connect flow clears it.
- A provider without refresh tokens (Polar: long-lived access tokens) stores refresh token "";
  its access token is used even past the expiry it was given with, and once the provider
  rejects it (401) the person needs reauthorization the same way.
- The token endpoint authenticates the client with client_id/client_secret in the form, or
  with HTTP Basic where the provider wants that (OAuthClient.token_auth, Polar).
- `connect_user` is the one way a user arrives: tokens and sync config in one transaction, so
  the new-user sensor (which backfills the user's history) never sees a user without tokens;
  an erased person, or an account connected for another patient, is refused there
  (ohx_dagster/privacy/identity.py).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Final

import orjson
import sqlalchemy as sa
from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy.engine import Connection

from ohx_dagster.config.providers import OAuthClient
from ohx_dagster.config.tokens import TOKEN_KEY_ENV, cipher_from_env
from ohx_dagster.core.errors import ConfigError, NeedsReauthorization, ProviderError
from ohx_dagster.core.ids import check_provider_name, check_user_id
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import from_us, now_us, to_us
from ohx_dagster.privacy import audit, identity, subjects
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.http import ApiClient, HttpStatusError, decode_json
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import oauth_tokens
from ohx_dagster.storage.store import RecordStore

# An access token this close to its expiry is refreshed before use (clock skew, request time).
EXPIRY_MARGIN: Final = timedelta(seconds=60)
# A refresh lease outlives the token endpoint's slowest answer (the HTTP client's 30 s timeout,
# retried): then another run may try.
LEASE_S: Final = 120.0
LEASE_WAIT_S: Final = 150.0
LEASE_POLL_S: Final = 0.2


# The longest access-token lifetime believed (Withings and Google issue hours, Polar a year).
MAX_TOKEN_LIFETIME: Final = timedelta(days=3650)


def token_expiry(expires_in: Any, now: datetime) -> datetime | None:
    """When the access token expires, from RFC 6749 5.1's `expires_in` (seconds, a positive
    number; JSON strings holding one accepted). A lifetime that is missing, not a number,
    negative, zero, NaN or beyond MAX_TOKEN_LIFETIME is unknown (None), as for a provider that
    sends none: the token is used until a 401, which refreshes it once. Treating a negative one
    as "already expired" would refresh on every use; a huge one overflowed (a 500)."""
    if expires_in is None or isinstance(expires_in, bool):
        return None
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        return None
    if not 0 < seconds <= MAX_TOKEN_LIFETIME.total_seconds():  # False for NaN too
        return None
    return now + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class OAuthTokens:
    """One user's grant. The tokens never appear in repr() (logs, tracebacks)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)  # "": the provider issues none (Polar)
    expires_at: datetime | None = None
    scope: str = ""

    def expires_soon(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at - EXPIRY_MARGIN <= now

    @classmethod
    def from_token_response(
        cls,
        body: Any,
        *,
        now: datetime,
        previous_refresh: str,
        where: str,
        require_refresh: bool = True,
    ) -> OAuthTokens:
        """RFC 6749 5.1: access_token, optional refresh_token (kept when not rotated),
        expires_in seconds, scope. `require_refresh=False`: a provider that issues no refresh
        tokens (Polar); the grant is kept with refresh_token ""."""
        access = payload.get(body, "access_token", where, "a string")
        refresh = body.get("refresh_token") or previous_refresh
        if (
            not isinstance(access, str)
            or not isinstance(refresh, str)
            or (require_refresh and not refresh)
        ):
            raise payload.bad_field(where, "access_token/refresh_token", "...", "strings")
        expires_at = token_expiry(body.get("expires_in"), now)
        scope = body.get("scope") or ""
        scope = scope if isinstance(scope, str) else " ".join(scope)
        return cls(access, refresh, expires_at, scope)


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The Authorization header of HTTP Basic client authentication (Polar's token endpoint and
    client-level API: base64 of "client_id:client_secret")."""
    pair = f"{client_id}:{client_secret}".encode()
    return f"Basic {base64.b64encode(pair).decode()}"


class TokenStore:
    """Encrypted tokens in the record store's database."""

    def __init__(self, store: RecordStore, *, key: str | None = None) -> None:
        self.store = store
        self._key = key

    @cached_property
    def cipher(self) -> MultiFernet:
        return cipher_from_env(None if self._key is None else {TOKEN_KEY_ENV: self._key})

    def _row(self, provider: str, user_id: str, tokens: OAuthTokens) -> dict[str, Any]:
        secret = orjson.dumps({"access": tokens.access_token, "refresh": tokens.refresh_token})
        return {
            "provider": provider,
            "user_id": user_id,
            "ciphertext": self.cipher.encrypt(secret).decode(),
            "scope": tokens.scope,
            "expires_at_us": None if tokens.expires_at is None else to_us(tokens.expires_at),
            "updated_at_us": now_us(),
        }

    def _decode(self, row: Any, where: str) -> OAuthTokens:
        try:
            secret = orjson.loads(self.cipher.decrypt(row.ciphertext.encode()))
        except InvalidToken:
            raise ConfigError(
                f"{where}: the stored tokens do not decrypt with {TOKEN_KEY_ENV} (was the key "
                "changed? keep the old key after the new one until every user is re-saved)"
            ) from None
        expires = None if row.expires_at_us is None else from_us(row.expires_at_us)
        return OAuthTokens(secret["access"], secret["refresh"], expires, row.scope)

    def save(
        self, provider: str, user_id: str, tokens: OAuthTokens, *, conn: Connection | None = None
    ) -> None:
        """Store the person's tokens (`conn`: in the caller's transaction)."""
        row = self._row(provider, user_id, tokens)
        if conn is not None:
            self.store.upsert(conn, oauth_tokens, [row])
            return
        with self.store.write() as own:
            self.store.upsert(own, oauth_tokens, [row])

    def load(self, provider: str, user_id: str) -> OAuthTokens | None:
        t = oauth_tokens
        query = sa.select(t).where(t.c.provider == provider, t.c.user_id == user_id)
        with self.store.read() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else self._decode(row, f"{provider} user {user_id!r}")

    def refresh(
        self,
        client: OAuthClient,
        user_id: str,
        api: ApiClient,
        *,
        rejected: str | None,
        now: datetime,
        wait_s: float = LEASE_WAIT_S,
    ) -> OAuthTokens:
        """Fresh tokens for the person: refreshed at the provider unless another run already did
        (the stored access token is no longer `rejected`, or no longer expiring)."""
        where = f"{client.provider} user {user_id!r}"
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            current, leased = self._lease(client.provider, user_id, owner, rejected, now, where)
            if leased:
                break
            if current is not None:
                return current
            if time.monotonic() > deadline:
                raise ProviderError(f"{where}: another run's token refresh did not finish")
            time.sleep(LEASE_POLL_S)
        assert current is not None
        try:
            fresh = _refresh_grant(client, current.refresh_token, api, now=now)
        except BaseException:
            self._release(client.provider, user_id, owner)
            raise
        # Stored before anything uses it: the provider has already spent the old refresh token.
        with self.store.write() as conn:
            self.store.upsert(conn, oauth_tokens, [self._row(client.provider, user_id, fresh)])
        return fresh

    def _lease(
        self,
        provider: str,
        user_id: str,
        owner: str,
        rejected: str | None,
        now: datetime,
        where: str,
    ) -> tuple[OAuthTokens | None, bool]:
        """(tokens, True) when this run may refresh; (tokens, False) when they are fresh already
        (another run refreshed them); (None, False) while another run holds the lease."""
        t = oauth_tokens
        with self.store.write() as conn:
            db.lock(conn, "oauth", provider, user_id)
            row = conn.execute(
                sa.select(t).where(t.c.provider == provider, t.c.user_id == user_id)
            ).one_or_none()
            if row is None:
                raise ProviderError(f"{where}: no tokens stored; connect the user first")
            current = self._decode(row, where)
            replaced = rejected is not None and current.access_token != rejected
            if replaced or (rejected is None and not current.expires_soon(now)):
                return current, False
            if row.refresh_lease_until_us and row.refresh_lease_until_us > now_us():
                return None, False
            conn.execute(
                t.update()
                .where(t.c.provider == provider, t.c.user_id == user_id)
                .values(
                    refresh_lease_until_us=now_us() + int(LEASE_S * 1e6),
                    refresh_lease_owner=owner,
                )
            )
            return current, True

    def _release(self, provider: str, user_id: str, owner: str) -> None:
        t = oauth_tokens
        with self.store.write() as conn:
            conn.execute(
                t.update()
                .where(
                    t.c.provider == provider,
                    t.c.user_id == user_id,
                    t.c.refresh_lease_owner == owner,
                )
                .values(refresh_lease_until_us=None, refresh_lease_owner=None)
            )


def _refresh_grant(
    client: OAuthClient, refresh_token: str, api: ApiClient, *, now: datetime
) -> OAuthTokens:
    where = f"{client.provider} {client.token_url}"
    if not refresh_token:
        raise NeedsReauthorization(
            f"{where}: the access token expired or was rejected and {client.provider} issued no "
            "refresh token: the person must connect the account again"
        )
    form = {
        **client.extra_params,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }
    headers = {}
    if client.token_auth == "basic":
        headers["Authorization"] = basic_credentials(client.client_id, client.client_secret)
    else:
        form |= {"client_id": client.client_id, "client_secret": client.client_secret}
    try:
        response = api.send(
            "POST",
            client.token_url,
            data=form,
            headers=headers,
            secrets=(refresh_token, client.client_secret, headers.get("Authorization", "")),
        )
    except HttpStatusError as failed:
        # RFC 6749 5.2: 400 invalid_grant = the refresh token is invalid, expired or revoked.
        if failed.status in (400, 401) and "invalid_grant" in failed.excerpt:
            raise NeedsReauthorization(
                f"{where}: refresh token refused: {failed.excerpt}"
            ) from None
        raise
    body = decode_json(client.provider, client.token_url, response.content, secrets=())
    if client.wrapped:
        status = payload.get(body, "status", where, "a status code")
        if status != 0:
            error = str(body.get("error", ""))[:120]
            if "refresh_token" in error or "invalid_grant" in error:
                # Withings answers a spent or revoked refresh token with HTTP 200 and a status
                # (503 "Invalid Params: invalid refresh_token" in the wild).
                raise NeedsReauthorization(f"{where}: refresh token refused: {error}")
            raise ProviderError(f"{where}: refresh failed with status {status} {error}".rstrip())
        body = payload.get(body, "body", where, "an object")
    if not isinstance(body, dict):
        raise payload.bad_field(where, "(body)", body, "a JSON object")
    return OAuthTokens.from_token_response(
        body, now=now, previous_refresh=refresh_token, where=where
    )


class UserTokens:
    """The `TokenSource` of one user of one provider (see ohx_dagster.providers.api.http)."""

    def __init__(
        self,
        tokens: TokenStore,
        client: OAuthClient,
        user_id: str,
        api: ApiClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tokens = tokens
        self.client = client
        self.user_id = user_id
        self.api = api
        self.clock = clock

    def access_token(self) -> str:
        current = self.tokens.load(self.client.provider, self.user_id)
        if current is None:
            raise ProviderError(
                f"{self.client.provider} user {self.user_id!r}: no tokens stored; connect the user"
            )
        # A grant without a refresh token is used as it is past its expiry (Polar documents both
        # "expires in about a year" and "will not expire unless revoked"): a 401 decides.
        if current.expires_soon(self.clock()) and current.refresh_token:
            current = self.tokens.refresh(
                self.client, self.user_id, self.api, rejected=None, now=self.clock()
            )
        return current.access_token

    def refresh(self, rejected: str) -> str:
        fresh = self.tokens.refresh(
            self.client, self.user_id, self.api, rejected=rejected, now=self.clock()
        )
        return fresh.access_token


def connect_user(
    store: RecordStore,
    provider: str,
    user_id: str,
    tokens: OAuthTokens,
    config: HealthSyncConfig | None = None,
    *,
    key: str | None = None,
    actor: str = "connect flow",
    salt: bytes | None = None,
) -> HealthSyncConfig:
    """Store a newly authorized user's tokens and register their sync config, in one
    transaction under the person's lock (the new-user sensor, which backfills the user's
    lookback window, never sees a user without tokens). Reconnecting replaces the tokens.

    Refused, with nothing stored (ohx_dagster/privacy/identity.py): an id the receiver would refuse
    (ValidationError), an erased person who was not re-admitted (Erased), an account connected
    for another patient (LinkConflict: moving it is `ohx users relink`). Every outcome is
    written to the audit log, the person as their salted subject."""
    config = config or HealthSyncConfig(user_id=user_id, provider=provider)
    if (config.provider, config.user_id) != (provider, user_id):
        raise ConfigError(
            f"connect_user({provider!r}, {user_id!r}): the config is for "
            f"({config.provider!r}, {config.user_id!r})"
        )
    check_provider_name(provider)
    check_user_id(user_id)
    salt = subjects.erasure_salt() if salt is None else salt
    subject = subjects.subject_hash(provider, user_id, salt=salt)
    patient = subjects.short(subjects.patient_subject(config.fhir_patient_id, salt=salt))
    token_store = TokenStore(store, key=key)
    try:
        with store.write() as conn:
            db.lock(conn, "person", provider, user_id)
            identity.check_admission(conn, config, salt=salt)
            token_store.save(provider, user_id, tokens, conn=conn)
            store.upsert_user(config, conn=conn)
            audit.record(
                conn,
                actor=actor,
                action="connect",
                subject=subject,
                detail=f"provider {provider}; patient {patient}",
            )
    except (identity.Erased, identity.LinkConflict) as refused:
        audit.record(
            store,
            actor=actor,
            action="connect",
            subject=subject,
            outcome="refused",
            detail=f"provider {provider}; {refused}",
        )
        raise
    return config
