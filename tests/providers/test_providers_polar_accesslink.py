"""Polar AccessLink against a local server that answers only with the shapes Polar's AccessLink
documentation gives (bodies in ohx_dagster/providers/polar/fixtures/accesslink/, their sources
in SOURCE.md): the OAuth connect flow through the real receiver (HTTP Basic client
authentication, `x_user_id`, no refresh token), registration of the person (POST /v3/users, 409
when registered already), the application's webhook (create with its PING, status, reactivate),
signed EXERCISE notifications through the real receiver into the inbox, and an exercise's heart
rate and RR intervals synced and published as FHIR R5.

Values that are ours, not Polar's: the exercise's start, duration, sample values, the user and
exercise ids in notifications, client credentials and URLs."""

from __future__ import annotations

import base64
import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import numpy as np
import orjson
import pytest
from provider_api_server import Answer, Call, FakeApi, answer

import ohx_dagster.providers.polar as polar
from ohx_dagster.config.receiver import PolarAccessLinkSecrets, WebhookSecrets
from ohx_dagster.core.errors import ConfigError, NeedsReauthorization, ProviderError
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.series import read_series
from ohx_dagster.fhir.validation import validate_resources
from ohx_dagster.privacy import staff
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.providers.api.http import ApiClient
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.subscription import SubscriptionSettings, recorded
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, TokenStore, connect_user
from ohx_dagster.providers.base import Event, HealthSource
from ohx_dagster.providers.polar import ACCESSLINK, AccessLinkSource
from ohx_dagster.providers.polar import accesslink_subscriptions as subscriptions
from ohx_dagster.providers.polar.accesslink import REACH
from ohx_dagster.providers.polar.accesslink_webhook import NAME, ROUTE, signature
from ohx_dagster.providers.registry import API_PROVIDERS, SUPPORTED_TYPES
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig, connectable
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import NEEDS_REAUTHORIZATION, RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.shards import Shard

FIXTURES = Path(polar.__file__).parent / "fixtures" / "accesslink"
HR, RR = HealthDataType.HEART_RATE, HealthDataType.RR_INTERVALS
PUBLIC = "https://ohx.example.org"
CLIENT_ID, CLIENT_SECRET = "polar-client", "polar-client-SECRET"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
JSON = {"Accept": "application/json"}
KEY = "abe1f3ae-fd33-11e8-8eb2-f2801f1b9fd1"  # the documented signature_secret_key
DAY = date(2024, 5, 5)
NOW = datetime(2024, 5, 5, 18, 0, tzinfo=UTC)


def documented(name: str) -> Any:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())


TOKEN = documented("token")
USER_ID = str(TOKEN["x_user_id"])  # 10579
ACCESS = TOKEN["access_token"]
USER = HealthSyncConfig(user_id=USER_ID, provider=NAME, timezone="Europe/Berlin")

# Our exercise, in the documented exerciseHashId shape: 17:30 local at UTC+2 (15:30Z), one
# minute; heart rate every 5 s (the first a 0: no contact), RR intervals with a null (offline).
HR_DATA = [0, 92, 95, 101, 108, 112, 118, 121, 124, 126, 127, 128]
RR_DATA = [652, 648, 640, 633, 628]
START = datetime(2024, 5, 5, 15, 30, tzinfo=UTC)
EXERCISE_ID = "aQlC83"


def exercise(
    exercise_id: str = EXERCISE_ID,
    start_local: str = "2024-05-05T17:30:00",
    hr: str = ",".join(map(str, HR_DATA)),
    rr: str = ",".join(map(str, RR_DATA)) + ",null,610",
) -> dict[str, Any]:
    body = documented("exercise")
    body |= {"id": exercise_id, "start_time": start_local, "start_time_utc_offset": 120}
    body |= {"duration": "PT1M", "sport": "RUNNING"}
    body["samples"] = [
        *body["samples"],  # the documented speed sample (type "1"): not read
        {"recording-rate": 5, "sample-type": "0", "data": hr},
        {"recording-rate": None, "sample-type": "11", "data": rr},
    ]
    return body


