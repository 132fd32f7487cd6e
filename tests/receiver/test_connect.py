"""Connecting an Oura, Withings or Google Health account through the real receiver (uvicorn on
127.0.0.1) against a local fake authorization server that answers like each provider documents:
authorize redirects, token endpoints (RFC 6749 JSON; Withings' {"status", "body"} wrapper), the
user-id lookups (Oura personal_info, Google users/me/identity). The receiver's public URL is a
proxy's (https://ohx.example.org): the test plays the browser and the proxy."""

from __future__ import annotations

import hashlib
import itertools
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from provider_api_server import Answer, Call, FakeApi, answer, fake_api

from ohx_dagster.config.receiver import WebhookSecrets
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import SyncFrequency
from ohx_dagster.privacy import audit, staff
from ohx_dagster.privacy.subjects import erasure_salt, patient_subject, subject_hash
from ohx_dagster.providers.api.connect import (
    STATE_TTL,
    oauth_states,
    pkce_challenge,
)
from ohx_dagster.providers.api.tokens import TokenStore, oauth_tokens
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig, connectable
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore, users

PUBLIC = "https://ohx.example.org"
STAFF = "nurse.a"
TOKENS: dict[str, str] = {}  # receiver URL -> the staff token serve() issued for it
SECRET = {p: f"{p}-client-SECRET" for p in ("oura", "withings", "google_health")}
JSON = {"Accept": "application/json"}
USER_IDS = {"oura": "oura-user-8f9a", "withings": "363", "google_health": "g-health-111"}
TOKEN_PATHS = {"oura": "/oauth/token", "withings": "/v2/oauth2", "google_health": "/google/token"}


@dataclass
class FakeProviders:
    """The providers' authorization servers and identity endpoints on one local HTTP server."""

    api: FakeApi
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    issued: dict[str, str] = field(default_factory=dict)  # access token -> provider
    fail: dict[str, Answer] = field(default_factory=dict)  # provider -> token endpoint answer
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        for provider, path in (
            ("oura", "/oura/authorize"),
            ("withings", "/withings/authorize2"),
            ("google_health", "/google/auth"),
        ):
            self.api.on(path, lambda call, p=provider: self._authorize(p, call))
        self.api.on("/oauth/token", lambda call: self._token("oura", call))
        self.api.on("/v2/oauth2", lambda call: self._token("withings", call))
        self.api.on("/google/token", lambda call: self._token("google_health", call))
        self.api.on("/v2/usercollection/personal_info", lambda c: self._me("oura", c))
        self.api.on("/v4/users/me/identity", lambda c: self._me("google_health", c))

    def env(self) -> dict[str, str]:
        base = self.api.base_url
        env = {"OHX_OAUTH_REDIRECT_BASE": PUBLIC}
        for provider, prefix, authorize in (
            ("oura", "OHX_OURA", "/oura/authorize"),
            ("withings", "OHX_WITHINGS", "/withings/authorize2"),
            ("google_health", "OHX_GOOGLE_HEALTH", "/google/auth"),
        ):
            env |= {
                f"{prefix}_CLIENT_ID": f"{provider}-client",
                f"{prefix}_CLIENT_SECRET": SECRET[provider],
                f"{prefix}_API_URL": base,
                f"{prefix}_TOKEN_URL": base + TOKEN_PATHS[provider],
                f"{prefix}_AUTHORIZE_URL": base + authorize,
            }
        return env

    def _authorize(self, provider: str, call: Call) -> Answer:
        """The person consents: back to redirect_uri with a one-time code and the state."""
        code = f"code-{provider}-{next(self.numbers)}"
        self.codes[code] = {"provider": provider, **call.query}
        query = urlencode({"code": code, "state": call.query["state"]})
        return answer(302, None, location=f"{call.query['redirect_uri']}?{query}")

    def _token(self, provider: str, call: Call) -> Answer:
        if provider in self.fail:
            return self.fail[provider]
        form = call.form
        grant = self.codes.pop(form.get("code", ""), None)
        problem = None
        if grant is None or grant["provider"] != provider:
            problem = "invalid_grant"
        elif form.get("grant_type") != "authorization_code":
            problem = "unsupported_grant_type"
        elif (form.get("client_id"), form.get("client_secret")) != (
            f"{provider}-client",
            SECRET[provider],
        ):
            problem = "invalid_client"
        elif form.get("redirect_uri") != grant["redirect_uri"]:
            problem = "invalid_grant"  # RFC 6749 4.1.3: must match the authorization request
        elif "code_challenge" in grant:
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["code_challenge"]:
                problem = "invalid_grant"
        n = next(self.numbers)
        access, refresh = f"{provider}-access-SECRET-{n}", f"{provider}-refresh-SECRET-{n}"
        if provider == "withings":
            if problem or form.get("action") != "requesttoken":
                return answer(200, {"status": 503, "error": f"Invalid Params: {problem}"})
            self.issued[access] = provider
            body = {
                "userid": int(USER_IDS["withings"]),
                "access_token": access,
                "refresh_token": refresh,
                "scope": grant["scope"],
                "expires_in": 10800,
                "token_type": "Bearer",
            }
            return answer(200, {"status": 0, "body": body})
        if problem:
            return answer(400, {"error": problem, "error_description": "Bad Request"})
        self.issued[access] = provider
        return answer(
            200,
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": 3599,
                "scope": grant["scope"],
                "token_type": "Bearer",
            },
        )

    def _me(self, provider: str, call: Call) -> Answer:
        if self.issued.get(call.bearer or "") != provider:
            return answer(401, {"detail": "invalid token"})
        if provider == "oura":
            return answer(200, {"id": USER_IDS["oura"], "age": 41, "weight": 70.2})
        name = "users/me/identity"
        return answer(200, {"name": name, "healthUserId": USER_IDS[provider], "legacyUserId": ""})


