"""Webhook subscriptions at the providers, over real HTTP on 127.0.0.1: a local server implementing
Oura's /v2/webhook/subscription (list, create with the verification GET against our real receiver,
renew; app credentials in x-client-id / x-client-secret) and Withings' /notify subscribe (the
user's bearer token, a HEAD to the callback first), plus the connect flow through the receiver."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from provider_api_server import Answer, Call, FakeApi, answer, fake_api
from test_connect import JSON, SECRET, STAFF, TOKENS, USER_IDS, FakeProviders, Receiver

from ohx_dagster.config.receiver import OuraSecrets, WebhookSecrets
from ohx_dagster.core.errors import ProviderError
from ohx_dagster.privacy import staff
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.subscription import SubscriptionSettings, recorded
from ohx_dagster.providers.oura.subscriptions import DATA_TYPES as OURA_DATA_TYPES
from ohx_dagster.providers.oura.subscriptions import EVENT_TYPES as OURA_EVENT_TYPES
from ohx_dagster.providers.oura.subscriptions import SUBSCRIPTIONS as OURA_SUBSCRIPTIONS
from ohx_dagster.providers.oura.subscriptions import ensure as ensure_oura_subscriptions
from ohx_dagster.providers.oura.subscriptions import main
from ohx_dagster.providers.registry import API_PROVIDERS
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig, connectable
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore

VERIFY = "oura-verification-token"
# Every (event type, data type) this app subscribes at Oura.
ALL = len(OURA_DATA_TYPES) * len(OURA_EVENT_TYPES)
WITHINGS_TOKEN = "withings-callback-token"
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


@dataclass
class FakeOura:
    """Oura's webhook subscription API for one app."""

    api: FakeApi
    client_id: str = "oura-client"
    client_secret: str = SECRET["oura"]
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    reject: set[str] = field(default_factory=set)  # data types whose creation fails
    ids: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.api.on(OURA_SUBSCRIPTIONS, self._collection)

    def add(self, callback: str, event: str, data: str, expires: datetime) -> str:
        sub_id = f"sub-{next(self.ids)}"
        self.subscriptions[sub_id] = {
            "id": sub_id,
            "callback_url": callback,
            "event_type": event,
            "data_type": data,
            "expiration_time": expires.isoformat(),
        }
        self.api.on(f"{OURA_SUBSCRIPTIONS}/renew/{sub_id}", lambda c, i=sub_id: self._renew(i, c))
        return sub_id

    def _authorized(self, call: Call) -> bool:
        given = (call.headers.get("x-client-id"), call.headers.get("x-client-secret"))
        return given == (self.client_id, self.client_secret)

    def _collection(self, call: Call) -> Answer:
        if not self._authorized(call):
            return answer(401, {"detail": "invalid client credentials"})
        if call.method == "GET":
            return answer(200, list(self.subscriptions.values()))
        body = orjson.loads(call.body)
        if body["data_type"] in self.reject:
            return answer(422, {"detail": f"unsupported data_type {body['data_type']}"})
        # Oura verifies the callback before it creates the subscription.
        challenge = f"challenge-{next(self.ids)}"
        check = httpx.get(
            body["callback_url"],
            params={"verification_token": body["verification_token"], "challenge": challenge},
            timeout=10,
        )
        if check.status_code != 200 or check.json() != {"challenge": challenge}:
            return answer(400, {"detail": "callback verification failed"})
        sub_id = self.add(
            body["callback_url"], body["event_type"], body["data_type"], NOW + timedelta(days=90)
        )
        return answer(201, self.subscriptions[sub_id])

    def _renew(self, sub_id: str, call: Call) -> Answer:
        if call.method != "PUT" or not self._authorized(call):
            return answer(401, {"detail": "invalid client credentials"})
        self.subscriptions[sub_id]["expiration_time"] = (NOW + timedelta(days=90)).isoformat()
        return answer(200, self.subscriptions[sub_id])