def notification(event: str = "notification_exercise", **values: Any) -> dict[str, Any]:
    return documented(event) | {"user_id": int(USER_ID)} | values


@dataclass
class FakePolar:
    """AccessLink, its authorization server and its token endpoint on one local server."""

    api: FakeApi
    exercises: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    issued: set[str] = field(default_factory=set)
    registered: set[str] = field(default_factory=set)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.api.on("/oauth2/authorization", self._authorize)
        self.api.on("/v2/oauth2/token", self._token)
        self.api.on("/v3/users", self._register)
        self.api.on("/v3/webhooks", self._webhooks)
        self.api.on("/v3/webhooks/activate", self._activate)
        self.api.on("/v3/exercises", self._list)

    def env(self) -> dict[str, str]:
        base = self.api.base_url
        return {
            "OHX_OAUTH_REDIRECT_BASE": PUBLIC,
            "OHX_POLAR_ACCESSLINK_CLIENT_ID": CLIENT_ID,
            "OHX_POLAR_ACCESSLINK_CLIENT_SECRET": CLIENT_SECRET,
            "OHX_POLAR_ACCESSLINK_API_URL": base,
            "OHX_POLAR_ACCESSLINK_TOKEN_URL": f"{base}/v2/oauth2/token",
            "OHX_POLAR_ACCESSLINK_AUTHORIZE_URL": f"{base}/oauth2/authorization",
        }

    def settings(self) -> ApiSettings:
        return ApiSettings.from_env(ACCESSLINK, self.env())

    def add(self, body: dict[str, Any]) -> None:
        self.exercises[body["id"]] = body
        self.api.on(f"/v3/exercises/{body['id']}", lambda c, i=body["id"]: self._get(c, i))

    # -- OAuth -----------------------------------------------------------------------------------

    def _authorize(self, call: Call) -> Answer:
        code = f"code-{next(self.numbers)}"
        self.codes[code] = call.query
        query = urlencode({"code": code, "state": call.query["state"]})
        return answer(302, None, location=f"{call.query['redirect_uri']}?{query}")

    def _token(self, call: Call) -> Answer:
        """Polar's token endpoint: Basic client credentials, grant_type, code, redirect_uri."""
        grant = self.codes.pop(call.form.get("code", ""), None)
        if call.headers.get("authorization") != BASIC or "client_secret" in call.form:
            return answer(400, {"error": "invalid_client"})
        if grant is None or call.form.get("grant_type") != "authorization_code":
            return answer(400, {"error": "invalid_grant"})
        if call.form.get("redirect_uri") != grant.get("redirect_uri"):
            return answer(400, {"error": "invalid_grant"})
        self.issued.add(ACCESS)
        return answer(200, TOKEN)

    # -- users and webhooks ----------------------------------------------------------------------

    def _register(self, call: Call) -> Answer:
        if call.bearer not in self.issued:
            return answer(401, None)
        member = orjson.loads(call.body)["member-id"]
        if member in self.registered:
            return answer(409, None)  # "User already registered to partner ..."
        self.registered.add(member)
        return answer(
            200, documented("user") | {"polar-user-id": int(USER_ID), "member-id": member}
        )

    def _client_level(self, call: Call) -> Answer | None:
        if call.headers.get("authorization") != BASIC:
            return answer(401, documented("error") | {"status": 401})
        return None

    def _webhooks(self, call: Call) -> Answer:
        if (refused := self._client_level(call)) is not None:
            return refused
        if call.method == "GET":
            return answer(200, {"data": self.webhooks})
        if self.webhooks:
            return answer(409, documented("error") | {"status": 409, "message": "exists"})
        request = orjson.loads(call.body)
        # "When creating webhook the AccessLink sends a ping message to the url": with the key
        # the new webhook will have, which our receiver cannot know yet.
        ping = orjson.dumps(documented("ping"))
        headers = {"Polar-Webhook-Event": "PING", "Polar-Webhook-Signature": signature(KEY, ping)}
        try:
            pinged = httpx.post(request["url"], content=ping, headers=headers, timeout=10)
        except httpx.HTTPError:
            pinged = None
        if pinged is None or pinged.status_code != 200:
            return answer(400, documented("error") | {"status": 400})
        created = documented("webhook_created")
        created["data"] |= {"events": request["events"], "url": request["url"]}
        info = {k: v for k, v in created["data"].items() if k != "signature_secret_key"}
        self.webhooks.append({**info, "active": True})
        return answer(201, created)

    def _activate(self, call: Call) -> Answer:
        if (refused := self._client_level(call)) is not None:
            return refused
        if not self.webhooks:
            return answer(204, None)
        self.webhooks[0]["active"] = True
        return answer(200, None)

    # -- exercises -------------------------------------------------------------------------------

    def _shown(self, body: dict[str, Any], call: Call) -> dict[str, Any]:
        """samples, zones and route only when asked for ("Returned when query parameter ...")."""
        shown = copy.deepcopy(body)
        for flag, key in (
            ("samples", "samples"),
            ("zones", "heart_rate_zones"),
            ("route", "route"),
        ):
            if call.query.get(flag) != "true":
                shown.pop(key, None)
        return shown

    def _list(self, call: Call) -> Answer:
        if call.bearer not in self.issued:
            return answer(401, None)
        return answer(200, [self._shown(body, call) for body in self.exercises.values()])

    def _get(self, call: Call, exercise_id: str) -> Answer:
        if call.bearer not in self.issued:
            return answer(401, None)
        if exercise_id not in self.exercises:
            return answer(404, None)
        return answer(200, self._shown(self.exercises[exercise_id], call))