@pytest.fixture
def providers() -> Iterator[FakeProviders]:
    with fake_api() as api:
        yield FakeProviders(api)


@dataclass
class Receiver:
    url: str
    store: RecordStore
    providers: FakeProviders
    http: httpx.Client

    def start(self, provider: str, **params: str) -> httpx.Response:
        query = {"patient": "pat-1", **params}
        return self.http.get(f"{self.url}/connect/{provider}", params=query, headers=self.auth)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[self.url]}"}

    def consent(self, location: str) -> str:
        """The browser at the provider: the local callback URL the provider redirects to."""
        redirect = self.http.get(location)
        assert redirect.status_code == 302
        return redirect.headers["location"].replace(PUBLIC, self.url)

    def connect(self, provider: str, **params: str) -> tuple[str, httpx.Response]:
        started = self.start(provider, **params)
        assert started.status_code == 302, started.text
        callback = self.consent(started.headers["location"])
        return callback, self.http.get(callback, headers=JSON)


@contextmanager
def serve(store: RecordStore, providers: FakeProviders, env: dict[str, str]) -> Iterator[str]:
    """The receiver with the connect routes, and a staff member's token for it (TOKENS)."""
    staff.remove(store, STAFF, actor="test")
    token = staff.add(store, STAFF, actor="test")
    config = ConnectConfig(connectable(env))
    with serve_in_thread(create_app(store, WebhookSecrets(), connect=config)) as url:
        TOKENS[url] = token
        yield url


@pytest.fixture
def receiver(sqlite_store, providers, token_key) -> Iterator[Receiver]:
    with (
        serve(sqlite_store, providers, providers.env()) as url,
        httpx.Client(timeout=10) as http,
    ):
        yield Receiver(url, sqlite_store, providers, http)


def stored(store: RecordStore) -> tuple[list[Any], list[Any]]:
    with store.read() as conn:
        return (
            conn.execute(sa.select(oauth_tokens)).all(),
            conn.execute(sa.select(users)).all(),
        )


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- the whole flow, per provider, on SQLite and PostgreSQL --------------------------------------


