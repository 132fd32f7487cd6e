"""The webhook receiver over real HTTP: a uvicorn server on 127.0.0.1 (ephemeral port), httpx
clients, a SQLite store in tmp_path. Handshakes, signatures, replays, malformed and oversized
bodies, Withings users, group commit, the CLI and the simulated provider's sender."""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from ohx_dagster.errors import ConfigError
from ohx_dagster.inbox import Inbox
from ohx_dagster.models import HealthSyncConfig
from ohx_dagster.store import RecordStore
from ohx_dagster.webhooks import create_app, simulator
from ohx_dagster.webhooks.config import (
    SIMULATED_DEV_SECRET,
    FitbitSecrets,
    OuraSecrets,
    WebhookSecrets,
)
from ohx_dagster.webhooks.serve import serve_in_thread
from ohx_dagster.webhooks.signatures import (
    fitbit_signature,
    oura_signature,
    simulated_signature,
)

SECRETS = WebhookSecrets(
    fitbit=FitbitSecrets("fitbit-client-secret", "fitbit-verification-code"),
    oura=OuraSecrets("oura-client-secret", "oura-verification-token"),
    withings_token="withings-callback-token",
    simulated_secret="simulated-test-secret",
)
NOTHING = {"pending": 0, "dispatched": 0, "ignored": 0}
WHEN = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


@dataclass
class Receiver:
    url: str
    http: httpx.Client
    inbox: Inbox
    store: RecordStore
    app: object

    def post(self, route: str, body: bytes, headers: dict | None = None, **kw) -> httpx.Response:
        return self.http.post(f"{self.url}{route}", content=body, headers=headers or {}, **kw)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[RecordStore]:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    store.add_users([HealthSyncConfig(user_id="12345", provider="withings")])
    yield store
    store.dispose()


def start(store: RecordStore, secrets: WebhookSecrets = SECRETS, **options):
    app = create_app(store, secrets, **options)
    return app, serve_in_thread(app)


@pytest.fixture
def receiver(sqlite_store: RecordStore) -> Iterator[Receiver]:
    app, server = start(sqlite_store)
    with server as url, httpx.Client(timeout=10) as http:
        yield Receiver(url, http, app.state.inbox, sqlite_store, app)


def signed_oura(body: dict, stamp: float | None = None) -> tuple[bytes, dict]:
    raw = orjson.dumps(body)
    ts = str(int(time.time() if stamp is None else stamp))
    return raw, {
        "x-oura-timestamp": ts,
        "x-oura-signature": oura_signature("oura-client-secret", ts, raw),
    }


def signed_simulated(body: dict | bytes, stamp: float | None = None) -> tuple[bytes, dict]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    ts = str(int(time.time() if stamp is None else stamp))
    return raw, {
        "x-ohx-timestamp": ts,
        "x-ohx-signature": simulated_signature("simulated-test-secret", ts, raw),
    }


SIM_EVENT = {
    "event_id": "e-1",
    "user_id": "sim-001",
    "data_type": "heart_rate",
    "occurred_at": "2026-03-01T08:30:00+00:00",
}
FITBIT = [
    {
        "collectionType": "activities",
        "date": "2026-03-01",
        "ownerId": "228S74",
        "ownerType": "user",
        "subscriptionId": "1",
    }
]
OURA = {
    "event_type": "create",
    "data_type": "heartrate",
    "object_id": "8f9a",
    "user_id": "oura-u1",
    "event_time": "2026-03-01T08:59:30+00:00",
}


def test_healthz_and_unconfigured_providers_are_not_mounted(sqlite_store):
    _, server = start(sqlite_store, WebhookSecrets())
    with server as url:
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "providers": ["simulated"]}
        for provider in ("fitbit", "oura", "withings"):
            assert httpx.post(f"{url}/webhooks/{provider}", content=b"[]").status_code == 404
        assert httpx.get(f"{url}/webhooks/fitbit", params={"verify": "x"}).status_code == 404


def test_fitbit_verification_handshake(receiver):
    verify = f"{receiver.url}/webhooks/fitbit"
    assert (
        receiver.http.get(verify, params={"verify": "fitbit-verification-code"}).status_code == 204
    )
    assert receiver.http.get(verify, params={"verify": "wrong-code"}).status_code == 404
    assert receiver.http.get(verify).status_code == 404