@pytest.fixture
def polar_api(api: FakeApi) -> FakePolar:
    return FakePolar(api)


@pytest.fixture
def connected(sqlite_store: RecordStore, polar_api: FakePolar, token_key: str) -> RecordStore:
    """The person connected: Polar's long-lived token, no refresh token."""
    polar_api.issued.add(ACCESS)
    grant = OAuthTokens(ACCESS, "", NOW + timedelta(days=365))
    connect_user(sqlite_store, NAME, USER_ID, grant, USER)
    return sqlite_store


def source_for(polar_api: FakePolar, store: RecordStore, now: datetime = NOW) -> AccessLinkSource:
    return AccessLinkSource(store, polar_api.settings(), backoff_s=0.0, clock=lambda: now)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- the provider in the product ---------------------------------------------------------------


def test_the_provider_is_registered_with_its_oauth_app() -> None:
    assert API_PROVIDERS[NAME] is ACCESSLINK
    assert SUPPORTED_TYPES[NAME] == frozenset({HR, RR})
    assert (ACCESSLINK.token_auth, ACCESSLINK.refresh_tokens) == ("basic", False)
    assert ACCESSLINK.authorize.scopes == ("accesslink.read_all",)
    assert ACCESSLINK.request_limit.requests == 500 and ACCESSLINK.request_limit.per_s == 900
    with pytest.raises(ConfigError, match="OHX_POLAR_ACCESSLINK_CLIENT_ID"):
        ApiSettings.from_env(ACCESSLINK, {})


def test_the_token_answers_x_user_id_is_the_person() -> None:
    assert ACCESSLINK.find_user_id(None, TOKEN, ACCESS) == "10579"
    with pytest.raises(ProviderError, match="x_user_id"):
        ACCESSLINK.find_user_id(None, {k: v for k, v in TOKEN.items() if k != "x_user_id"}, "")


# -- connecting: Basic client authentication, x_user_id, registration --------------------------


ISSUED: list[str] = []  # the staff token serve_connect issued last


def serve_connect(store: RecordStore, polar_api: FakePolar):
    env = polar_api.env()
    staff.remove(store, "nurse.a", actor="test")
    ISSUED[:] = [staff.add(store, "nurse.a", actor="test")]
    config = ConnectConfig(connectable(env), SubscriptionSettings(PUBLIC))
    secrets = WebhookSecrets(polar_accesslink=PolarAccessLinkSecrets(KEY))
    return serve_in_thread(create_app(store, secrets, connect=config))