@pytest.mark.parametrize("provider", ["oura", "withings", "google_health"])
def test_connecting_stores_encrypted_tokens_and_registers_the_user(
    store: RecordStore, providers: FakeProviders, token_key: str, provider: str
) -> None:
    with serve(store, providers, providers.env()) as url, httpx.Client(timeout=10) as http:
        receiver = Receiver(url, store, providers, http)
        started = receiver.start(
            provider, patient="pat-42", timezone="Europe/Paris", frequency="daily"
        )
        assert started.status_code == 302
        assert started.headers["cache-control"] == "no-store"
        location = started.headers["location"]
        params = query_of(location)
        assert location.startswith(providers.api.base_url)
        assert params["response_type"] == "code"
        assert params["client_id"] == f"{provider}-client"
        assert params["redirect_uri"] == f"{PUBLIC}/oauth/{provider}/callback"
        assert len(params["state"]) >= 40
        scope = {
            "oura": "personal daily heartrate workout session spo2Daily",
            "withings": "user.metrics,user.activity",
            "google_health": "https://www.googleapis.com/auth/googlehealth.activity_and_fitness"
            ".readonly https://www.googleapis.com/auth/googlehealth"
            ".health_metrics_and_measurements.readonly"
            " https://www.googleapis.com/auth/googlehealth.sleep.readonly",
        }[provider]
        assert params["scope"] == scope
        if provider == "google_health":
            assert params["code_challenge_method"] == "S256"
            assert len(params["code_challenge"]) == 43
            assert (params["access_type"], params["prompt"]) == ("offline", "consent")
        else:
            assert "code_challenge" not in params
        # The state is kept hashed: the raw value is nowhere in the table.
        with store.read() as conn:
            pending = conn.execute(sa.select(oauth_states)).all()
        assert len(pending) == 1 and params["state"] not in " ".join(map(str, pending[0]))

        callback = receiver.consent(location)
        done = http.get(callback, headers=JSON)

        assert done.status_code == 200, done.text
        user_id = USER_IDS[provider]
        # The answer names the account by its salted subject, never by the ids.
        assert done.json()["subject"] == subject_hash(provider, user_id, salt=erasure_salt())
        assert user_id not in done.text and "pat-42" not in done.text
        # The audit log says which staff member connected whom (the account by its subject).
        (row,) = audit.read(store, action="connect")
        assert (row.actor, row.subject, row.outcome) == (
            f"staff {STAFF}",
            done.json()["subject"],
            "ok",
        )
        exchange = providers.api.calls_to(TOKEN_PATHS[provider])[-1].form
        assert exchange["redirect_uri"] == f"{PUBLIC}/oauth/{provider}/callback"
        assert ("code_verifier" in exchange) == (provider == "google_health")
        tokens, registered = stored(store)
        assert len(tokens) == 1 and len(registered) == 1
        raw = " ".join(str(v) for v in tokens[0])
        assert "SECRET" not in raw  # neither access nor refresh token in clear
        loaded = TokenStore(store).load(provider, user_id)
        assert loaded is not None
        assert loaded.access_token.startswith(f"{provider}-access-SECRET")
        assert loaded.refresh_token.startswith(f"{provider}-refresh-SECRET")
        assert loaded.expires_at is not None
        (config,) = store.users(provider)
        assert config.user_id == user_id
        assert (config.fhir_patient_id, config.timezone) == ("pat-42", "Europe/Paris")
        assert config.sync_frequency is SyncFrequency.DAILY
        # What the new-user sensor reads to backfill the person's history:
        assert [c.user_id for _, c in store.users_activated_since(0)] == [user_id]

        # Single use: the same redirect again is refused and changes nothing.
        replay = http.get(callback, headers=JSON)
        assert replay.status_code == 400
        assert "already used" in replay.json()["detail"]
        assert len(providers.api.calls_to(TOKEN_PATHS[provider])) == 1
        assert stored(store)[0] == tokens


def test_the_connected_page_is_html_by_default(receiver: Receiver) -> None:
    started = receiver.start("oura")
    page = receiver.http.get(receiver.consent(started.headers["location"]))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Connected</h1>" in page.text and "pat-1" not in page.text
    assert patient_subject("pat-1", salt=erasure_salt())[:12] in page.text


# -- refused states and people ---------------------------------------------------------------


def test_an_expired_state_is_refused_and_nothing_is_stored(receiver: Receiver) -> None:
    started = receiver.start("withings")
    callback = receiver.consent(started.headers["location"])
    eleven_minutes_us = int((STATE_TTL.total_seconds() + 60) * 1e6)
    with receiver.store.write() as conn:
        conn.execute(
            oauth_states.update().values(
                created_at_us=oauth_states.c.created_at_us - eleven_minutes_us
            )
        )
    refused = receiver.http.get(callback, headers=JSON)
    assert refused.status_code == 400
    assert "expired" in refused.json()["detail"]
    assert receiver.providers.api.calls_to("/v2/oauth2") == []
    assert stored(receiver.store) == ([], [])


def test_an_unknown_state_or_another_providers_state_is_refused(receiver: Receiver) -> None:
    unknown = receiver.http.get(
        f"{receiver.url}/oauth/oura/callback", params={"code": "c", "state": "forged"}
    )
    assert unknown.status_code == 400 and "Not connected" in unknown.text
    started = receiver.start("oura")
    callback = receiver.consent(started.headers["location"])
    crossed = receiver.http.get(callback.replace("/oauth/oura/", "/oauth/withings/"))
    assert crossed.status_code == 400
    assert receiver.http.get(callback).status_code == 400  # the state was spent by the attempt
    assert stored(receiver.store) == ([], [])


