"""The webhook receiver over real HTTP: a uvicorn server on 127.0.0.1 (ephemeral port), httpx
clients, a SQLite store in tmp_path (and PostgreSQL where the database matters). Handshakes,
signatures, replays, malformed and oversized bodies, Withings users, development-only routes,
input limits, group commit and its fallback, the rate limit per client address, the CLI and the
simulated provider's sender."""

import asyncio
import logging
import os
import random
import re
import socket
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
import psycopg2
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from ohx_dagster.config.receiver import OuraSecrets, ReceiverLimits, WebhookSecrets
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.providers.oura.webhook import signature as oura_signature
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.signatures import simulated_signature
from ohx_dagster.receiver import cli, simulator
from ohx_dagster.receiver.app import GroupCommitter, TokenBuckets, client_address, create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox

SECRETS = WebhookSecrets(
    oura=OuraSecrets("oura-client-secret", "oura-verification-token"),
    withings_token="withings-callback-token",
    simulated_secret="simulated-test-secret",
)
PRODUCTION = WebhookSecrets(oura=SECRETS.oura, withings_token=SECRETS.withings_token)
NO_RATE_LIMIT = ReceiverLimits(rate_per_minute=0)
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


def start(
    store: RecordStore,
    secrets: WebhookSecrets = SECRETS,
    limits: ReceiverLimits | None = None,
    **options,
):
    """The app and its server with the same limits (the defaults: production's)."""
    limits = limits or ReceiverLimits()
    app = create_app(store, secrets, limits=limits, **options)
    return app, serve_in_thread(app, limits=limits)


@pytest.fixture
def receiver(sqlite_store: RecordStore) -> Iterator[Receiver]:
    app, server = start(sqlite_store)
    with server as url, httpx.Client(timeout=10) as http:
        yield Receiver(url, http, app.state.inbox, sqlite_store, app)


def signed_oura(body: dict | bytes, stamp: float | None = None) -> tuple[bytes, dict]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
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
OURA = {
    "event_type": "create",
    "data_type": "workout",
    "object_id": "8f9a",
    "user_id": "oura-u1",
    "event_time": "2026-03-01T08:59:30+00:00",
}


def test_healthz_and_unconfigured_providers_are_not_mounted(sqlite_store):
    _, server = start(sqlite_store, WebhookSecrets())
    with server as url:
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "providers": []}
        for provider in ("fitbit", "oura", "withings", "simulated"):
            assert httpx.post(f"{url}/webhooks/{provider}", content=b"[]").status_code == 404
        assert httpx.get(f"{url}/webhooks/fitbit", params={"verify": "x"}).status_code == 404


def test_simulated_route_exists_only_when_its_secret_is_configured(sqlite_store):
    """No default secret: without OHX_SIMULATED_WEBHOOK_SECRET the development route does not
    exist, so events signed with the old public development secret, or any other, are 404."""
    assert WebhookSecrets.from_env({}).simulated_secret is None
    app, server = start(sqlite_store, PRODUCTION)
    with server as url, httpx.Client(timeout=10) as http:
        assert http.get(f"{url}/healthz").json()["providers"] == ["oura", "withings"]
        answers = [
            simulator.send_event(url, secret, "sim-001", "steps", WHEN, client=http).status_code
            for i in range(50)
            for secret in ("ohx-dev-simulated-secret", f"guessed-secret-{i}")
        ]
        _, headers = signed_simulated(b"c-1")
        handshake = http.get(
            f"{url}/webhooks/simulated", params={"challenge": "c-1"}, headers=headers
        )
    assert answers == [404] * 100
    assert handshake.status_code == 404
    assert app.state.inbox.counts() == NOTHING


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