def connect(http: httpx.Client, url: str) -> httpx.Response:
    started = http.get(
        f"{url}/connect/{NAME}",
        params={"patient": "pat-7"},
        headers={"Authorization": f"Bearer {ISSUED[0]}"},
    )
    assert started.status_code == 302, started.text
    params = query_of(started.headers["location"])
    assert params["scope"] == "accesslink.read_all" and params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == f"{PUBLIC}/oauth/{NAME}/callback"
    consented = http.get(started.headers["location"])
    assert consented.status_code == 302
    return http.get(consented.headers["location"].replace(PUBLIC, url), headers=JSON)


def test_connecting_uses_basic_auth_keeps_the_token_and_registers_the_person(
    store: RecordStore, polar_api: FakePolar, token_key: str
) -> None:
    polar_api.webhooks.append(documented("webhook_info")["data"][0] | {"url": f"{PUBLIC}{ROUTE}"})
    with serve_connect(store, polar_api) as url, httpx.Client(timeout=10) as http:
        done = connect(http, url)
        assert done.status_code == 200, done.text
        # The answer names the account by its salted subject only (ohx_dagster/privacy/identity.py).
        assert done.json()["subject"] == subject_hash(NAME, USER_ID, salt=erasure_salt())
        assert USER_ID == "10579" and USER_ID not in done.text

        (exchange,) = polar_api.api.calls_to("/v2/oauth2/token")
        assert exchange.headers["authorization"] == BASIC
        assert set(exchange.form) == {"grant_type", "code", "redirect_uri"}
        assert exchange.form["grant_type"] == "authorization_code"
        tokens = TokenStore(store).load(NAME, USER_ID)
        assert tokens is not None
        assert (tokens.access_token, tokens.refresh_token) == (ACCESS, "")
        assert tokens.expires_at is not None  # expires_in 31535999: about a year
        assert timedelta(days=364) < tokens.expires_at - datetime.now(UTC) < timedelta(days=366)
        (config,) = store.users(NAME)
        assert (config.user_id, config.fhir_patient_id) == (USER_ID, "pat-7")

        (registration,) = polar_api.api.calls_to("/v3/users")
        assert registration.bearer == ACCESS
        assert orjson.loads(registration.body) == {"member-id": USER_ID}
        status = {r.target: r.status for r in recorded(store, NAME)}
        assert status == {"registration": "created", "webhook": "active"}
        assert polar_api.api.calls_to("/v3/webhooks")[0].headers["authorization"] == BASIC

        # Connecting again: Polar answers 409, the person is registered already.
        again = connect(http, url)
        assert again.status_code == 200, again.text
        assert [c.body for c in polar_api.api.calls_to("/v3/users")][-1] == registration.body
        (result,) = [r for r in recorded(store, NAME) if r.target == "registration"]
        assert (result.status, result.detail) == ("active", "already registered with this client")


def test_a_registration_polar_refuses_is_recorded_and_the_connection_stands(
    sqlite_store: RecordStore, polar_api: FakePolar, token_key: str
) -> None:
    polar_api.api.on("/v3/users", lambda call: answer(403, None))  # consents not accepted
    with serve_connect(sqlite_store, polar_api) as url, httpx.Client(timeout=10) as http:
        assert connect(http, url).status_code == 200
    results = {r.target: r for r in recorded(sqlite_store, NAME)}
    assert results["registration"].status == "failed"
    detail = results["registration"].detail
    assert "/v3/users: HTTP 403" in detail and "mandatory consents" in detail
    assert results["webhook"].status == "skipped"  # none created yet
    assert "accesslink_subscriptions create" in results["webhook"].detail
    assert sqlite_store.user(NAME, USER_ID) is not None


# -- tokens: no refresh token ------------------------------------------------------------------


def test_a_rejected_token_without_refresh_token_parks_the_person(
    connected: RecordStore, polar_api: FakePolar
) -> None:
    polar_api.add(exercise())
    polar_api.issued.clear()  # the person revoked the access
    report = sync_partition(source_for(polar_api, connected), connected, DAY, now=NOW)
    assert "needs reauthorization" in report.users_skipped[USER_ID]
    assert "connect the account again" in report.users_skipped[USER_ID]
    (person,) = connected.people(NAME)
    assert person.state == NEEDS_REAUTHORIZATION
    assert polar_api.api.calls_to("/v2/oauth2/token") == []  # nothing to refresh with