def test_a_person_who_declines_gets_a_clear_page_and_nothing_is_stored(
    receiver: Receiver,
) -> None:
    started = receiver.start("google_health")
    state = query_of(started.headers["location"])["state"]
    declined = receiver.http.get(
        f"{receiver.url}/oauth/google_health/callback",
        params={"error": "access_denied", "state": state},
        headers=JSON,
    )
    assert declined.status_code == 400
    assert "access_denied" in declined.json()["detail"]
    assert receiver.providers.api.calls_to("/google/token") == []
    assert stored(receiver.store) == ([], [])


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic bnVyc2UuYTpub3BlLW5vcGU="},  # nurse.a:nope-nope
    ],
)
def test_the_start_needs_a_staff_token(receiver: Receiver, header: dict[str, str]) -> None:
    url = f"{receiver.url}/connect/oura"
    refused = receiver.http.get(url, params={"patient": "p1"}, headers=header)
    assert refused.status_code == 401
    # One character off the real token: refused too.
    token = TOKENS[receiver.url]
    bent = {"Authorization": f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}"}
    assert receiver.http.get(url, params={"patient": "p1"}, headers=bent).status_code == 401
    with receiver.store.read() as conn:
        assert conn.execute(sa.select(oauth_states)).all() == []


def test_a_token_in_the_url_is_refused_and_not_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="ohx_dagster")
    caplog.set_level("DEBUG", logger="uvicorn")
    token = TOKENS[receiver.url]
    url = f"{receiver.url}/connect/oura"
    for name in ("token", "access_token"):
        refused = receiver.http.get(url, params={"patient": "p1", name: token}, headers=JSON)
        assert refused.status_code == 400
        assert "Authorization: Bearer" in refused.json()["detail"]
        # Refused even with a good header beside it: the URL has already leaked the token.
        both = receiver.http.get(
            url, params={"patient": "p1", name: token}, headers={**JSON, **receiver.auth}
        )
        assert both.status_code == 400
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any("a token in the URL" in r.getMessage() for r in server_side)
    assert not any(token in r.getMessage() for r in server_side)
    with receiver.store.read() as conn:
        assert conn.execute(sa.select(oauth_states)).all() == []


def test_the_staff_token_may_come_as_basic_auth_with_its_name(receiver: Receiver) -> None:
    url = f"{receiver.url}/connect/oura"
    token = TOKENS[receiver.url]
    assert receiver.http.get(url, params={"patient": "p1"}, auth=(STAFF, token)).status_code == 302
    assert (
        receiver.http.get(url, params={"patient": "p1"}, auth=("other", token)).status_code == 401
    )
    staff.remove(receiver.store, STAFF, actor="test")
    assert (
        receiver.http.get(url, params={"patient": "p1"}, headers=receiver.auth).status_code == 401
    )


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"patient": ""}, "patient"),
        ({"patient": "has space"}, "patient"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"frequency": "weekly"}, "sync_frequency"),
    ],
)
def test_a_bad_start_parameter_is_named(
    receiver: Receiver, params: dict[str, str], field_name: str
) -> None:
    refused = receiver.http.get(
        f"{receiver.url}/connect/oura",
        params={"patient": "p1", **params},
        headers={**JSON, **receiver.auth},
    )
    assert refused.status_code == 400
    assert refused.json()["field"] == field_name


def test_a_provider_without_an_oauth_client_cannot_be_connected(
    sqlite_store: RecordStore, providers: FakeProviders, token_key: str
) -> None:
    env = {k: v for k, v in providers.env().items() if not k.startswith("OHX_GOOGLE_HEALTH")}
    with serve(sqlite_store, providers, env) as url, httpx.Client() as http:
        query, auth = {"patient": "p1"}, {"Authorization": f"Bearer {TOKENS[url]}"}
        assert (
            http.get(f"{url}/connect/google_health", params=query, headers=auth).status_code == 404
        )
        assert http.get(f"{url}/connect/fitbit", params=query, headers=auth).status_code == 404
        assert http.get(f"{url}/connect/oura", params=query, headers=auth).status_code == 302