def test_oura_unknown_data_types_are_acknowledged_and_stored_as_ignored(receiver):
    """`meal`, `daily_cycle_phases` and types Oura adds later: 2xx (an error invites retries and
    risks the subscription), kept in the inbox as ignored with the reason, no run."""
    changes = [
        {"data_type": "meal"},
        {"data_type": "daily_cycle_phases"},
        {"data_type": "workout", "event_type": "upsert"},
    ]
    for change in changes:
        answer = receiver.post("/webhooks/oura", *signed_oura({**OURA, **change}))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": 1, "duplicates": 0}
    assert receiver.inbox.counts() == {"pending": 0, "dispatched": 0, "ignored": 3}
    assert receiver.inbox.after(0, 10) == [] and receiver.inbox.for_sensor(0, 10) == []
    with receiver.store.read() as conn:
        rows = conn.execute(
            sa.text("SELECT data_type, status, reason FROM webhook_inbox ORDER BY id")
        ).all()
    assert [(kind, status) for kind, status, _ in rows] == [(None, "ignored")] * 3
    assert "oura meal" in rows[0].reason and "'daily_cycle_phases'" in rows[1].reason
    assert "'upsert'" in rows[2].reason


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
    assert refused.status_code == 401 and "99999" not in refused.json()["error"]
    assert subject_hash("withings", "99999", salt=erasure_salt())[:12] in refused.json()["error"]
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


def test_simulator_needs_a_secret_and_reads_it_from_the_environment(
    receiver, tmp_path, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="ohx_dagster.receiver.simulator")
    monkeypatch.setenv("OHX_HOME", str(tmp_path))
    monkeypatch.setenv("OHX_SIMULATED_USERS", "1")
    monkeypatch.delenv("OHX_SIMULATED_WEBHOOK_SECRET", raising=False)
    argv = ["--url", receiver.url, "--rounds", "1"]
    assert simulator.main(argv) == 2
    assert "OHX_SIMULATED_WEBHOOK_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("OHX_SIMULATED_WEBHOOK_SECRET", "simulated-test-secret")
    assert simulator.main(argv) == 0
    assert "round 0: 3 acknowledged, 0 failed" in caplog.messages
    assert len(receiver.inbox.after(0, 100)) == 3  # one user: heart rate, steps, one more
    monkeypatch.setenv("OHX_SIMULATED_WEBHOOK_SECRET", "not-the-receivers-secret")
    caplog.clear()
    assert simulator.main(argv) == 0
    assert "round 0: 0 acknowledged, 3 failed" in caplog.messages
    caplog.clear()
    assert simulator.main([*argv, "--secret", "simulated-test-secret"]) == 0  # the flag wins
    assert "round 0: 3 acknowledged, 0 failed" in caplog.messages


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/webhooks/simulated", b"{oops", "body"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "data_type": "mood"}), "data_type"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "user_id": ""}), "user_id"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "user_id": "u" * 200}), "user_id"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "user_id": "u\x00"}), "user_id"),
        ("/webhooks/simulated", orjson.dumps({**SIM_EVENT, "event_id": "e" * 513}), "event_key"),
        ("/webhooks/simulated", orjson.dumps({k: 1 for k in ("event_id",)}), "user_id"),
        ("/webhooks/simulated", orjson.dumps([SIM_EVENT]), "body"),
        ("/webhooks/oura", b"not json", "body"),
        (
            "/webhooks/oura",
            orjson.dumps({k: v for k, v in OURA.items() if k != "user_id"}),
            "user_id",
        ),
        ("/webhooks/oura", orjson.dumps({**OURA, "object_id": None}), "object_id"),
        ("/webhooks/oura", orjson.dumps({**OURA, "user_id": "o" * 129}), "user_id"),
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
        _, headers = signed_oura(body)
    else:
        headers = {}
    response = receiver.post(route, body, headers)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert len(response.text) < 600  # a long value is cut in the answer
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
    app, server = start(sqlite_store, limits=NO_RATE_LIMIT, group_commit=group_commit)
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


# -- one bad request never fails its neighbours ------------------------------------------------


def refuse_user_ids(store: RecordStore, prefix: str) -> None:
    """Make the database itself refuse rows whose user_id starts with `prefix`: a value the
    receiver's checks cannot know about (a constraint added later, a corrupt row), so that the
    shared transaction of a group commit really fails in the database."""
    with store.write() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE webhook_inbox ADD CONSTRAINT ck_test_refused "
                f"CHECK (left(user_id, {len(prefix)}) <> '{prefix}')"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER test_refused BEFORE INSERT ON webhook_inbox "
                f"WHEN substr(NEW.user_id, 1, {len(prefix)}) = '{prefix}' "
                "BEGIN SELECT RAISE(ABORT, 'refused user id'); END"
            )