def test_an_expired_token_without_refresh_token_is_still_tried(
    sqlite_store: RecordStore, polar_api: FakePolar, token_key: str
) -> None:
    """Polar: "Access tokens will not expire unless explicitly revoked", yet expires_in says a
    year: past that year the token is used until Polar rejects it."""
    polar_api.issued.add(ACCESS)
    connect_user(sqlite_store, NAME, USER_ID, OAuthTokens(ACCESS, "", NOW - timedelta(days=1)))
    polar_api.add(exercise())
    result = source_for(polar_api, sqlite_store).fetch_windows(
        USER, {HR: [(to_us(START), to_us(START + timedelta(minutes=1)))]}
    )
    assert len(result.batch) == len(HR_DATA) - 1
    polar_api.issued.clear()
    with pytest.raises(NeedsReauthorization, match="issued no refresh token"):
        source_for(polar_api, sqlite_store).fetch_windows(
            USER, {HR: [(to_us(START) - 1, to_us(START + timedelta(minutes=1)))]}
        )


def test_a_refresh_grant_with_basic_client_authentication(
    sqlite_store: RecordStore, api: FakeApi, token_key: str
) -> None:
    """token_auth="basic" in the refresh grant too (shared code; Polar itself never refreshes)."""
    api.on("/token", lambda call: answer(200, {"access_token": "a2", "expires_in": 3600}))
    connect_user(sqlite_store, "oura", "u1", OAuthTokens("a1", "r1", NOW - timedelta(hours=1)))
    basic = OAuthClient(
        "oura", f"{api.base_url}/token", CLIENT_ID, CLIENT_SECRET, token_auth="basic"
    )
    fresh = TokenStore(sqlite_store).refresh(
        basic, "u1", ApiClient("oura", api.base_url, backoff_s=0.0), rejected="a1", now=NOW
    )
    assert (fresh.access_token, fresh.refresh_token) == ("a2", "r1")
    (call,) = api.calls_to("/token")
    assert call.headers["authorization"] == BASIC
    assert call.form == {"grant_type": "refresh_token", "refresh_token": "r1"}


# -- the application's webhook -----------------------------------------------------------------


