"""Retention deletes exactly what is older than each user's period, everywhere it lives (records,
aggregates, coverage, day versions, webhook payloads, the values in outbox rows, the FHIR files of
the expired day partitions), and nothing twice; the others' data and the FHIR server's copies stay,
and a later erasure still reaches those copies."""

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from fhir_test_server import FhirServer, running_fhir_server

from ohx_dagster.core.models import DateRange, HealthSyncConfig
from ohx_dagster.core.records import make_batch
from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.delivery.auth import BearerToken
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.outbox import enqueue_partition, owner
from ohx_dagster.fhir.output import MANIFEST, FhirOutput, file_name
from ohx_dagster.privacy.erasure import erase_person
from ohx_dagster.privacy.retention import apply_retention, last_expired_day
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.publish import aggregate
from ohx_dagster.publish.partitions import (
    bucket_of,
    partition_dir,
    partition_key,
    publish_partition,
)
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import (
    aggregates,
    coverage,
    day_versions,
    fhir_changes,
    fhir_outbox,
    webhook_inbox,
)
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.shards import Shard
from resources import FhirOutputResource, RecordStoreResource
from sensors.retention import apply_retention_job

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EVERYTHING = DateRange(NOW - timedelta(days=400), NOW + timedelta(days=400))


def hourly_heart_rate(user_id: str, days: int, now: datetime) -> pd.DataFrame:
    stamps = pd.date_range(now - timedelta(days=days), now, freq="h", inclusive="left")
    return make_batch(
        provider="simulated", user_id=user_id, data_type="heart_rate",
        timestamps=stamps, values=[60.0] * len(stamps), unit="/min",
    )  # fmt: skip


def fill(store: RecordStore, now: datetime = NOW) -> None:
    store.add_users(
        [
            HealthSyncConfig(user_id="short", provider="simulated", retention_days=30),
            HealthSyncConfig(user_id="long", provider="simulated", retention_days=365),
        ]
    )
    for user in ("short", "long"):
        batch = hourly_heart_rate(user, 40, now)
        store.commit("simulated", user, ZoneInfo("UTC"), batch)
        hourly = aggregate.hourly(batch, {})
        with store.write() as conn:
            db.upsert(conn, aggregates, db.plain_rows(hourly[aggregate.AGGREGATE_COLUMNS]))


def test_retention_keeps_each_users_period(store: RecordStore) -> None:
    fill(store)
    report = apply_retention(store, NOW)
    assert report.users == 2
    assert report.records_deleted == 10 * 24  # ten of short's 40 days
    assert report.aggregates_deleted == 10 * 24
    short = store.read_records("simulated", EVERYTHING, user_ids=["short"])
    assert len(short) == 30 * 24 and short["ts"].min() >= NOW - timedelta(days=30)
    assert len(store.read_records("simulated", EVERYTHING, user_ids=["long"])) == 40 * 24
    kept = store.read_aggregates("simulated", "hourly", EVERYTHING)
    assert len(kept[kept["user_id"] == "short"]) == 30 * 24
    # Coverage before the cutoff goes with the records.
    with store.read() as conn:
        starts = conn.execute(
            sa.select(sa.func.min(coverage.c.start_us)).where(coverage.c.user_id == "short")
        ).scalar_one()
    assert starts is None or starts >= to_us(NOW - timedelta(days=30))
    again = apply_retention(store, NOW)
    assert again.records_deleted == 0 and again.aggregates_deleted == 0


def test_an_exports_retention_counts_back_from_its_newest_record(store: RecordStore) -> None:
    """A 2016 export imported years later keeps its last retention_days of data; a person of a
    live source whose data is as old loses it all (their period counts back from now)."""
    newest = datetime(2016, 5, 12, 12, 0, tzinfo=UTC)
    configs = [
        HealthSyncConfig(user_id="export", provider=provider, retention_days=30)
        for provider in ("fitabase", "apple_health", "simulated")
    ]
    store.add_users(configs)
    for config in configs:
        batch = hourly_heart_rate("export", 40, newest).assign(provider=config.provider)
        store.commit(config.provider, "export", ZoneInfo("UTC"), batch)
    window = DateRange(newest - timedelta(days=400), newest + timedelta(days=1))
    report = apply_retention(store, NOW)
    for provider in ("fitabase", "apple_health"):
        kept = store.read_records(provider, window, user_ids=["export"])
        assert len(kept) == 30 * 24, provider
        assert kept["ts"].min() >= newest - timedelta(days=30)
        assert store.stored_until(provider, "export") == newest
    assert store.read_records("simulated", window, user_ids=["export"]).empty
    assert report.records_deleted == 2 * 10 * 24 + 40 * 24
    # Nothing more goes while the export is unchanged, whenever retention runs again.
    later = apply_retention(store, NOW + timedelta(days=3650))
    assert later.records_deleted == 0