def test_long_user_ids_get_400_and_never_fail_the_valid_webhooks_beside_them(store):
    """On SQLite and PostgreSQL: 480 concurrent valid webhooks mixed with bad ones all succeed.
    Values longer than the inbox holds are 400 before the database sees them; a row the database
    itself refuses fails its own request only (its group transaction is redone one by one)."""
    app, server = start(store, limits=NO_RATE_LIMIT)
    refuse_user_ids(store, "refused")
    valid = [{**SIM_EVENT, "event_id": f"v-{i}", "user_id": f"sim-{i % 7}"} for i in range(480)]
    too_long = [{**SIM_EVENT, "event_id": f"l-{i}", "user_id": "u" * 200} for i in range(24)]
    nul = [{**SIM_EVENT, "event_id": f"n-{i}", "user_id": "sim\x00"} for i in range(8)]
    refused = [{**SIM_EVENT, "event_id": f"r-{i}", "user_id": f"refused-{i}"} for i in range(24)]
    jobs = [(body, 200) for body in valid]
    jobs += [(body, 400) for body in too_long + nul]
    jobs += [(body, 503) for body in refused]
    jobs += [(b"{not json", 400)] * 8
    random.Random(3).shuffle(jobs)

    def deliver(job: tuple[dict | bytes, int]) -> tuple[int, int, str]:
        raw, headers = signed_simulated(job[0])
        answer = http.post(f"{url}/webhooks/simulated", content=raw, headers=headers)
        return job[1], answer.status_code, answer.text

    with server as url, httpx.Client(timeout=30) as http, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(deliver, jobs))
        raw, headers = signed_simulated({**SIM_EVENT, "user_id": "u" * 200})
        single = http.post(f"{url}/webhooks/simulated", content=raw, headers=headers)
    wrong = [(expected, got, text[:80]) for expected, got, text in answers if expected != got]
    assert wrong == []
    assert single.status_code == 400 and single.json()["field"] == "user_id"
    stored = app.state.inbox.after(0, 1_000)
    assert sorted(e.event_key for e in stored) == sorted(body["event_id"] for body in valid)
    assert app.state.committer.transactions < len(valid)  # requests did share transactions


def _event(key: str, user: str = "sim-001") -> NewEvent:
    return NewEvent("simulated", key, user, "heart_rate", WHEN, {"event_id": key})


def test_a_failed_group_transaction_is_redone_one_request_at_a_time(store):
    inbox = Inbox(store)
    refuse_user_ids(store, "refused")
    committer = GroupCommitter(inbox)

    async def together():  # queued before the first commit starts: one shared transaction
        return await asyncio.gather(
            committer.add([_event("a"), _event("b")]),
            committer.add([_event("r", user="refused-1")]),
            committer.add([_event("b"), _event("c")]),
            return_exceptions=True,
        )

    first, refused, third = asyncio.run(together())
    assert (first, third) == (2, 1)  # "b" was new for the first request only
    assert isinstance(refused, IntegrityError)
    assert (committer.fallbacks, committer.transactions) == (1, 2)
    assert sorted(e.event_key for e in inbox.after(0, 10)) == ["a", "b", "c"]