def test_fitbit_signed_notification_is_stored_once_and_acknowledged_with_204(receiver):
    body = orjson.dumps(FITBIT)
    headers = {"X-Fitbit-Signature": fitbit_signature("fitbit-client-secret", body)}
    first = receiver.post("/webhooks/fitbit", body, headers)
    assert first.status_code == 204
    [stored] = receiver.inbox.after(0, 10)
    assert (stored.provider, stored.user_id, stored.data_type) == ("fitbit", "228S74", "steps")
    # Fitbit retries the same delivery: acknowledged again, stored once.
    assert receiver.post("/webhooks/fitbit", body, headers).status_code == 204
    assert receiver.inbox.counts()["pending"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Fitbit-Signature": fitbit_signature("another-secret", orjson.dumps(FITBIT))},
        {"X-Fitbit-Signature": fitbit_signature("fitbit-client-secret", b"[]")},
    ],
)
def test_fitbit_forged_notification_is_refused_and_not_stored(receiver, headers):
    response = receiver.post("/webhooks/fitbit", orjson.dumps(FITBIT), headers)
    assert response.status_code == 401
    assert "X-Fitbit-Signature" in response.json()["error"]
    assert receiver.inbox.counts() == NOTHING


def test_fitbit_revoked_access_is_recorded_as_ignored(receiver):
    body = orjson.dumps([{"collectionType": "userRevokedAccess", "ownerId": "228S74"}])
    headers = {"X-Fitbit-Signature": fitbit_signature("fitbit-client-secret", body)}
    assert receiver.post("/webhooks/fitbit", body, headers).status_code == 204
    assert receiver.inbox.counts() == {"pending": 0, "dispatched": 0, "ignored": 1}


def test_oura_verification_handshake(receiver):
    url = f"{receiver.url}/webhooks/oura"
    ok = receiver.http.get(
        url, params={"verification_token": "oura-verification-token", "challenge": "c-42"}
    )
    assert ok.status_code == 200 and ok.json() == {"challenge": "c-42"}
    wrong = receiver.http.get(url, params={"verification_token": "guess", "challenge": "c-42"})
    assert wrong.status_code == 401 and "challenge" not in wrong.text
    assert receiver.http.get(url, params={"challenge": "c-42"}).status_code == 401


def test_oura_signed_replayed_stale_and_future_deliveries(receiver):
    body, headers = signed_oura(OURA)
    first = receiver.post("/webhooks/oura", body, headers)
    assert first.status_code == 200 and first.json() == {"accepted": 1, "duplicates": 0}
    [stored] = receiver.inbox.after(0, 10)
    assert (stored.provider, stored.data_type) == ("oura", "heart_rate")
    assert stored.occurred_at == datetime(2026, 3, 1, 8, 59, 30, tzinfo=UTC)
    # A replay of the very same request inside the window: 2xx, no second row.
    replay = receiver.post("/webhooks/oura", body, headers)
    assert replay.status_code == 200 and replay.json() == {"accepted": 0, "duplicates": 1}
    # Correctly signed but outside the replay window, either side: refused, nothing stored.
    update = {**OURA, "event_type": "update"}
    for stamp in (time.time() - 600, time.time() + 600):
        raw, old = signed_oura(update, stamp)
        refused = receiver.post("/webhooks/oura", raw, old)
        assert refused.status_code == 401 and "replay window" in refused.json()["error"]
    raw, forged = signed_oura(update)
    forged["x-oura-signature"] = oura_signature("not-the-secret", forged["x-oura-timestamp"], raw)
    assert receiver.post("/webhooks/oura", raw, forged).status_code == 401
    assert receiver.inbox.counts()["pending"] == 1


def test_withings_needs_the_callback_token_and_a_known_user(receiver):
    assert receiver.http.head(f"{receiver.url}/webhooks/withings").status_code == 200
    form = b"userid=12345&appli=4&startdate=1772355000&enddate=1772355600"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    ok = receiver.post("/webhooks/withings?token=withings-callback-token", form, headers)
    assert ok.status_code == 200 and ok.json() == {"accepted": 3, "duplicates": 0}
    assert sorted(e.data_type for e in receiver.inbox.after(0, 10)) == [
        "blood_pressure",
        "heart_rate",
        "spo2",
    ]
    retry = receiver.post("/webhooks/withings?token=withings-callback-token", form, headers)
    assert retry.json() == {"accepted": 0, "duplicates": 3}
    for route in ("/webhooks/withings", "/webhooks/withings?token=withings-callback-tokeN"):
        assert receiver.post(route, form, headers).status_code == 401
    stranger = b"userid=99999&appli=1&startdate=1772355000&enddate=1772355600"
    refused = receiver.post("/webhooks/withings?token=withings-callback-token", stranger, headers)
    assert refused.status_code == 401 and "99999" in refused.json()["error"]
    assert receiver.inbox.counts()["pending"] == 3