def test_the_retention_job_runs_in_dagster(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ohx.db'}"
    store = RecordStore(url)
    fill(store, datetime.now(UTC).replace(minute=0, second=0, microsecond=0))
    result = apply_retention_job.execute_in_process(
        resources={
            "store": RecordStoreResource(database_url=url),
            "output": FhirOutputResource(root=str(tmp_path / "fhir")),
        }
    )
    assert result.success
    # The job uses the real clock: everything older than 30 days of now is gone for "short".
    remaining = store.read_records("simulated", EVERYTHING, user_ids=["short"])
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert not remaining.empty and remaining["ts"].min() >= cutoff - timedelta(seconds=5)
    # Dagster keeps metadata forever: counts only, no person.
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = event.event_specific_data.metadata
    assert metadata["people_trimmed"].value == 1
    assert "short" not in str(metadata) and "long" not in str(metadata)


# -- the FHIR output and everything else of a published, delivered person ------------------------

# sim-002 keeps 5 days, sim-018 (same file bucket) and sim-001 keep the default 365; the data is
# 10 and 11 days old.
NOW_SIM = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAYS = [NOW_SIM.date() - timedelta(days=11), NOW_SIM.date() - timedelta(days=10)]
HORIZON = timedelta(hours=1)
SHORT, NEIGHBOUR, OTHER = "sim-002", "sim-018", "sim-001"


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


def publish_and_deliver(store: RecordStore, output: FhirOutput, server: FhirServer) -> None:
    for day in DAYS:
        publish_partition(
            store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
            day=day, scope=None, now=NOW_SIM, horizon=HORIZON,
        )  # fmt: skip
        enqueue_partition(store, output, partition_key(day, "simulated"))
    FhirClient(server.url, auth=BearerToken(server.token), batch_size=50).deliver(store)


def resources_of(output: FhirOutput) -> list[dict]:
    found = []
    for day in DAYS:
        directory = partition_dir(day, "simulated")
        manifest = output.manifest(directory) or {"output": []}
        names = set()
        for entry in manifest["output"]:
            name = entry["url"].rsplit("/", 1)[-1]
            body = output.read(f"{directory}/{name}")
            kind, bucket = name.split(".")[:2]
            assert name == file_name(kind, int(bucket), body)  # named by its content
            assert len(body.splitlines()) == entry["count"]
            found += list(output.read_resources(f"{directory}/{name}"))
            names.add(name)
        assert set(output.names(directory)) == names | {MANIFEST}  # no stray file
    return found


def test_retention_removes_the_expired_days_everywhere_but_on_the_server(
    store: RecordStore, tmp_path, server: FhirServer
) -> None:
    assert bucket_of("simulated", SHORT) == bucket_of("simulated", NEIGHBOUR)
    source = Windowed(SimulatedSource(18, seed=7, clock=lambda: NOW_SIM),
                      SUPPORTED_TYPES["simulated"], HORIZON)  # fmt: skip
    people = [OTHER, SHORT, NEIGHBOUR]
    sync_partition(source, store, DAYS, strategy="partition", user_ids=people, now=NOW_SIM)
    store.upsert_user(dataclasses.replace(store.user("simulated", SHORT), retention_days=5))
    output = FhirOutput(str(tmp_path / "fhir"))
    publish_and_deliver(store, output, server)
    inbox = Inbox(store)
    inbox.add([NewEvent("simulated", f"e-{u}-{i}", u, "heart_rate", NOW_SIM, {"i": i})
               for u in (SHORT, OTHER) for i in range(2)])  # fmt: skip
    with store.write() as conn:  # the first event of each arrived 20 days ago
        conn.execute(
            webhook_inbox.update()
            .where(webhook_inbox.c.event_key.like("e-%-0"))
            .values(received_at_us=to_us(NOW_SIM - timedelta(days=20)))
        )
    before = resources_of(output)
    others_before = sorted(
        (r for r in before if owner(r)[1] != SHORT), key=lambda r: (r["resourceType"], r["id"])
    )
    theirs_on_server = sum(1 for r in server.resources.values() if owner(r)[1] == SHORT)
    assert theirs_on_server and any(owner(r)[1] == SHORT for r in before)

    report = apply_retention(store, NOW_SIM, output)

    assert report.records_deleted > 0 and report.fhir_partitions_rewritten == len(DAYS)
    assert report.fhir_resources_removed > 0 and report.inbox_deleted == 1
    assert report.outbox_emptied > 0 and report.day_versions_deleted > 0
    after = resources_of(output)
    assert not [r for r in after if owner(r)[1] == SHORT]
    files = [p for p in (tmp_path / "fhir").rglob("*") if p.is_file()]
    assert files and not [p for p in files if SHORT.encode() in p.read_bytes()]
    assert sorted(after, key=lambda r: (r["resourceType"], r["id"])) == others_before
    assert store.read_records("simulated", EVERYTHING, user_ids=[SHORT]).empty
    with store.read() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(day_versions)
            .where(day_versions.c.user_id == SHORT)
        ).scalar_one()
        assert left == 0  # all their days are past the cutoff
        # The FHIR API's record of their resources' changes went with the resources.
        changes = conn.execute(
            sa.select(sa.func.count()).select_from(fhir_changes)
            .where(fhir_changes.c.user_id == SHORT)
        ).scalar_one()  # fmt: skip
        assert changes == 0 and report.fhir_changes_deleted > 0
        assert conn.execute(
            sa.select(sa.func.count()).select_from(fhir_changes)
            .where(fhir_changes.c.user_id == OTHER)
        ).scalar_one() > 0  # fmt: skip
        # Their outbox rows keep no value: only what finds the server's copy, for an erasure.
        kept = conn.execute(sa.select(fhir_outbox).where(fhir_outbox.c.user_id == SHORT)).all()
        assert len(kept) == theirs_on_server == report.outbox_emptied
        assert {r.body for r in kept} == {"{}"} and all(r.match_url for r in kept)
        events = conn.execute(
            sa.select(webhook_inbox.c.event_key).where(webhook_inbox.c.user_id == SHORT)
        ).scalars()
        assert list(events) == [f"e-{SHORT}-1"]  # the recent one stays
    # The clinical record keeps what it received.
    assert sum(1 for r in server.resources.values() if owner(r)[1] == SHORT) == theirs_on_server
    # The others keep everything (the 365-day people), and a re-publish brings nothing back.
    assert not store.read_records("simulated", EVERYTHING, user_ids=[NEIGHBOUR]).empty
    for day in DAYS:
        publish_partition(
            store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
            day=day, scope=None, now=NOW_SIM, horizon=HORIZON, force=True,
        )  # fmt: skip
    assert not [r for r in resources_of(output) if owner(r)[1] == SHORT]
    again = apply_retention(store, NOW_SIM, output)
    assert (again.records_deleted, again.fhir_resources_removed, again.inbox_deleted) == (0, 0, 0)
    assert again.outbox_emptied == 0
    # Erasing them later still reaches the server's copies of the expired days.
    client = FhirClient(server.url, auth=BearerToken(server.token), batch_size=50)
    erased = erase_person(store, output, client, "simulated", SHORT, requested_by="dpo",
                          salt=b"retention-test-salt")  # fmt: skip
    assert erased.complete and erased.counts["fhir_server_deleted"] == theirs_on_server
    assert not [r for r in server.resources.values() if owner(r)[1] == SHORT]


def test_a_partition_expires_when_its_last_local_day_is_over() -> None:
    config = HealthSyncConfig(user_id="u", provider="simulated", timezone="Pacific/Pago_Pago")
    cutoff = datetime(2026, 3, 10, 6, 0, tzinfo=UTC)
    # 2026-03-09 in UTC-11 ends at 2026-03-10 11:00 UTC, after the cutoff: the 8th is the last.
    assert last_expired_day(config, cutoff).isoformat() == "2026-03-08"
    utc = HealthSyncConfig(user_id="u", provider="simulated")
    assert last_expired_day(utc, cutoff).isoformat() == "2026-03-09"
