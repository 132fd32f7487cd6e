"""The provider API layer against a real local HTTP server: bearer auth, retries, Retry-After,
errors that never show a token; OAuth tokens encrypted at rest, refreshed once on expiry or 401,
rotated refresh tokens saved, and connect_user registering the user for the backfill sensor."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from provider_api_server import Call, FakeApi, answer, fake_api

from ohx_dagster.core.errors import ConfigError, NeedsReauthorization, ProviderError, RateLimited
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.providers.api.http import ApiClient, HttpStatusError, paginate, parse_retry_after
from ohx_dagster.providers.api.tokens import (
    OAuthClient,
    OAuthTokens,
    TokenStore,
    UserTokens,
    connect_user,
)
from ohx_dagster.storage.schema import oauth_tokens
from ohx_dagster.storage.store import RecordStore

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ACCESS = "access-token-SECRET-1"
REFRESH = "refresh-token-SECRET-1"


def client(api: FakeApi, **kwargs) -> ApiClient:
    return ApiClient("oura", api.base_url, backoff_s=0.0, **kwargs)


def oauth(api: FakeApi) -> OAuthClient:
    return OAuthClient("oura", f"{api.base_url}/oauth/token", "client-1", "client-SECRET")


def tokens(expires_in_s: float = 3600) -> OAuthTokens:
    return OAuthTokens(ACCESS, REFRESH, NOW + timedelta(seconds=expires_in_s), "heartrate daily")


# -- encryption at rest and connect_user ------------------------------------------------------


def test_connect_user_stores_tokens_encrypted_and_registers_the_user(
    store: RecordStore, token_key: str
) -> None:
    config = HealthSyncConfig(
        user_id="u1", provider="oura", enabled_types=frozenset({HealthDataType.HEART_RATE})
    )
    connect_user(store, "oura", "u1", tokens(), config)

    with store.read() as conn:
        raw = [tuple(str(v) for v in row) for row in conn.execute(sa.select(oauth_tokens))]
    assert len(raw) == 1
    dump = " ".join(raw[0])
    assert ACCESS not in dump and REFRESH not in dump
    assert "SECRET" not in dump
    assert TokenStore(store).load("oura", "u1") == tokens()
    assert store.users("oura") == [config]
    # The new-user sensor reads exactly this: the user arrives with a connection time.
    assert [c for _, c in store.users_activated_since(0)] == [config]


def test_connect_user_rejects_a_config_for_someone_else(sqlite_store, token_key) -> None:
    other = HealthSyncConfig(user_id="u2", provider="oura")
    with pytest.raises(ConfigError, match="u2"):
        connect_user(sqlite_store, "oura", "u1", tokens(), other)


def test_missing_key_is_a_config_error_only_when_tokens_are_used(
    sqlite_store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OHX_TOKEN_KEY", raising=False)
    store = TokenStore(sqlite_store)  # building it needs no key
    with pytest.raises(ConfigError, match="OHX_TOKEN_KEY is not set"):
        store.save("oura", "u1", tokens())
    monkeypatch.setenv("OHX_TOKEN_KEY", "not-a-fernet-key")
    with pytest.raises(ConfigError, match="OHX_TOKEN_KEY: expected Fernet keys"):
        TokenStore(sqlite_store).save("oura", "u1", tokens())


def test_a_changed_key_is_named_and_rotation_keeps_old_rows_readable(
    sqlite_store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    TokenStore(sqlite_store, key=old).save("oura", "u1", tokens())
    with pytest.raises(ConfigError, match="do not decrypt with OHX_TOKEN_KEY"):
        TokenStore(sqlite_store, key=new).load("oura", "u1")
    assert TokenStore(sqlite_store, key=f"{new},{old}").load("oura", "u1") == tokens()


def test_token_repr_hides_the_tokens() -> None:
    assert ACCESS not in repr(tokens()) and REFRESH not in repr(tokens())


# -- refresh ----------------------------------------------------------------------------------


def _token_endpoint(api: FakeApi, *, rotate: bool = True) -> None:
    def grant(call: Call) -> tuple:
        n = len(api.calls_to("/oauth/token"))
        body = {"access_token": f"access-{n}", "expires_in": 86400, "token_type": "bearer"}
        if rotate:
            body["refresh_token"] = f"refresh-{n}"
        return answer(200, body)

    api.on("/oauth/token", grant)


def test_expired_token_is_refreshed_and_the_rotated_refresh_token_saved(
    store: RecordStore, token_key: str, api: FakeApi
) -> None:
    token_store = TokenStore(store)
    token_store.save("oura", "u1", tokens(expires_in_s=30))  # inside the 60 s margin
    _token_endpoint(api)
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)

    assert user.access_token() == "access-1"
    [grant] = api.calls_to("/oauth/token")
    assert grant.method == "POST"
    assert grant.form == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": "client-1",
        "client_secret": "client-SECRET",
    }
    saved = token_store.load("oura", "u1")
    assert (saved.access_token, saved.refresh_token) == ("access-1", "refresh-1")
    assert saved.expires_at == NOW + timedelta(days=1)
    assert user.access_token() == "access-1"  # fresh now: no second grant
    assert len(api.calls_to("/oauth/token")) == 1


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (3600, timedelta(hours=1)),
        ("7200", timedelta(hours=2)),  # a JSON string holding a number
        (-3600, None),
        (0, None),
        ("-5", None),
        ("soon", None),
        (True, None),
        (1e300, None),  # overflowed timedelta: a 500 at the connect callback
        ("NaN", None),
        (None, None),
    ],
)
def test_a_lifetime_that_is_not_one_is_unknown(expires_in: object, lifetime: object) -> None:
    body = {"access_token": ACCESS, "refresh_token": REFRESH, "token_type": "bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    got = OAuthTokens.from_token_response(body, now=NOW, previous_refresh="", where="test")
    assert got.expires_at == (None if lifetime is None else NOW + lifetime)


def test_a_negative_expires_in_is_used_until_a_401_and_never_refreshed_on_every_use(
    sqlite_store: RecordStore, token_key: str, api: FakeApi
) -> None:
    """The token endpoint answers expires_in -3600: the refreshed token is kept with an unknown
    lifetime, used without asking for another grant, and refreshed once when it meets a 401."""
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))

    def grant(call: Call) -> tuple:
        n = len(api.calls_to("/oauth/token"))
        body = {"access_token": f"access-{n}", "refresh_token": f"refresh-{n}"}
        return answer(200, body | {"expires_in": -3600, "token_type": "bearer"})

    api.on("/oauth/token", grant)
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
    assert user.access_token() == "access-1"
    assert token_store.load("oura", "u1").expires_at is None
    assert user.access_token() == "access-1" and user.access_token() == "access-1"
    assert len(api.calls_to("/oauth/token")) == 1


def test_a_grant_without_refresh_token_keeps_the_old_one(
    sqlite_store: RecordStore, token_key: str, api: FakeApi
) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))
    _token_endpoint(api, rotate=False)
    UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW).access_token()
    assert token_store.load("oura", "u1").refresh_token == REFRESH


def test_401_refreshes_once_then_retries_once(
    store: RecordStore, token_key: str, api: FakeApi
) -> None:
    token_store = TokenStore(store)
    token_store.save("oura", "u1", tokens())
    _token_endpoint(api)
    api.on(
        "/data",
        lambda call: (
            answer(200, {"ok": call.bearer})
            if call.bearer == "access-1"
            else answer(401, {"detail": "expired"})
        ),
    )
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)

    assert client(api).json("GET", "/data", auth=user) == {"ok": "access-1"}
    assert [c.bearer for c in api.calls_to("/data")] == [ACCESS, "access-1"]
    assert len(api.calls_to("/oauth/token")) == 1


def test_a_second_401_asks_to_reconnect_without_looping(
    sqlite_store: RecordStore, token_key: str, api: FakeApi
) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens())
    _token_endpoint(api)
    api.queue("/data", answer(401, {"detail": "revoked"}))
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
    with pytest.raises(HttpStatusError, match="reconnect the user") as error:
        client(api).json("GET", "/data", auth=user)
    assert error.value.status == 401
    assert len(api.calls_to("/data")) == 2
    assert len(api.calls_to("/oauth/token")) == 1


def test_a_token_another_run_refreshed_is_not_refreshed_again(
    sqlite_store: RecordStore, token_key: str, api: FakeApi
) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens())
    _token_endpoint(api)
    first = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
    second = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
    assert first.refresh(ACCESS) == "access-1"
    # The second run also saw ACCESS rejected: it must not spend the (rotated) refresh token.
    assert second.refresh(ACCESS) == "access-1"
    assert len(api.calls_to("/oauth/token")) == 1


def test_a_refused_refresh_token_means_reconnect_and_hides_the_secrets(
    sqlite_store: RecordStore, token_key: str, api: FakeApi
) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))
    api.on(
        "/oauth/token",
        lambda call: answer(400, {"error": "invalid_grant", "echo": call.form["refresh_token"]}),
    )
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
    with pytest.raises(NeedsReauthorization, match="invalid_grant") as error:
        user.access_token()
    assert "oura" in str(error.value)
    assert REFRESH not in str(error.value) and "client-SECRET" not in str(error.value)
    assert token_store.load("oura", "u1").refresh_token == REFRESH  # nothing half-written
    # The lease is released: the next run may try (and is told the same).
    with pytest.raises(NeedsReauthorization):
        user.access_token()


def test_a_token_endpoint_outage_is_a_provider_error(sqlite_store, token_key, api) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))
    api.on("/oauth/token", lambda call: answer(502, "bad gateway"))
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
    with pytest.raises(HttpStatusError, match="HTTP 502") as error:
        user.access_token()
    assert not isinstance(error.value, NeedsReauthorization)


def test_a_rotated_token_whose_answer_was_lost_leaves_a_visible_reconnect_state(
    sqlite_store, token_key, api
) -> None:
    """The provider rotates the refresh token but the answer never arrives (the connection
    drops): the old refresh token is spent. The next refresh is refused with invalid_grant,
    which the sync turns into "needs reauthorization" rather than retrying forever."""
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))
    spent: set[str] = set()

    def grant(call: Call):
        token = call.form["refresh_token"]
        if token in spent:
            return answer(400, {"error": "invalid_grant"})
        spent.add(token)
        raise ConnectionResetError("the answer is lost after the provider rotated the token")

    api.on("/oauth/token", grant)
    user = UserTokens(token_store, oauth(api), "u1", client(api, attempts=1), clock=lambda: NOW)
    with pytest.raises(ProviderError):
        user.access_token()
    # The next run (its own process and connections) tries again with the spent token.
    later = UserTokens(token_store, oauth(api), "u1", client(api, attempts=1), clock=lambda: NOW)
    with pytest.raises(NeedsReauthorization):
        later.access_token()


def test_a_slow_token_endpoint_holds_no_database_lock(sqlite_store, token_key, api) -> None:
    """The refresh talks to the provider with no transaction open: other writers (the
    webhook receiver) go on while the token endpoint takes its time."""
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))
    in_call, written, refreshed = threading.Event(), threading.Event(), threading.Event()

    def slow(call: Call):
        in_call.set()
        written.wait(10)  # the token endpoint answers only once the other writer is through
        return answer(200, {"access_token": "new-access", "refresh_token": "new-refresh",
                            "expires_in": 3600})  # fmt: skip

    api.on("/oauth/token", slow)
    user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)

    def refresh() -> None:
        user.access_token()
        refreshed.set()

    worker = threading.Thread(target=refresh)
    worker.start()
    assert in_call.wait(10)
    sqlite_store.add_users([HealthSyncConfig(user_id="someone", provider="oura")])
    # Written while the refresh was still waiting on the provider: no lock held across the call.
    assert not refreshed.is_set()
    written.set()
    worker.join()
    assert token_store.load("oura", "u1").refresh_token == "new-refresh"


def test_two_runs_refreshing_at_once_spend_the_refresh_token_once(
    sqlite_store, token_key, api
) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("oura", "u1", tokens(expires_in_s=0))
    grants: list[str] = []

    def grant(call: Call):
        grants.append(call.form["refresh_token"])
        time.sleep(0.5)
        return answer(200, {"access_token": "new-access", "refresh_token": "new-refresh",
                            "expires_in": 3600})  # fmt: skip

    api.on("/oauth/token", grant)
    results: list[str] = []

    def run() -> None:
        user = UserTokens(token_store, oauth(api), "u1", client(api), clock=lambda: NOW)
        results.append(user.access_token())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert grants == [REFRESH] and results == ["new-access"] * 3


def test_withings_style_wrapped_grant(sqlite_store, token_key, api: FakeApi) -> None:
    token_store = TokenStore(sqlite_store)
    token_store.save("withings", "u1", tokens(expires_in_s=0))
    withings = OAuthClient(
        "withings",
        f"{api.base_url}/v2/oauth2",
        "cid",
        "csecret",
        {"action": "requesttoken"},
        wrapped=True,
    )
    api.queue(
        "/v2/oauth2",
        answer(
            200,
            {
                "status": 0,
                "body": {
                    "userid": "363",
                    "access_token": "a2",
                    "refresh_token": "r2",
                    "expires_in": 10800,
                    "scope": "user.metrics",
                    "token_type": "Bearer",
                },
            },
        ),
        answer(200, {"status": 503, "error": "Invalid params"}),
    )
    user = UserTokens(token_store, withings, "u1", client(api), clock=lambda: NOW)
    assert user.access_token() == "a2"
    assert api.calls_to("/v2/oauth2")[0].form["action"] == "requesttoken"
    saved = token_store.load("withings", "u1")
    assert (saved.refresh_token, saved.scope) == ("r2", "user.metrics")
    with pytest.raises(ProviderError, match="status 503 Invalid params"):
        user.refresh("a2")


# -- HTTP: rate limits, retries, errors --------------------------------------------------------


def test_429_with_retry_after_seconds_is_rate_limited(api: FakeApi) -> None:
    api.queue("/data", answer(429, {"detail": "slow down"}, Retry_After="17"))
    with pytest.raises(RateLimited) as error:
        client(api).json("GET", "/data")
    assert (error.value.provider, error.value.retry_after_s) == ("oura", 17.0)
    assert len(api.calls_to("/data")) == 1  # no retry inside the run: Dagster retries


def test_503_with_an_http_date_is_rate_limited(api: FakeApi) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    api.queue("/data", answer(503, "", Retry_After=format_datetime(later, usegmt=True)))
    with pytest.raises(RateLimited) as error:
        client(api).json("GET", "/data")
    assert 100 < error.value.retry_after_s <= 120


def test_parse_retry_after() -> None:
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Mon, 02 Mar 2026 12:01:30 GMT", now) == 90.0
    assert parse_retry_after("Mon, 02 Mar 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_5xx_is_retried_then_succeeds(api: FakeApi) -> None:
    api.queue("/data", answer(502, "bad gateway"), answer(500, ""), answer(200, {"n": 1}))
    assert client(api).json("GET", "/data") == {"n": 1}
    assert len(api.calls_to("/data")) == 3


def test_5xx_after_every_attempt_is_a_provider_error_without_the_token(api: FakeApi) -> None:
    api.queue("/data", answer(500, {"error": "boom", "echo": ACCESS, "pad": "x" * 500}))
    with pytest.raises(HttpStatusError) as error:
        client(api, attempts=3).send("GET", "/data", token=ACCESS)
    message = str(error.value)
    assert message.startswith("oura /data: HTTP 500: ")
    assert "boom" in message and ACCESS not in message and "[redacted]" in message
    assert len(message) < 300
    assert len(api.calls_to("/data")) == 3


def test_4xx_is_not_retried(api: FakeApi) -> None:
    api.queue("/data", answer(400, {"detail": "start_date is invalid"}))
    with pytest.raises(HttpStatusError, match=r"HTTP 400: .*start_date is invalid"):
        client(api).json("GET", "/data")
    assert len(api.calls_to("/data")) == 1


def test_connection_errors_are_retried_then_a_provider_error() -> None:
    with fake_api() as server:
        closed = server.base_url  # the server stops at the end of the block
    sleeps: list[float] = []
    failing = ApiClient("oura", closed, attempts=3, backoff_s=0.01, sleep=sleeps.append)
    with pytest.raises(ProviderError, match=r"oura /data: ConnectError after 3 attempts"):
        failing.json("GET", "/data")
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9  # exponential, with jitter


def test_malformed_json_is_a_provider_error(api: FakeApi) -> None:
    api.queue("/data", answer(200, b'{"data": [1, 2'))
    with pytest.raises(ProviderError, match=r"oura /data: malformed JSON .*\{\"data\": \[1, 2"):
        client(api).json("GET", "/data")


def test_paginate_follows_tokens_and_stops_a_loop() -> None:
    pages = {None: ([1, 2], "b"), "b": ([3], "c"), "c": ([], None)}
    assert list(paginate("oura", "/x", lambda t: pages[t])) == [1, 2, 3]
    looping = {None: ([1], "a"), "a": ([2], "a")}
    with pytest.raises(ProviderError, match="page token 'a' repeated"):
        list(paginate("oura", "/x", lambda t: looping[t]))


def test_bearer_header_is_sent(api: FakeApi) -> None:
    api.on("/data", lambda call: answer(200, {"auth": call.headers.get("authorization")}))
    assert client(api).json("GET", "/data", params={"a": "1"}) == {"auth": None}
    assert client(api).send("GET", "/data", token="t0").json() == {"auth": "Bearer t0"}
    assert isinstance(client(api).client, httpx.Client)


# -- the connect callback with a lifetime that is not one -------------------------------------


@pytest.mark.parametrize("expires_in", [-3600, "soon", 1e300])
def test_the_connect_callback_connects_an_account_whose_lifetime_is_not_one(
    sqlite_store: RecordStore, token_key: str, expires_in: object
) -> None:
    """Through the real receiver and the fake authorization server of
    tests/receiver/test_connect.py: Withings' grant (its documented {"status": 0, "body": ...}
    wrapper, the user id inside) with a negative, non-numeric or absurd expires_in was a 500; now
    the account is connected and
    its token's lifetime is unknown."""
    from test_connect import USER_IDS, FakeProviders, Receiver, serve

    with fake_api() as api:
        providers = FakeProviders(api)
        grant = {
            "userid": int(USER_IDS["withings"]),
            "access_token": "withings-access-SECRET",
            "refresh_token": "withings-refresh-SECRET",
            "scope": "user.metrics,user.activity",
            "expires_in": expires_in,
            "token_type": "Bearer",
        }
        providers.fail["withings"] = answer(200, {"status": 0, "body": grant})
        with serve(sqlite_store, providers, providers.env()) as url, httpx.Client(timeout=10) as h:
            _, done = Receiver(url, sqlite_store, providers, h).connect("withings")
    assert done.status_code == 200, done.text
    saved = TokenStore(sqlite_store).load("withings", USER_IDS["withings"])
    assert saved is not None and saved.expires_at is None
    assert saved.access_token == "withings-access-SECRET"