@dataclass
class FakeWithingsNotify:
    """Withings' notify subscribe: the user's bearer token, a HEAD to the callback first."""

    providers: FakeProviders
    subscribed: list[dict[str, str]] = field(default_factory=list)
    status: int = 0

    def __post_init__(self) -> None:
        self.providers.api.on("/notify", self._notify)

    def _notify(self, call: Call) -> Answer:
        if self.providers.issued.get(call.bearer or "") != "withings":
            return answer(200, {"status": 401, "error": "invalid_token"})
        if self.status != 0:
            return answer(200, {"status": self.status, "error": "Callback URL is unreachable"})
        if call.form.get("action") != "subscribe":
            return answer(200, {"status": 503, "error": "Invalid Params"})
        if httpx.head(call.form["callbackurl"], timeout=10).status_code != 200:
            return answer(200, {"status": 2554, "error": "callback did not answer HEAD"})
        self.subscribed.append(call.form)
        return answer(200, {"status": 0, "body": {}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def oura_receiver(sqlite_store: RecordStore) -> Iterator[str]:
    """Our receiver with /webhooks/oura mounted: the callback Oura verifies."""
    secrets = WebhookSecrets(oura=OuraSecrets("oura-client-secret", VERIFY))
    with serve_in_thread(create_app(sqlite_store, secrets)) as url:
        yield url


@pytest.fixture
def oura() -> Iterator[FakeOura]:
    with fake_api() as api:
        yield FakeOura(api)


def oura_settings(oura: FakeOura, secret: str = SECRET["oura"]) -> ApiSettings:
    env = {
        "OHX_OURA_CLIENT_ID": "oura-client",
        "OHX_OURA_CLIENT_SECRET": secret,
        "OHX_OURA_API_URL": oura.api.base_url,
    }
    return ApiSettings.from_env(API_PROVIDERS["oura"], env)


# -- Oura: per app, idempotent -------------------------------------------------------------------


def test_ensure_oura_subscriptions_creates_renews_and_then_changes_nothing(
    oura: FakeOura, oura_receiver: str
) -> None:
    callback = f"{oura_receiver}/webhooks/oura"
    soon = oura.add(callback, "update", "sleep", NOW + timedelta(days=2))
    later = oura.add(callback, "create", "sleep", NOW + timedelta(days=60))
    oura.add("https://someone-else.example/hook", "create", "daily_activity", NOW)

    results = ensure_oura_subscriptions(
        oura_settings(oura), callback, VERIFY, now=lambda: NOW, backoff_s=0.01
    )

    by_target = {r.target: r for r in results}
    expected = {f"{e}:{d}": "created" for d in OURA_DATA_TYPES for e in OURA_EVENT_TYPES}
    expected |= {"create:sleep": "active", "update:sleep": "renewed"}
    assert {t: r.status for t, r in by_target.items()} == expected
    assert by_target["update:sleep"].subscription_id == soon
    assert by_target["update:sleep"].expires_at == NOW + timedelta(days=90)
    assert by_target["create:sleep"].subscription_id == later
    created = ALL - 2
    posts = [c for c in oura.api.calls_to(OURA_SUBSCRIPTIONS) if c.method == "POST"]
    assert len(posts) == created
    assert {orjson.loads(c.body)["verification_token"] for c in posts} == {VERIFY}
    assert len(oura.subscriptions) == 3 + created

    # Run again: every subscription is there and far from expiry; nothing is created or renewed.
    again = ensure_oura_subscriptions(
        oura_settings(oura), callback, VERIFY, now=lambda: NOW, backoff_s=0.01
    )
    assert {r.status for r in again} == {"active"}
    assert len([c for c in oura.api.calls if c.method in ("POST", "PUT")]) == created + 1


def test_a_failed_oura_creation_is_a_result_and_the_rest_proceeds(
    oura: FakeOura, oura_receiver: str
) -> None:
    oura.reject.add("daily_spo2")
    callback = f"{oura_receiver}/webhooks/oura"
    results = ensure_oura_subscriptions(
        oura_settings(oura), callback, VERIFY, now=lambda: NOW, backoff_s=0.01
    )
    failed = [r for r in results if not r.ok]
    assert [r.target for r in failed] == [f"{e}:daily_spo2" for e in OURA_EVENT_TYPES]
    assert "HTTP 422" in failed[0].detail and "daily_spo2" in failed[0].detail
    assert sum(r.status == "created" for r in results) == ALL - len(OURA_EVENT_TYPES)


def test_a_callback_that_fails_oura_verification_is_not_subscribed(oura: FakeOura) -> None:
    with fake_api() as elsewhere:  # answers 404 to the verification GET
        results = ensure_oura_subscriptions(
            oura_settings(oura), f"{elsewhere.base_url}/webhooks/oura", VERIFY, backoff_s=0.01
        )
    assert {r.status for r in results} == {"failed"}
    assert oura.subscriptions == {}


def test_wrong_app_credentials_raise_without_leaking_the_secret(oura: FakeOura) -> None:
    with pytest.raises(ProviderError, match="HTTP 401") as caught:
        ensure_oura_subscriptions(
            oura_settings(oura, secret="not-the-secret"), "https://x/webhooks/oura", VERIFY
        )
    assert "not-the-secret" not in str(caught.value)


def test_the_cli_ensures_and_records_the_subscriptions(
    oura: FakeOura, oura_receiver: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": database,
        "OHX_OURA_CLIENT_ID": "oura-client",
        "OHX_OURA_CLIENT_SECRET": SECRET["oura"],
        "OHX_OURA_API_URL": oura.api.base_url,
        "OHX_OURA_VERIFICATION_TOKEN": VERIFY,
        "OHX_WEBHOOK_BASE_URL": oura_receiver,
    }
    assert main(["--provider", "oura"], env) == 0
    out = capsys.readouterr().out
    assert out.count(": created") == ALL
    assert SECRET["oura"] not in out and VERIFY not in out
    store = RecordStore(database)
    try:
        rows = recorded(store, "oura")
    finally:
        store.dispose()
    assert len(rows) == ALL and {r.status for r in rows} == {"created"}
    assert all(r.user_id == "" and r.expires_at is not None for r in rows)

    assert main(["--provider", "oura"], env) == 0
    assert capsys.readouterr().out.count(": active") == ALL

    missing = {k: v for k, v in env.items() if k != "OHX_OURA_VERIFICATION_TOKEN"}
    assert main(["--provider", "oura"], missing) == 2
    assert "OHX_OURA_VERIFICATION_TOKEN" in capsys.readouterr().err


def test_settings_from_env() -> None:
    assert SubscriptionSettings.from_env({}) is None
    settings = SubscriptionSettings.from_env(
        {
            "OHX_OAUTH_REDIRECT_BASE": "https://ohx.example.org/",
            "OHX_WITHINGS_CALLBACK_TOKEN": "tok/en+with&chars",
        }
    )
    assert settings is not None and settings.oura_verification_token is None
    assert settings.oura_callback == "https://ohx.example.org/webhooks/oura"
    assert settings.withings_callback == (
        "https://ohx.example.org/webhooks/withings?token=tok%2Fen%2Bwith%26chars"
    )
    override = SubscriptionSettings.from_env(
        {"OHX_OAUTH_REDIRECT_BASE": "https://a.example", "OHX_WEBHOOK_BASE_URL": "https://b.x"}
    )
    assert override is not None and override.callback_base == "https://b.x"


# -- after connecting, through the receiver --------------------------------------------------------


@pytest.fixture
def providers() -> Iterator[FakeProviders]:
    with fake_api() as api:
        yield FakeProviders(api)


@dataclass
class Setup:
    receiver: Receiver
    withings: FakeWithingsNotify
    oura: FakeOura


@contextmanager
def connect_receiver(
    store: RecordStore, providers: FakeProviders, *, withings_token: str | None
) -> Iterator[Setup]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    secrets = WebhookSecrets(
        oura=OuraSecrets("oura-client-secret", VERIFY), withings_token=withings_token
    )
    subscriptions = SubscriptionSettings(url, VERIFY, withings_token)
    config = ConnectConfig(connectable(providers.env()), subscriptions)
    app = create_app(store, secrets, connect=config)
    TOKENS[url] = staff.add(store, STAFF, actor="test")
    with serve_in_thread(app, port=port) as served, httpx.Client(timeout=30) as http:
        assert served == url
        yield Setup(
            Receiver(url, store, providers, http),
            FakeWithingsNotify(providers),
            FakeOura(providers.api),
        )


@pytest.fixture
def setup(sqlite_store, providers, token_key) -> Iterator[Setup]:
    with connect_receiver(sqlite_store, providers, withings_token=WITHINGS_TOKEN) as ready:
        yield ready


def test_connecting_withings_subscribes_each_appli_with_the_users_token(setup: Setup) -> None:
    _, done = setup.receiver.connect("withings")
    assert done.status_code == 200, done.text
    subscribed = setup.withings.subscribed
    assert [s["appli"] for s in subscribed] == ["1", "2", "4", "16", "44", "54"]
    callback = f"{setup.receiver.url}/webhooks/withings?token={WITHINGS_TOKEN}"
    assert {s["callbackurl"] for s in subscribed} == {callback}
    rows = recorded(setup.receiver.store, "withings")
    assert sorted((r.user_id, r.target, r.status) for r in rows) == sorted(
        (USER_IDS["withings"], f"appli={a}", "created") for a in (1, 2, 4, 16, 44, 54)
    )
    # The notifications the subscriptions bring are accepted for the connected user.
    form = b"userid=363&appli=1&startdate=1772355000&enddate=1772355600"
    delivered = setup.receiver.http.post(
        callback, content=form, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    # appli 1 announces weight and body temperature (meastype 71 is listed under it).
    assert delivered.status_code == 200 and delivered.json()["accepted"] == 2


def test_a_failed_withings_subscription_is_recorded_and_the_person_still_connected(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.withings.status = 2554
    _, done = setup.receiver.connect("withings")
    subject = subject_hash("withings", USER_IDS["withings"], salt=erasure_salt())
    assert done.status_code == 200 and done.json()["subject"] == subject
    rows = recorded(setup.receiver.store, "withings")
    assert [r.status for r in rows] == ["failed"] * 6
    assert "status 2554" in rows[0].detail and WITHINGS_TOKEN not in rows[0].detail
    assert "webhook subscription appli=1" in caplog.text
    # The log names the account by its salted subject, never by its id.
    assert f"account {subject[:12]} failed" in caplog.text
    assert not re.search(rf"(?<!\d){USER_IDS['withings']}(?!\d)", caplog.text)
    assert setup.receiver.store.user("withings", USER_IDS["withings"]) is not None


def test_connecting_oura_ensures_the_apps_subscriptions_once(setup: Setup) -> None:
    _, first = setup.receiver.connect("oura")
    assert first.status_code == 200
    rows = recorded(setup.receiver.store, "oura")
    assert len(rows) == ALL and {r.status for r in rows} == {"created"}
    assert len(setup.oura.subscriptions) == ALL
    callback = f"{setup.receiver.url}/webhooks/oura"
    assert {s["callback_url"] for s in setup.oura.subscriptions.values()} == {callback}
    # Another person connects: the app's subscriptions exist, nothing new is created.
    _, second = setup.receiver.connect("oura")
    assert second.status_code == 200
    assert len(setup.oura.subscriptions) == ALL
    assert {r.status for r in recorded(setup.receiver.store, "oura")} == {"active"}


def test_an_oura_outage_does_not_fail_the_connection(setup: Setup) -> None:
    setup.oura.client_secret = "rotated"  # every subscription call answers 401
    _, done = setup.receiver.connect("oura")
    assert done.status_code == 200
    [row] = recorded(setup.receiver.store, "oura")
    assert (row.target, row.status) == ("*", "failed") and "HTTP 401" in row.detail
    assert SECRET["oura"] not in row.detail


def test_google_health_needs_no_subscription(setup: Setup) -> None:
    _, done = setup.receiver.connect("google_health")
    assert done.status_code == 200
    assert recorded(setup.receiver.store) == []


def test_an_unmounted_withings_route_is_skipped_and_recorded(
    sqlite_store, providers, token_key
) -> None:
    with connect_receiver(sqlite_store, providers, withings_token=None) as setup:
        _, done = setup.receiver.connect("withings")
        assert done.status_code == 200
        [row] = recorded(sqlite_store, "withings")
        assert row.status == "skipped" and "OHX_WITHINGS_CALLBACK_TOKEN" in row.detail
        assert setup.withings.subscribed == []
        assert setup.receiver.http.get(f"{setup.receiver.url}/healthz", headers=JSON).is_success


def test_the_module_runs_as_a_cli(tmp_path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "OHX_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "ohx_dagster.providers.oura.subscriptions", "--provider", "oura"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "OHX_WEBHOOK_BASE_URL" in done.stderr and "Traceback" not in done.stderr


def test_even_a_crashing_subscription_step_leaves_the_connection_standing(
    sqlite_store, providers, token_key, monkeypatch, caplog
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("subscription step crashed")

    monkeypatch.setattr("ohx_dagster.receiver.connect.subscribe_after_connect", crash)
    with connect_receiver(sqlite_store, providers, withings_token=WITHINGS_TOKEN) as setup:
        _, done = setup.receiver.connect("withings")
    assert done.status_code == 200
    assert sqlite_store.user("withings", USER_IDS["withings"]) is not None
    assert "after-connect step failed" in caplog.text


def test_the_daily_dagster_job_renews_oura_and_fails_visibly(
    oura: FakeOura, oura_receiver: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resources import RecordStoreResource
    from sensors.subscriptions import oura_subscriptions_job

    database = f"sqlite:///{tmp_path / 'job.db'}"
    for name, value in {
        "OHX_OURA_CLIENT_ID": "oura-client",
        "OHX_OURA_CLIENT_SECRET": SECRET["oura"],
        "OHX_OURA_API_URL": oura.api.base_url,
        "OHX_OURA_VERIFICATION_TOKEN": VERIFY,
        "OHX_WEBHOOK_BASE_URL": oura_receiver,
    }.items():
        monkeypatch.setenv(name, value)
    resources = {"store": RecordStoreResource(database_url=database)}
    assert oura_subscriptions_job.execute_in_process(resources=resources).success
    assert len(oura.subscriptions) == ALL
    oura.subscriptions.clear()
    oura.reject.add("sleep")
    failed = oura_subscriptions_job.execute_in_process(resources=resources, raise_on_error=False)
    assert not failed.success
    store = RecordStore(database)
    try:
        statuses = {r.status for r in recorded(store, "oura")}
    finally:
        store.dispose()
    assert "failed" in statuses