def test_simulated_handshake_is_signed(receiver):
    url = f"{receiver.url}/webhooks/simulated"
    _, headers = signed_simulated(b"challenge-7")
    ok = receiver.http.get(url, params={"challenge": "challenge-7"}, headers=headers)
    assert ok.status_code == 200 and ok.json() == {"challenge": "challenge-7"}
    assert receiver.http.get(url, params={"challenge": "challenge-7"}).status_code == 401
    assert receiver.http.get(url, params={"challenge": "other"}, headers=headers).status_code == 401


def test_simulated_sender_posts_signed_events_and_replays_dedup(receiver):
    response = simulator.send_event(
        receiver.url, "simulated-test-secret", "sim-001", "heart_rate", WHEN, event_id="e-9"
    )
    assert response.status_code == 200 and response.json() == {"accepted": 1, "duplicates": 0}
    again = simulator.send_event(
        receiver.url, "simulated-test-secret", "sim-001", "heart_rate", WHEN, event_id="e-9"
    )
    assert again.status_code == 200 and again.json() == {"accepted": 0, "duplicates": 1}
    forged = simulator.send_event(receiver.url, "wrong-secret", "sim-001", "steps", WHEN)
    assert forged.status_code == 401
    raw, stale = signed_simulated({**SIM_EVENT, "event_id": "e-old"}, time.time() - 301)
    assert receiver.post("/webhooks/simulated", raw, stale).status_code == 401
    [stored] = receiver.inbox.after(0, 10)
    assert (stored.event_key, stored.user_id, stored.occurred_at) == ("e-9", "sim-001", WHEN)


def test_simulator_rounds_reach_the_receiver(receiver):
    users = ["sim-001", "sim-002"]
    # A second apart: each round's events are new (ids are stable per user, type and second).
    simulator.run(receiver.url, "simulated-test-secret", users, every_s=1.0, rounds=2)
    events = receiver.inbox.after(0, 100)
    assert len(events) == 2 * len(users) * 3
    assert {e.user_id for e in events} == set(users)
    assert {"heart_rate", "steps"} <= {e.data_type for e in events}


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/webhooks/simulated", b"{oops", "body"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "data_type": "mood"}), "data_type"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "user_id": ""}), "user_id"),
        ("/webhooks/simulated", orjson.dumps({k: 1 for k in ("event_id",)}), "user_id"),
        ("/webhooks/simulated", orjson.dumps([SIM_EVENT]), "body"),
        ("/webhooks/oura", orjson.dumps({**OURA, "data_type": "mood"}), "data_type"),
        ("/webhooks/oura", orjson.dumps({**OURA, "object_id": None}), "object_id"),
        (
            "/webhooks/fitbit",
            orjson.dumps([{**FITBIT[0], "collectionType": "x"}]),
            "collectionType",
        ),
        ("/webhooks/withings?token=withings-callback-token", b"userid=12345&appli=x", "appli"),
        ("/webhooks/withings?token=withings-callback-token", b"\xff\xfe", "body"),
    ],
)
def test_malformed_authenticated_bodies_get_400_naming_the_field_and_store_nothing(
    receiver, route, body, field
):
    if route.startswith("/webhooks/simulated"):
        _, headers = signed_simulated(body)
    elif route.startswith("/webhooks/oura"):
        ts = str(int(time.time()))
        headers = {
            "x-oura-timestamp": ts,
            "x-oura-signature": oura_signature("oura-client-secret", ts, body),
        }
    elif route.startswith("/webhooks/fitbit"):
        headers = {"X-Fitbit-Signature": fitbit_signature("fitbit-client-secret", body)}
    else:
        headers = {}
    response = receiver.post(route, body, headers)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert receiver.inbox.counts() == NOTHING


def test_oversized_bodies_get_413_and_store_nothing(receiver):
    big = orjson.dumps({**SIM_EVENT, "padding": "x" * 300_000})
    raw, headers = signed_simulated(big)
    declared = receiver.post("/webhooks/simulated", raw, headers)
    assert declared.status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield b"x" * 10_000

    streamed = receiver.http.post(
        f"{receiver.url}/webhooks/simulated", content=chunks(), headers=headers
    )
    assert streamed.status_code == 413
    assert "262144" in streamed.json()["error"]
    assert receiver.http.get(f"{receiver.url}/healthz").status_code == 200
    assert receiver.inbox.counts() == NOTHING


def test_413_answer_is_seen_by_a_client_that_declares_the_size(sqlite_store):
    app, server = start(sqlite_store, max_body_bytes=1024)
    with server as url:
        raw, headers = signed_simulated(orjson.dumps({**SIM_EVENT, "pad": "x" * 2000}))
        response = httpx.post(f"{url}/webhooks/simulated", content=raw, headers=headers)
        assert response.status_code == 413
        assert app.state.inbox.counts() == NOTHING