# -- the provider fails ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "failure", "named"),
    [
        ("oura", answer(500, "upstream exploded"), "HTTP 500"),
        ("oura", answer(400, {"error": "invalid_grant", "error_description": "Code expired"}),
         "invalid_grant: Code expired"),
        ("withings", answer(200, {"status": 503, "error": "Invalid Params: invalid code"}),
         "status 503: Invalid Params: invalid code"),
        ("google_health", answer(200, {"access_token": "only-access"}), "refresh_token"),
    ],
)  # fmt: skip
def test_a_failed_token_exchange_answers_502_and_stores_nothing(
    receiver: Receiver, provider: str, failure: Answer, named: str
) -> None:
    receiver.providers.fail[provider] = failure
    callback, done = receiver.connect(provider)
    assert done.status_code == 502
    detail = done.json()["detail"]
    assert provider in detail and named in detail
    code = query_of(callback)["code"]
    assert code not in detail and SECRET[provider] not in detail
    assert stored(receiver.store) == ([], [])


def test_a_withings_code_is_exchanged_with_action_requesttoken(receiver: Receiver) -> None:
    _, done = receiver.connect("withings")
    assert done.status_code == 200
    form = receiver.providers.api.calls_to("/v2/oauth2")[0].form
    assert form["action"] == "requesttoken"
    assert form["grant_type"] == "authorization_code"
    assert receiver.store.user("withings", "363") is not None  # the id Withings webhooks carry


def test_pkce_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636 Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_failed_user_id_lookup_answers_502_and_stores_nothing(receiver: Receiver) -> None:
    receiver.providers.api.queue("/v2/usercollection/personal_info", answer(403, {"detail": "no"}))
    _, done = receiver.connect("oura")
    assert done.status_code == 502
    assert "personal_info" in done.json()["detail"]
    assert stored(receiver.store) == ([], [])


# -- configuration -----------------------------------------------------------------------------


def test_configuration_errors_name_the_variable(
    sqlite_store: RecordStore, providers: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = providers.env()
    without_base = {k: v for k, v in env.items() if k != "OHX_OAUTH_REDIRECT_BASE"}
    assert ConnectConfig.from_env(without_base) is None  # no public URL: not mounted
    # The retired shared token is refused, naming what replaces it.
    with pytest.raises(ConfigError, match=r"OHX_CONNECT_TOKEN is retired.*ohx staff add"):
        ConnectConfig.from_env({**env, "OHX_CONNECT_TOKEN": "staff-token-0123456789"})
    config = ConnectConfig.from_env(env)
    assert config is not None and sorted(config.providers) == ["google_health", "oura", "withings"]
    monkeypatch.delenv("OHX_TOKEN_KEY", raising=False)
    with pytest.raises(ConfigError, match="OHX_TOKEN_KEY"):
        create_app(sqlite_store, WebhookSecrets(), connect=config)


# -- one account, one patient; the provider's id ------------------------------------------------


def test_an_account_connected_for_one_patient_is_refused_for_another(
    store: RecordStore, providers: FakeProviders, token_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ohx_dagster")
    with serve(store, providers, providers.env()) as url, httpx.Client(timeout=10) as http:
        receiver = Receiver(url, store, providers, http)
        _, first = receiver.connect("oura", patient="pat-A")
        assert first.status_code == 200, first.text
        before = stored(store)
        # The same person signs in while a link for another patient is open.
        _, refused = receiver.connect("oura", patient="pat-B")
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        salt = erasure_salt()
        assert subject_hash("oura", USER_IDS["oura"], salt=salt)[:12] in detail
        assert patient_subject("pat-A", salt=salt)[:12] in detail
        assert patient_subject("pat-B", salt=salt)[:12] in detail
        assert "ohx users relink" in detail
        for clear in (USER_IDS["oura"], "pat-A", "pat-B"):
            assert clear not in refused.text
        assert stored(store) == before  # tokens and users row as they were
        assert store.user("oura", USER_IDS["oura"]).fhir_patient_id == "pat-A"
        # The same patient again is a reconnection.
        _, again = receiver.connect("oura", patient="pat-A")
        assert again.status_code == 200
    assert "409 /oauth/oura/callback" in caplog.text
    for clear in (USER_IDS["oura"], "pat-A", "pat-B"):
        assert clear not in caplog.text  # the log names subjects only


@pytest.mark.parametrize("user_id", ["x" * 10_000, "a\nb", "nul\x00", ""])
def test_a_provider_user_id_the_receiver_would_refuse_is_refused_here_too(
    receiver: Receiver, user_id: str
) -> None:
    receiver.providers.api.queue(
        "/v2/usercollection/personal_info", answer(200, {"id": user_id, "age": 41})
    )
    _, done = receiver.connect("oura")
    assert done.status_code == 502, done.text
    assert stored(receiver.store) == ([], [])