def take_database_down(store: RecordStore, request: pytest.FixtureRequest) -> None:
    if store.engine.dialect.name == "sqlite":
        with store.write() as conn:
            conn.exec_driver_sql("DROP TABLE webhook_inbox")
        return
    admin = sa.make_url(request.getfixturevalue("pg_url"))
    name = store.engine.url.database
    connection = psycopg2.connect(
        dbname=admin.database, user=admin.username, host=admin.query["host"]
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    connection.close()


def test_a_database_outage_fails_every_waiting_request_at_once(store, request):
    """Down is down: no request is retried on its own (each try could wait for a timeout)."""
    inbox = Inbox(store)
    committer = GroupCommitter(inbox)
    take_database_down(store, request)

    async def together():
        return await asyncio.gather(
            *(committer.add([_event(f"k{i}")]) for i in range(5)), return_exceptions=True
        )

    outcomes = asyncio.run(together())
    assert all(isinstance(o, OperationalError) for o in outcomes), outcomes
    assert (committer.fallbacks, committer.transactions) == (0, 0)


def test_inbox_failure_is_503_so_the_provider_retries(receiver):
    with receiver.store.write() as conn:
        conn.exec_driver_sql("DROP TABLE webhook_inbox")
    raw, headers = signed_simulated(SIM_EVENT)
    response = receiver.post("/webhooks/simulated", raw, headers)
    assert response.status_code == 503


# -- rate limit per client address -------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_per_client_address(sqlite_store):
    limits = ReceiverLimits(rate_per_minute=30, rate_burst=3)  # then one request per 2 s
    app, server = start(sqlite_store, limits=limits)
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with (
        server as url,
        httpx.Client(timeout=10) as first,
        httpx.Client(timeout=10, transport=other) as second,
    ):

        def post(client: httpx.Client, key: str, **headers: str) -> httpx.Response:
            raw, signed = signed_simulated({**SIM_EVENT, "event_id": key})
            return client.post(
                f"{url}/webhooks/simulated", content=raw, headers={**signed, **headers}
            )

        assert [post(first, f"a{i}").status_code for i in range(3)] == [200] * 3
        refused = post(first, "a3")
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 2
        # Without a trusted proxy X-Forwarded-For is ignored: a client cannot pick an address.
        assert post(first, "a4", **{"x-forwarded-for": "203.0.113.7"}).status_code == 429
        assert first.get(f"{url}/healthz").status_code == 200  # health checks are exempt
        assert post(second, "b0").status_code == 200  # another address is served meanwhile
        time.sleep(wait)
        assert post(first, "a5").status_code == 200
    keys = {e.event_key for e in app.state.inbox.after(0, 100)}
    assert keys == {"a0", "a1", "a2", "b0", "a5"}


def test_rate_limit_keys_on_x_forwarded_for_only_from_trusted_proxies(sqlite_store):
    limits = ReceiverLimits(rate_per_minute=1, rate_burst=2, trusted_proxies=("127.0.0.1",))
    _, server = start(sqlite_store, limits=limits)
    untrusted = httpx.HTTPTransport(local_address="127.0.0.2")
    with (
        server as url,
        httpx.Client(timeout=10) as proxy,
        httpx.Client(timeout=10, transport=untrusted) as direct,
    ):

        def statuses(client: httpx.Client, forwarded_for: str, count: int) -> list[int]:
            headers = {"x-forwarded-for": forwarded_for}
            return [
                client.post(f"{url}/webhooks/none", headers=headers).status_code
                for _ in range(count)
            ]

        # Through the trusted proxy: one bucket per forwarded client (404: no such route).
        assert statuses(proxy, "198.51.100.1", 3) == [404, 404, 429]
        assert statuses(proxy, "198.51.100.2", 2) == [404, 404]
        assert statuses(proxy, "198.51.100.9, 198.51.100.1", 1) == [429]  # the proxy's entry
        # Straight from an untrusted address, rotating the header changes nothing.
        rotated = [statuses(direct, f"10.0.0.{i}", 1)[0] for i in range(3)]
        assert rotated == [404, 404, 429]


def test_token_buckets_refill_and_say_when_to_retry(caplog):
    now = [1_000.0]
    buckets = TokenBuckets(per_minute=60, burst=2, clock=lambda: now[0], max_addresses=3)
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(1.0)
    now[0] += 0.25
    assert buckets.take("a") == pytest.approx(0.75)  # a refused request takes nothing
    assert buckets.take("b") == 0.0  # another address has its own bucket
    now[0] += 0.75
    assert buckets.take("a") == 0.0
    # One warning per address and episode of refusals, not one per refused request.
    assert [r.getMessage()[:2] for r in caplog.records if r.levelname == "WARNING"] == ["a "]
    now[0] += 60
    assert [buckets.take("a"), buckets.take("a"), buckets.take("a")][-1] > 0  # burst is the cap
    for address in ("c", "d", "e"):  # at most 3 remembered: the least recently seen go
        buckets.take(address)
    assert buckets.take("a") == 0.0


@pytest.mark.parametrize(
    ("client", "key"),
    [
        (("203.0.113.9", 50000), "203.0.113.9"),
        (("2001:db8:1:2:aaaa::1", 1), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::7", 1), "2001:db8:1:2::/64"),  # same /64, same bucket
        (("::ffff:203.0.113.9", 1), "203.0.113.9"),
        (("unix-socket", 0), "unix-socket"),
        (None, "unknown"),
    ],
)
def test_client_address_is_the_rate_limit_key(client, key):
    assert client_address({"type": "http", "client": client}) == key


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"OHX_OURA_VERIFICATION_TOKEN": "oura-token"}, [], "OHX_OURA_CLIENT_SECRET"),
        ({"OHX_SIMULATED_WEBHOOK_SECRET": "short"}, [], "OHX_SIMULATED_WEBHOOK_SECRET"),
        ({"OHX_WEBHOOK_BODY_TIMEOUT_S": "-1"}, [], "OHX_WEBHOOK_BODY_TIMEOUT_S"),
        ({"OHX_WEBHOOK_MAX_CONNECTIONS": "0"}, [], "OHX_WEBHOOK_MAX_CONNECTIONS"),
        ({}, ["--rate-per-minute", "lots"], "--rate-per-minute"),
        ({}, ["--trusted-proxies", "*"], "--trusted-proxies"),
    ],
)
def test_cli_refuses_a_bad_setting_naming_it(tmp_path, monkeypatch, capsys, env, args, named):
    monkeypatch.setenv("OHX_HOME", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["--port", "0", *args]) == 2
    assert named in capsys.readouterr().err