@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_deliveries_are_all_committed_once(sqlite_store, group_commit):
    app, server = start(sqlite_store, group_commit=group_commit)
    total = 240

    def deliver(i: int) -> int:
        raw, headers = signed_simulated({**SIM_EVENT, "event_id": f"c-{i % (total // 2)}"})
        return http.post(f"{url}/webhooks/simulated", content=raw, headers=headers).status_code

    with server as url, httpx.Client(timeout=10) as http, ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(deliver, range(total)))
    assert statuses == [200] * total
    events = app.state.inbox.after(0, 1_000)
    assert sorted(e.event_key for e in events) == sorted(f"c-{i}" for i in range(total // 2))
    if group_commit:  # concurrent requests shared transactions
        assert 0 < app.state.committer.transactions < total


def test_inbox_failure_is_503_so_the_provider_retries(receiver):
    with receiver.store.write() as conn:
        conn.exec_driver_sql("DROP TABLE webhook_inbox")
    raw, headers = signed_simulated(SIM_EVENT)
    response = receiver.post("/webhooks/simulated", raw, headers)
    assert response.status_code == 503


def test_secrets_from_env():
    assert WebhookSecrets.from_env({}).mounted == {
        "fitbit": False,
        "oura": False,
        "withings": False,
        "simulated": True,
    }
    assert WebhookSecrets.from_env({}).simulated_secret == SIMULATED_DEV_SECRET
    full = WebhookSecrets.from_env(
        {
            "OHX_WEBHOOK_FITBIT_SECRET": "fitbit-secret",
            "OHX_WEBHOOK_FITBIT_VERIFY": "fitbit-verify",
            "OHX_OURA_CLIENT_SECRET": "oura-secret",
            "OHX_OURA_VERIFICATION_TOKEN": "oura-token",
            "OHX_WITHINGS_CALLBACK_TOKEN": "withings-token",
            "OHX_SIMULATED_WEBHOOK_SECRET": "simulated-secret",
        }
    )
    assert all(full.mounted.values())
    assert full.fitbit == FitbitSecrets("fitbit-secret", "fitbit-verify")
    with pytest.raises(ConfigError, match="OHX_WEBHOOK_FITBIT_VERIFY"):
        WebhookSecrets.from_env({"OHX_WEBHOOK_FITBIT_SECRET": "fitbit-secret"})
    with pytest.raises(ConfigError, match="OHX_OURA_CLIENT_SECRET"):
        WebhookSecrets.from_env({"OHX_OURA_VERIFICATION_TOKEN": "oura-token"})
    # The OAuth app's secret alone (API sync without webhooks) starts, Oura unmounted.
    api_only = WebhookSecrets.from_env({"OHX_OURA_CLIENT_SECRET": "oura-secret"})
    assert api_only.mounted["oura"] is False
    with pytest.raises(ConfigError, match="OHX_WITHINGS_CALLBACK_TOKEN"):
        WebhookSecrets.from_env({"OHX_WITHINGS_CALLBACK_TOKEN": "short"})
    with pytest.raises(ConfigError, match="OHX_SIMULATED_WEBHOOK_SECRET"):
        WebhookSecrets.from_env({"OHX_SIMULATED_WEBHOOK_SECRET": ""})


def test_cli_serves_the_store_from_the_environment(tmp_path):
    env = {
        **os.environ,
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "OHX_SIMULATED_WEBHOOK_SECRET": "simulated-test-secret",
    }
    env.pop("OHX_WEBHOOK_FITBIT_SECRET", None)
    bad = subprocess.run(
        [sys.executable, "-m", "ohx_dagster.webhooks.cli", "--port", "0"],
        env={**env, "OHX_WEBHOOK_FITBIT_SECRET": "fitbit-secret"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "OHX_WEBHOOK_FITBIT_VERIFY" in bad.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "ohx_dagster.webhooks.cli", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = []
        for line in process.stderr:
            log.append(line)
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
        else:
            pytest.fail("".join(log))
        assert any("not mounted /webhooks/fitbit" in line for line in log)
        assert httpx.get(f"{url}/healthz").json()["providers"] == ["simulated"]
        sent = simulator.send_event(url, "simulated-test-secret", "sim-001", "steps", WHEN)
        assert sent.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    store = RecordStore(env["OHX_DATABASE_URL"])
    assert [e.data_type for e in Inbox(store).after(0, 10)] == ["steps"]
    store.dispose()