def test_creating_the_webhook_pings_our_receiver_and_shows_the_key_once(
    sqlite_store: RecordStore, polar_api: FakePolar, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the key exists the route is mounted with the OAuth app and answers the PING only.
    secrets = WebhookSecrets.from_env({"OHX_POLAR_ACCESSLINK_CLIENT_SECRET": CLIENT_SECRET})
    assert secrets.polar_accesslink == PolarAccessLinkSecrets(None)
    with serve_in_thread(create_app(sqlite_store, secrets)) as url:
        env = polar_api.env() | {"OHX_WEBHOOK_BASE_URL": url}
        assert subscriptions.main(["create"], env) == 0
        printed = capsys.readouterr().out
        assert printed.splitlines()[-1] == KEY
        (created,) = polar_api.api.calls_to("/v3/webhooks")
        assert created.headers["authorization"] == BASIC
        assert orjson.loads(created.body) == {"events": ["EXERCISE"], "url": f"{url}{ROUTE}"}
        assert Inbox(sqlite_store).counts() == {"pending": 0, "dispatched": 0, "ignored": 0}

        # One webhook per application: a second create is Polar's 409, named.
        with pytest.raises(ProviderError, match="has a webhook already"):
            subscriptions.create(polar_api.settings(), f"{url}{ROUTE}", backoff_s=0.0)
        assert subscriptions.main(["status"], env) == 0
        assert "active" in capsys.readouterr().out


def test_a_webhook_without_a_listening_receiver_is_not_created(
    polar_api: FakePolar,
) -> None:
    with pytest.raises(ProviderError, match="HTTP 400"):
        subscriptions.create(polar_api.settings(), "http://127.0.0.1:9/nowhere", backoff_s=0.0)
    assert polar_api.webhooks == []


def test_the_webhook_state_after_a_connection(polar_api: FakePolar) -> None:
    api, callback = polar_api.settings(), f"{PUBLIC}{ROUTE}"
    check = subscriptions.check_webhook
    assert check(None, api, callback, backoff_s=0.0).status == "skipped"
    polar_api.webhooks.append(documented("webhook_info")["data"][0])  # another URL
    other = check(None, api, callback, backoff_s=0.0)
    assert other.status == "failed" and "https://myapp.example.com/acl_webhook" in other.detail
    polar_api.webhooks[0] |= {"url": callback, "active": False}  # deactivated after 7 days
    again = check(None, api, callback, backoff_s=0.0)
    assert (again.status, again.subscription_id) == ("renewed", "abdf33")
    assert polar_api.webhooks[0]["active"] is True
    assert polar_api.api.calls_to("/v3/webhooks/activate")[0].headers["authorization"] == BASIC
    assert check(None, api, callback, backoff_s=0.0).status == "active"


# -- notifications through the real receiver ---------------------------------------------------


def post(url: str, body: bytes, key: str | None = KEY, event: str = "EXERCISE") -> httpx.Response:
    headers = {"Content-Type": "application/json", "Polar-Webhook-Event": event}
    if key is not None:
        headers["Polar-Webhook-Signature"] = signature(key, body)
    return httpx.post(f"{url}{ROUTE}", content=body, headers=headers, timeout=10)


def test_the_signature_is_hex_hmac_sha256_of_the_body() -> None:
    # RFC 4231 test case 2.
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert signature("Jefe", b"what do ya want for nothing?") == expected


def test_a_signed_exercise_notification_lands_in_the_inbox(sqlite_store: RecordStore) -> None:
    secrets = WebhookSecrets(polar_accesslink=PolarAccessLinkSecrets(KEY))
    body = orjson.dumps(notification())
    with serve_in_thread(create_app(sqlite_store, secrets)) as url:
        assert httpx.get(f"{url}/healthz").json()["providers"] == [NAME]
        first = post(url, body)
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": 1, "duplicates": 0}
        assert post(url, body).json() == {"accepted": 0, "duplicates": 1}  # Polar's retry

        forged = post(url, body, key="not-the-key-0000")
        assert forged.status_code == 401 and "does not match" in forged.json()["error"]
        assert post(url, body, key=None).status_code == 401
        tampered = orjson.dumps(notification(entity_id="other"))
        assert (
            httpx.post(
                f"{url}{ROUTE}",
                content=tampered,
                headers={"Polar-Webhook-Signature": signature(KEY, body)},
            ).status_code
            == 401
        )
        # The PING comes before Polar hands out the key: answered, never stored.
        ping = orjson.dumps(documented("ping"))
        assert post(url, ping, key="a-key-we-never-had", event="PING").status_code == 200
        assert post(url, ping, key=None, event="PING").json() == {"accepted": 0, "duplicates": 0}
        # The header and the body must agree on the event.
        assert post(url, body, event="SLEEP").status_code == 400
        # Other documented events: acknowledged, kept as ignored.
        sleep = orjson.dumps(notification("notification_sleep"))
        assert post(url, sleep, event="SLEEP").json() == {"accepted": 1, "duplicates": 0}
        malformed = orjson.dumps({"event": "EXERCISE", "user_id": int(USER_ID)})
        refused = post(url, malformed)
        assert refused.status_code == 400 and refused.json()["field"] == "entity_id"

    inbox = Inbox(sqlite_store)
    assert inbox.counts() == {"pending": 1, "dispatched": 0, "ignored": 1}
    (event,) = inbox.after(0, 10)
    assert (event.provider, event.user_id, event.data_type) == (NAME, USER_ID, None)
    assert event.payload == notification()
    assert event.occurred_at == datetime(2018, 5, 15, 14, 22, 24, tzinfo=UTC)


def test_before_the_key_is_set_only_pings_are_answered(sqlite_store: RecordStore) -> None:
    secrets = WebhookSecrets(polar_accesslink=PolarAccessLinkSecrets(None))
    with serve_in_thread(create_app(sqlite_store, secrets)) as url:
        assert post(url, orjson.dumps(documented("ping")), event="PING").status_code == 200
        refused = post(url, orjson.dumps(notification()))
        assert refused.status_code == 401
        assert "OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY" in refused.json()["error"]
    with serve_in_thread(create_app(sqlite_store, WebhookSecrets())) as url:
        assert post(url, orjson.dumps(documented("ping")), event="PING").status_code == 404
    assert Inbox(sqlite_store).counts()["pending"] == 0


def test_the_receiver_secrets_from_the_environment() -> None:
    app_only = WebhookSecrets.from_env({"OHX_POLAR_ACCESSLINK_CLIENT_SECRET": CLIENT_SECRET})
    assert app_only.mounted[NAME] is True
    full = WebhookSecrets.from_env(
        {
            "OHX_POLAR_ACCESSLINK_CLIENT_SECRET": CLIENT_SECRET,
            "OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY": KEY,
        }
    )
    assert full.polar_accesslink is not None
    assert full.polar_accesslink.signature_secret_key == KEY
    assert KEY not in repr(full)
    assert WebhookSecrets.from_env({}).mounted[NAME] is False
    with pytest.raises(ConfigError, match="OHX_POLAR_ACCESSLINK_CLIENT_SECRET"):
        WebhookSecrets.from_env({"OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY": KEY})


# -- reading exercises -------------------------------------------------------------------------


def test_an_exercise_notification_names_the_exercises_window(
    connected: RecordStore, polar_api: FakePolar
) -> None:
    polar_api.add(exercise())
    event = Event(None, NOW, NOW, notification(entity_id=EXERCISE_ID))
    source = source_for(polar_api, connected)
    assert isinstance(source, HealthSource) and source.discover_users() == []
    window = (to_us(START), to_us(START + timedelta(minutes=1)))
    assert source.event_windows(USER, [event], NOW) == {HR: [window], RR: [window]}
    (read,) = polar_api.api.calls_to(f"/v3/exercises/{EXERCISE_ID}")
    assert read.bearer == ACCESS and read.query == {"samples": "true"}
    # An exercise Polar no longer has: whatever it still lists is read again.
    gone = Event(None, NOW, NOW, notification(entity_id="deleted-1"))
    polar_api.api.on("/v3/exercises/deleted-1", lambda call: answer(404, None))
    reach = (to_us(NOW - REACH), to_us(NOW))
    assert source.event_windows(USER, [gone], NOW) == {HR: [reach], RR: [reach]}
    sleep = Event(None, NOW, NOW, notification("notification_sleep"))
    assert source.event_windows(USER, [sleep], NOW) == {}


def test_the_documented_exercise_reads_as_documented(
    connected: RecordStore, polar_api: FakePolar
) -> None:
    """The documented list and exercise as they are: 2008-10-13T10:40:02 at UTC+3 for PT2H44M,
    a speed sample only (type "1"): no heart rate, no RR, and the window answered in full."""
    polar_api.api.on("/v3/exercises", lambda call: answer(200, documented("exercises")))
    polar_api.api.on("/v3/exercises/2AC312F", lambda call: answer(200, documented("exercise")))
    start = datetime(2008, 10, 13, 7, 40, 2, tzinfo=UTC)
    window = (to_us(start), to_us(start + timedelta(hours=2, minutes=44)))
    source = source_for(polar_api, connected, now=start + timedelta(days=1))
    result = source.fetch_windows(USER, {HR: [window], RR: [window]})
    assert result.failed == {} and result.batch.empty
    assert result.covered == {"heart_rate": [window], "rr_intervals": [window]}
    assert polar_api.api.calls_to("/v3/exercises/2AC312F")[0].query == {"samples": "true"}
    # A window beside it: the exercise is not read.
    before = (window[0] - 3_600_000_000, window[0])
    assert source_for(polar_api, connected).fetch_windows(USER, {HR: [before]}).batch.empty
    assert len(polar_api.api.calls_to("/v3/exercises/2AC312F")) == 1


def test_coverage_is_claimed_only_where_polar_lists_everything(
    connected: RecordStore, polar_api: FakePolar
) -> None:
    """Only exercises uploaded in the last 30 days are listed: an older window is read, and what
    Polar still has there is kept, but stored data there is never deleted for being unlisted."""
    polar_api.add(exercise())
    old = exercise("old-1", start_local="2024-03-01T10:00:00")  # uploaded late: still listed
    polar_api.add(old)
    source = source_for(polar_api, connected)
    since = NOW - timedelta(days=70)
    result = source.fetch_windows(USER, {HR: [(to_us(since), to_us(NOW))]})
    assert result.covered == {"heart_rate": [(to_us(NOW - REACH), to_us(NOW))]}
    assert len(result.batch) == 2 * (len(HR_DATA) - 1)
    older = source.fetch_windows(USER, {RR: [(to_us(since), to_us(NOW - timedelta(days=40)))]})
    assert older.covered == {} and len(older.batch) == len(RR_DATA)


def test_a_value_no_sensor_gives_fails_its_type_and_names_it(
    connected: RecordStore, polar_api: FakePolar
) -> None:
    polar_api.add(exercise(hr="120,121,400,122"))
    window = (to_us(START), to_us(START + timedelta(minutes=1)))
    result = source_for(polar_api, connected).fetch_windows(USER, {HR: [window], RR: [window]})
    assert "heart_rate" not in result.covered
    message = result.failed["heart_rate"]
    assert f"/v3/exercises/{EXERCISE_ID} samples[1]" in message  # after the speed sample
    assert "'data[2]' is 400.0" in message and "20..300 bpm" in message
    assert result.covered["rr_intervals"] == [window]
    assert (result.batch["data_type"] == "rr_intervals").sum() == len(RR_DATA)


# -- an exercise notification through sync and publish into FHIR R5 ----------------------------


def test_an_exercise_syncs_and_publishes_its_heart_rate_and_rr(
    connected: RecordStore, polar_api: FakePolar, tmp_path: Path
) -> None:
    polar_api.add(exercise())
    event = Event(None, NOW, NOW, notification(entity_id=EXERCISE_ID))
    report = sync_partition(
        source_for(polar_api, connected),
        connected,
        DAY,
        strategy="push",
        events={USER_ID: [event]},
        now=NOW,
    )
    assert report.records_by_type == {"heart_rate": len(HR_DATA) - 1, "rr_intervals": 5}
    assert report.failures == {} and DAY in report.days_changed
    # One list and one exercise read, whatever the sync asked (the RR's heart rate included).
    assert len(polar_api.api.calls_to("/v3/exercises")) == 1
    assert len(polar_api.api.calls_to(f"/v3/exercises/{EXERCISE_ID}")) == 1

    stored = connected.read_records(NAME, utc_day(DAY))
    assert set(stored["device_id"]) == {"polar-m400-1111AAAA"}
    assert set(stored["context"]) == {"workout"} and set(stored["utc_offset_min"]) == {120}

    output = FhirOutput(str(tmp_path / "fhir"))
    published = publish_partition(
        connected,
        output,
        provider=NAME,
        key=NAME,
        shard=Shard(NAME),
        day=DAY,
        scope=None,
        now=NOW,
        horizon=ACCESSLINK.resync_horizon,
    )
    assert published.invalid_buckets == {}
    resources = list(output.listed_resources(partition_dir(DAY, NAME)))
    assert validate_resources(resources) == []

    def series(code: str) -> dict[str, Any]:
        (found,) = [
            r
            for r in resources
            if "valueSampledData" in r and r["code"]["coding"][0]["code"] == code
        ]
        return found

    start_us = to_us(START)
    ts, values = read_series(series("8867-4"))  # heart rate, every 5 s from the start
    np.testing.assert_array_equal(values, HR_DATA[1:])
    np.testing.assert_array_equal(ts, [start_us + i * 5_000_000 for i in range(1, len(HR_DATA))])
    ts, values = read_series(series("8637-1"))  # RR, each at the beat that ends it
    np.testing.assert_array_equal(values, RR_DATA)
    np.testing.assert_array_equal(ts, start_us + np.cumsum(RR_DATA) * 1_000)
    assert (
        "polar-m400-1111AAAA"
        in orjson.dumps([r for r in resources if r["resourceType"] == "Device"]).decode()
    )