def test_cli_serves_the_store_from_the_environment(tmp_path):
    env = {
        **os.environ,
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "OHX_SIMULATED_WEBHOOK_SECRET": "simulated-test-secret",
        "OHX_WEBHOOK_HEADER_TIMEOUT_S": "30",
    }
    env.pop("OHX_OURA_CLIENT_SECRET", None)
    # The flag wins over the variable: a connection that sends nothing is closed after 0.5 s.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ohx_dagster.receiver.cli",
            "--port",
            "0",
            "--header-timeout",
            "0.5",
        ],
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
        assert any("not mounted /webhooks/oura" in line for line in log)
        assert any("/webhooks/simulated is a development route" in line for line in log)
        assert any("head 0.5 s" in line for line in log)
        assert httpx.get(f"{url}/healthz").json()["providers"] == ["simulated"]
        sent = simulator.send_event(url, "simulated-test-secret", "sim-001", "steps", WHEN)
        assert sent.status_code == 200
        address = httpx.URL(url)
        with socket.create_connection((address.host, address.port), timeout=10) as silent:
            started = time.monotonic()
            answer = silent.recv(1024)
            assert silent.recv(1024) == b""
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert 0.4 < time.monotonic() - started < 5
    finally:
        process.terminate()
        process.wait(timeout=30)
    store = RecordStore(env["OHX_DATABASE_URL"])
    assert [e.data_type for e in Inbox(store).after(0, 10)] == ["steps"]
    store.dispose()
