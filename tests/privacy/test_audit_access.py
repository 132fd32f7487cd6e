"""The audit log records refused staff credentials and every FHIR export (issue 19).

- Refused staff authentication, through the real receiver (uvicorn on 127.0.0.1): at /connect
  (no, malformed, unknown, wrong, revoked, another name's and URL-borne tokens) and at the
  proxy's /auth/staff, under the staff member the token names or "unknown", never with the
  token; a flood of them is a bounded number of rows (one at once and one summary per interval
  and source).
- Exports: publishing NDJSON (one row per person of a committed bucket; failed rows for a bucket
  that did not validate) and delivery to a FHIR server (one row per person of each transaction,
  ok or failed), the person as their salted subject, never in clear.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fhir_test_server import FhirServer, running_fhir_server

from ohx_dagster.config.receiver import ReceiverLimits, WebhookSecrets
from ohx_dagster.fhir.delivery.auth import BearerToken
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import enqueue, owner
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.privacy import audit, staff
from ohx_dagster.privacy.audit import RefusedRows
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig, connectable
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.schema import audit_log
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

ENV = {
    "OHX_OAUTH_REDIRECT_BASE": "https://ohx.example.org",
    "OHX_OURA_CLIENT_ID": "oura-client",
    "OHX_OURA_CLIENT_SECRET": "oura-client-SECRET",
}
PATIENT = "patient-in-clear-4711"


def subject(provider: str, user_id: str) -> str:
    return subject_hash(provider, user_id, salt=erasure_salt())


def every_value(store: RecordStore) -> str:
    with store.read() as conn:
        return " ".join(str(v) for row in conn.execute(sa.select(audit_log)) for v in row)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Receiver:
    def __init__(self, url: str, store: RecordStore, rows: RefusedRows, clock: Clock) -> None:
        self.url, self.store, self.rows, self.clock = url, store, rows, clock
        self.http = httpx.Client(timeout=10)

    def connect(self, **kw: object) -> httpx.Response:
        params = {"patient": PATIENT, **kw.pop("params", {})}  # type: ignore[dict-item]
        return self.http.get(f"{self.url}/connect/oura", params=params, **kw)  # type: ignore[arg-type]

    def refused(self, action: str = "connect") -> list[audit.AuditRow]:
        return [r for r in audit.read(self.store, action=action) if r.outcome == "refused"]


@pytest.fixture
def receiver(sqlite_store: RecordStore, token_key: str) -> Iterator[Receiver]:
    clock = Clock()
    rows = RefusedRows(sqlite_store, clock=clock)
    config = ConnectConfig(connectable(ENV))
    app = create_app(
        sqlite_store,
        WebhookSecrets(),
        connect=config,
        refused_rows=rows,
        limits=ReceiverLimits(rate_per_minute=0),
    )
    with serve_in_thread(app) as url:
        receiver = Receiver(url, sqlite_store, rows, clock)
        yield receiver
        receiver.http.close()


# -- refused staff credentials -------------------------------------------------------------------


def test_refused_staff_credentials_at_connect_are_audited_by_whom_the_token_names(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = receiver.store
    nurse = staff.add(store, "nurse.a", actor="test")
    gone = staff.add(store, "b.jones", actor="test")
    assert staff.remove(store, "b.jones", actor="test")
    nurse_id, gone_id = nurse.split("_")[1], gone.split("_")[1]
    wrong_secret = nurse[:-1] + ("A" if nurse[-1] != "A" else "B")
    never_issued = "ohxs_0123456789ab_" + "x" * 43
    cases = [
        ({}, "unknown", staff.NO_CREDENTIALS, ""),
        ({"headers": {"Authorization": "Bearer not-a-token"}}, "unknown", staff.MALFORMED, ""),
        (
            {"headers": {"Authorization": f"Bearer {never_issued}"}},
            "unknown",
            staff.UNKNOWN,
            "0123456789ab",
        ),
        (
            {"headers": {"Authorization": f"Bearer {wrong_secret}"}},
            "nurse.a",
            staff.WRONG_SECRET,
            nurse_id,
        ),
        ({"headers": {"Authorization": f"Bearer {gone}"}}, "b.jones", staff.REVOKED, gone_id),
        ({"auth": ("someone.else", nurse)}, "nurse.a", staff.OTHER_NAME, nurse_id),
        ({"params": {"token": nurse}}, "nurse.a", staff.IN_URL, nurse_id),
    ]
    for request, actor, reason, token_id in cases:
        receiver.clock.now += 61  # a new interval: each refusal gets its own row
        answer = receiver.connect(**request)
        assert answer.status_code in (400, 401), answer.text
        last = receiver.refused()[-1]
        assert (last.actor, last.subject) == (actor, "")
        assert last.detail.startswith(f"GET /connect/oura: {reason}"), last.detail
        assert ("(token " in last.detail) == bool(token_id), last.detail
        assert f"(token {token_id})" in last.detail or not token_id, last.detail
        assert "from 127.0.0.1" in last.detail
    assert len(receiver.refused()) == len(cases)
    # The staff member's own valid token still connects: nothing refused, nothing added.
    ok = receiver.connect(headers={"Authorization": f"Bearer {nurse}"})
    assert ok.status_code == 302
    assert len(receiver.refused()) == len(cases)
    # Never a token, a secret or the patient in the audit log or a log line.
    text = every_value(store)
    # The receiver's records (the test's own HTTP client logs the URLs it requests).
    logged = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    )
    for secret in (nurse, gone, wrong_secret, never_issued, nurse.split("_", 2)[2], PATIENT):
        assert secret not in text and secret not in logged


def test_the_proxys_check_is_audited_for_connect_and_for_wrong_ui_credentials(
    receiver: Receiver,
) -> None:
    store = receiver.store
    nurse = staff.add(store, "nurse.a", actor="test")
    check = f"{receiver.url}/auth/staff"
    guarding_connect = {"X-OHX-Original-URI": f"/connect/oura?patient={PATIENT}"}
    assert receiver.http.get(check, headers=guarding_connect).status_code == 401
    (row,) = receiver.refused("connect")
    assert row.actor == "unknown"
    assert row.detail.startswith(f"the proxy's check for GET /connect/oura: {staff.NO_CREDENTIALS}")
    # The UI: no credentials is the login prompt every browser gets first, not an attempt.
    receiver.clock.now += 61
    assert receiver.http.get(check, headers={"X-OHX-Original-URI": "/runs"}).status_code == 401
    assert receiver.http.get(check).status_code == 401
    assert receiver.refused("sign-in") == []
    wrong = receiver.http.get(check, auth=("nurse.a", nurse[:-2] + "zz"))
    assert wrong.status_code == 401
    (ui,) = receiver.refused("sign-in")
    assert ui.actor == "nurse.a"
    assert ui.detail.startswith(f"the proxy's check for the Dagster UI: {staff.WRONG_SECRET}")
    # A provider that is not ours is not repeated from the client's path.
    receiver.clock.now += 61
    odd = {"X-OHX-Original-URI": "/connect/<script>"}
    assert receiver.http.get(check, headers=odd).status_code == 401
    assert "<script>" not in receiver.refused("connect")[-1].detail
    assert receiver.http.get(check, auth=("nurse.a", nurse)).status_code == 204
    assert len(audit.read(store, action="sign-in")) == 1
    assert PATIENT not in every_value(store)


def test_a_flood_of_refused_credentials_is_a_bounded_number_of_rows(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ohx_dagster")
    store = receiver.store
    nurse = staff.add(store, "nurse.a", actor="test")
    bent = nurse[:-1] + ("A" if nurse[-1] != "A" else "B")
    flood = 150
    for i in range(flood):
        headers = {"Authorization": f"Bearer forged-{i}"} if i % 2 else {}
        assert receiver.connect(headers=headers).status_code == 401
    for _ in range(5):
        assert receiver.connect(headers={"Authorization": f"Bearer {bent}"}).status_code == 401
    # In the interval: one row per source (the unknown, and the staff member the token names).
    rows = receiver.refused()
    assert [(r.actor, r.detail.split(" (token")[0]) for r in rows] == [
        ("unknown", f"GET /connect/oura: {staff.NO_CREDENTIALS} from 127.0.0.1"),
        ("nurse.a", f"GET /connect/oura: {staff.WRONG_SECRET}"),
    ]
    # The interval ends: one summary row per source, counting why.
    receiver.clock.now += 61
    receiver.rows.tick()
    rows = receiver.refused()
    assert len(rows) == 4
    summaries = {r.actor: r.detail for r in rows[2:]}
    assert summaries["unknown"].startswith(f"{flood - 1} more refused in the last 61 s")
    assert f"{staff.NO_CREDENTIALS}: {flood // 2 - 1}" in summaries["unknown"]
    assert f"{staff.MALFORMED}: {flood // 2}" in summaries["unknown"]
    assert "from 127.0.0.1" in summaries["unknown"]
    assert summaries["nurse.a"].startswith("4 more refused")
    # Nothing more until the next refusal; a second flood is again two rows and a summary.
    receiver.rows.tick()
    assert len(receiver.refused()) == 4
    for _ in range(40):
        receiver.connect()
    receiver.rows.flush()
    assert len(receiver.refused()) == 6
    # The log is bounded the same way (RefusalLog): one line per kind and minute, not one each.
    refused_lines = [r for r in caplog.records if "/connect/oura" in r.getMessage()]
    assert 1 <= len(refused_lines) <= 2, [r.getMessage() for r in refused_lines]
    assert not any(bent in r.getMessage() or nurse in r.getMessage() for r in caplog.records)


def test_a_revoked_token_of_an_earlier_release_is_named_after_the_upgrade(
    store_url: str,
) -> None:
    """Revision 0005 finds the tokens revoked before it in the audit log."""
    from ohx_dagster.storage import db, migrate

    engine = db.create_engine(store_url)
    migrate.upgrade(engine, "0004")  # no staff_revoked yet
    with db.write(engine) as conn:
        for action, detail in (
            ("staff-add", "staff j.doe (token 00000000000a)"),
            ("staff-remove", "staff j.doe"),
            ("staff-add", "staff j.doe (token 00000000000b)"),
        ):
            audit.record(conn, actor="ohx (root)", action=action, detail=detail)
        conn.execute(
            sa.text("INSERT INTO staff_tokens VALUES ('j.doe', '00000000000b', 'x', 1, 'ohx')")
        )
    assert migrate.upgrade(engine) == migrate.head()
    engine.dispose()
    upgraded = RecordStore(store_url)
    try:
        revoked = staff.refusal(upgraded, "ohxs_00000000000a_" + "s" * 43)
        assert (revoked.actor, revoked.reason) == ("j.doe", staff.REVOKED)
        current = staff.refusal(upgraded, "ohxs_00000000000b_" + "s" * 43)
        assert (current.actor, current.reason) == ("j.doe", staff.WRONG_SECRET)
    finally:
        upgraded.dispose()


# -- exports ---------------------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAY = NOW.date() - timedelta(days=3)


def test_publishing_audits_each_persons_export_by_subject(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    try:
        source = Windowed(
            SimulatedSource(3, seed=11, clock=lambda: NOW),
            SUPPORTED_TYPES["simulated"],
            timedelta(hours=1),
        )
        sync_partition(source, store, [DAY], strategy="partition", now=NOW)
        output = FhirOutput(str(tmp_path / "fhir"))

        def publish(**kw: object):
            return publish_partition(
                store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
                day=DAY, scope=None, now=NOW, horizon=timedelta(hours=1), run_id="run-42", **kw,
            )  # fmt: skip

        report = publish()
        people = sorted(report.users)
        assert len(people) == 3
        rows = audit.read(store, action="export")
        assert {r.subject for r in rows} == {subject("simulated", u) for u in people}
        assert len(rows) == len(people)  # one bucket each here: one row a person
        assert {(r.actor, r.outcome) for r in rows} == {("dagster run run-42", "ok")}
        # Each row counts exactly the resources of its person in the files.
        directory = partition_dir(DAY, "simulated")
        held: dict[str, int] = {}
        for name in output.names(directory):
            if name.endswith(".ndjson"):
                for resource in output.read_resources(f"{directory}/{name}"):
                    provider, user_id = owner(resource)
                    if provider == "simulated":
                        held[user_id] = held.get(user_id, 0) + 1
        for user_id in people:
            (row,) = [r for r in rows if r.subject == subject("simulated", user_id)]
            assert f"{directory}/ bucket " in row.detail
            assert f": {held[user_id]:,} resources" in row.detail, (row.detail, held[user_id])

        # Nothing changed: nothing published, nothing audited.
        publish()
        assert len(audit.read(store, action="export")) == len(people)
        # A bucket that does not validate is published for no one: failed rows, by subject.
        publish(force=True, validate=lambda resources: ["invented problem"], actor="ohx import (x)")
        failed = [r for r in audit.read(store, action="export") if r.outcome == "failed"]
        assert {r.subject for r in failed} == {subject("simulated", u) for u in people}
        assert all(r.actor == "ohx import (x)" and "not published" in r.detail for r in failed)
        text = every_value(store)
        assert not any(u in text for u in people)
    finally:
        store.dispose()


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


def _observations(user_id: str, count: int, value: int = 60) -> list[dict]:
    return [
        {
            "resourceType": "Observation",
            "id": f"obs-{user_id}-{i:03d}",
            "identifier": [
                {"system": "urn:ohx:fhir", "value": f"Observation|oura|{user_id}|hr|{i}"}
            ],
            "status": "final",
            "code": {"text": "Heart rate"},
            "valueQuantity": {"value": value, "code": "/min"},
        }
        for i in range(count)
    ]


def test_delivery_audits_each_persons_export_per_transaction(
    server: FhirServer, sqlite_store: RecordStore
) -> None:
    store = sqlite_store
    people = {"oura-person-a1": 6, "oura-person-b2": 3}
    for user_id, count in people.items():
        enqueue(store, "2026-12-01|oura", _observations(user_id, count))
    client = FhirClient(server.url, auth=BearerToken("secret-token"), batch_size=5)
    report = client.deliver(store, actor="dagster run run-7")
    assert report.sent == 9 and report.batches == 2
    rows = audit.read(store, action="export")
    # Batch 1: a1's first 5; batch 2: a1's last and b2's 3 (the outbox's order).
    assert [(r.subject, r.outcome) for r in rows] == [
        (subject("oura", "oura-person-a1"), "ok"),
        (subject("oura", "oura-person-a1"), "ok"),
        (subject("oura", "oura-person-b2"), "ok"),
    ]
    assert [r.detail.split(" of ")[0].rsplit(": ", 1)[1] for r in rows] == [
        "5 resources",
        "1 resources",
        "3 resources",
    ]
    assert all(r.actor == "dagster run run-7" for r in rows)
    assert all(r.detail.startswith(f"FHIR server {server.url}: ") for r in rows)
    assert all("2026-12-01|oura acknowledged" in r.detail for r in rows)
    # A server that refuses: the person's export is recorded as failed.
    enqueue(store, "2026-12-02|oura", _observations("oura-person-b2", 2, value=61))
    server.faults = ["400"]
    with pytest.raises(DeliveryError):
        client.deliver(store, actor="dagster run run-8")
    failed = audit.read(store, action="export")[-1]
    assert (failed.subject, failed.outcome, failed.actor) == (
        subject("oura", "oura-person-b2"),
        "failed",
        "dagster run run-8",
    )
    assert "2 resources of 2026-12-02|oura not delivered" in failed.detail
    text = every_value(store)
    assert not any(u in text for u in people)
