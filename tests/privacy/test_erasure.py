"""Erasing a person leaves nothing of them anywhere, and changes nothing of anyone else.

A simulated world on SQLite and on PostgreSQL: three people synced for two days (sim-002, who is
erased, shares file bucket 61 with sim-018), published as FHIR bulk files, delivered to the local
FHIR server, with webhook events, OAuth tokens, a webhook subscription, a request budget, a
provider cursor, an unfinished connect flow, and Dagster runs and a backfill that name them.
After the erasure every table, every file under the output root, the FHIR server and the Dagster
instance are searched for their user id, their Patient id, their series data and the
measurement values only they have: nothing. The others' published resources are byte-identical,
their files valid, their deliveries acknowledged."""

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import orjson
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster_storage import storage_hits
from fhir_test_server import FhirServer, running_fhir_server

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import DateRange
from ohx_dagster.core.times import now_us
from ohx_dagster.fhir.delivery.auth import BearerToken
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.outbox import enqueue_partition, owner, pending
from ohx_dagster.fhir.delivery.outbox import partition_counts as outbox_counts
from ohx_dagster.fhir.output import MANIFEST, FhirOutput, file_name
from ohx_dagster.privacy import audit
from ohx_dagster.privacy import erasure as erasure_module
from ohx_dagster.privacy.erasure import (
    NOT_PERSONAL,
    OWN_RULE,
    ErasureReport,
    erase_person,
    erasure_salt,
    person_tables,
    previous_erasures,
    remaining_rows,
    resolve_subject,
    subject_hash,
)
from ohx_dagster.providers.api.tokens import OAuthTokens, TokenStore, connect_user
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.publish.partitions import (
    bucket_of,
    partition_dir,
    partition_key,
    publish_partition,
)
from ohx_dagster.storage.schema import (
    erasures,
    fhir_outbox,
    metadata,
    oauth_states,
    provider_cursors,
    request_budget,
    webhook_subscriptions,
)
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.shards import Shard
from resources import FhirOutputResource, RecordStoreResource
from resources.fhir_server import FhirServerResource
from sensors.erasure import (
    erase_from_dagster,
    erase_person_job,
    names_pattern,
    run_provider,
    runs_naming,
)

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAYS = [NOW.date() - timedelta(days=11), NOW.date() - timedelta(days=10)]
HORIZON = timedelta(hours=1)
PROVIDER = "simulated"
ERASED, NEIGHBOUR, OTHER = "sim-002", "sim-018", "sim-001"
PEOPLE = [OTHER, ERASED, NEIGHBOUR]
SALT = "test-salt-0123456789abcdef"
PERSON_COUNTS = (
    "users", "oauth_tokens", "series_chunks", "measurements", "coverage", "type_status",
    "day_versions", "provider_cursors", "aggregates", "webhook_inbox", "webhook_subscriptions",
    "request_budget", "oauth_states",
)  # fmt: skip
EVERYTHING = DateRange(NOW - timedelta(days=400), NOW + timedelta(days=400))


def source() -> Windowed:
    # 18 simulated people, of whom only PEOPLE are synced: sim-018 is the first to share a file
    # bucket with sim-002.
    return Windowed(SimulatedSource(18, seed=7, clock=lambda: NOW), SUPPORTED_TYPES[PROVIDER],
                    HORIZON)  # fmt: skip


def test_the_world_has_the_shape_the_tests_rely_on() -> None:
    assert bucket_of(PROVIDER, ERASED) == bucket_of(PROVIDER, NEIGHBOUR)
    assert bucket_of(PROVIDER, ERASED) != bucket_of(PROVIDER, OTHER)


@pytest.fixture(autouse=True)
def salt(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("OHX_ERASURE_SALT", SALT)
    return SALT.encode()


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


def client_of(server: FhirServer) -> FhirClient:
    return FhirClient(server.url, auth=BearerToken(server.token), batch_size=40, backoff_s=0.0)


@dataclass
class World:
    store: RecordStore
    output: FhirOutput
    server: FhirServer
    instance: dg.DagsterInstance
    dagster_dir: Path
    configs: dict = field(default_factory=dict)

    @property
    def partitions(self) -> list[str]:
        return [partition_key(day, PROVIDER) for day in DAYS]


def publish_and_deliver(world: World, *, force: bool = False) -> None:
    for day in DAYS:
        report = publish_partition(
            world.store, world.output, provider=PROVIDER, key=PROVIDER, shard=Shard(PROVIDER),
            day=day, scope=None, now=NOW, horizon=HORIZON, force=force,
        )  # fmt: skip
        assert not report.invalid_buckets, report.invalid_buckets
    for partition in world.partitions:
        enqueue_partition(world.store, world.output, partition)
        client_of(world.server).deliver(world.store, partition)


def build_world(store: RecordStore, tmp_path: Path, server: FhirServer, instance, token_key):
    simulated = source()
    configs = {c.user_id: c for c in simulated.discover_users() if c.user_id in PEOPLE}
    # Tokens first: connecting registers the person with their settings.
    connect_user(store, PROVIDER, ERASED, OAuthTokens("access-x", "refresh-x"), configs[ERASED])
    connect_user(store, PROVIDER, OTHER, OAuthTokens("access-o", "refresh-o"), configs[OTHER])
    sync_partition(simulated, store, DAYS, strategy="partition", user_ids=PEOPLE, now=NOW)
    world = World(store, FhirOutput(str(tmp_path / "fhir")), server, instance,
                  tmp_path / "dagster", configs)  # fmt: skip
    publish_and_deliver(world)
    inbox = Inbox(store)
    inbox.add(
        [
            NewEvent(PROVIDER, f"evt-{user}-{i}", user, "heart_rate", NOW,
                     {"user": user, "note": f"event {i} of {user}"})
            for user in (ERASED, OTHER)
            for i in range(3)
        ]
    )  # fmt: skip
    stamp = now_us()
    with store.write() as conn:
        conn.execute(
            webhook_subscriptions.insert(),
            [
                {"provider": PROVIDER, "user_id": u, "target": "appli=1", "status": "active",
                 "detail": f"subscription of {u}", "updated_at_us": stamp}
                for u in (ERASED, OTHER, "")
            ],
        )  # fmt: skip
        conn.execute(
            request_budget.insert(),
            [
                {"key": f"{PROVIDER}|{u}", "window_start_us": stamp, "used": 3}
                for u in (ERASED, OTHER)
            ]
            + [{"key": PROVIDER, "window_start_us": stamp, "used": 9}],
        )
        conn.execute(
            provider_cursors.insert(),
            [
                {"provider": PROVIDER, "user_id": u, "name": "lastupdate", "value": "1700000000",
                 "updated_at_us": stamp}
                for u in (ERASED, OTHER)
            ],
        )  # fmt: skip
        conn.execute(
            oauth_states.insert(),
            [
                {"state_hash": f"{i:064x}", "provider": PROVIDER, "created_at_us": stamp,
                 "config": orjson.dumps({"fhir_patient_id": configs[u].fhir_patient_id}).decode()}
                for i, u in enumerate((ERASED, OTHER))
            ],
        )  # fmt: skip
    dagster_runs(instance)
    return world


@dg.asset(check_specs=[dg.AssetCheckSpec("covered", asset="probe")])
def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Stands for a sync run: logs, prints and records metadata naming the people it synced."""
    people = context.run.tags.get("people", "").split(",")
    context.log.info(f"synced {', '.join(people)}")
    print(f"stdout of {people}")
    return dg.MaterializeResult(
        metadata={"people_skipped": dg.MetadataValue.json({p: "reason" for p in people})},
        check_results=[dg.AssetCheckResult(passed=False, metadata={"uncovered": people})],
    )


PROBE_JOB = dg.define_asset_job("probe_job", selection=[probe])
PROBE_DEFS = dg.Definitions(assets=[probe], jobs=[PROBE_JOB])


def dagster_runs(instance: dg.DagsterInstance) -> None:
    """A run tagged with them, one tagged with someone else, one for everyone whose metadata
    names them, and a backfill of their initial sync."""
    job = PROBE_DEFS.resolve_job_def("probe_job")
    for tags in (
        {"ohx/users": ERASED, "people": ERASED, "dagster/partition": f"{DAYS[0]}|{PROVIDER}"},
        {"ohx/users": OTHER, "people": OTHER},
        {"people": f"{OTHER},{ERASED}"},
    ):
        assert job.execute_in_process(instance=instance, tags=tags).success
    for backfill_id, users in (("bf1", f"{ERASED},{OTHER}"), ("bf2", ERASED)):
        instance.add_backfill(
            PartitionBackfill(
                backfill_id=backfill_id, status=BulkActionStatus.COMPLETED_SUCCESS,
                from_failure=False, tags={"ohx/users": users, "ohx/backfill": "initial-sync"},
                backfill_timestamp=time.time(), partition_names=[str(DAYS[0])],
            )
        )  # fmt: skip


@pytest.fixture
def world(store, tmp_path, server, token_key) -> Iterator[World]:
    """The world on SQLite and on PostgreSQL."""
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield build_world(store, tmp_path, server, instance, token_key)


@pytest.fixture
def sqlite_world(sqlite_store, tmp_path, server, token_key) -> Iterator[World]:
    """The world on SQLite only (for the tests of one aspect)."""
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield build_world(sqlite_store, tmp_path, server, instance, token_key)


# -- what "nothing of them" means ----------------------------------------------------------------


@dataclass
class Traces:
    """What identifies the person or their data, as searched for in text and bytes."""

    patterns: list[re.Pattern[str]]
    plain: list[str]

    def found_in(self, text: str) -> list[str]:
        hits = [p.pattern for p in self.patterns if p.search(text)]
        return hits + [s[:30] for s in self.plain if s in text]


def numbers(node: object) -> Iterator[float]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "value" and isinstance(value, int | float) and not isinstance(value, bool):
                yield float(value)
            else:
                yield from numbers(value)
    elif isinstance(node, list):
        for item in node:
            yield from numbers(item)


def published(world: World) -> list[dict]:
    """Every resource the manifests name."""
    found = []
    for day in DAYS:
        directory = partition_dir(day, PROVIDER)
        for entry in (world.output.manifest(directory) or {"output": []})["output"]:
            name = entry["url"].rsplit("/", 1)[-1]
            found += list(world.output.read_resources(f"{directory}/{name}"))
    return found


def traces_of(world: World) -> Traces:
    resources = published(world)
    theirs = [r for r in resources if owner(r) == (PROVIDER, ERASED)]
    others = [r for r in resources if owner(r) != (PROVIDER, ERASED)]
    assert theirs and others
    shared = set(numbers(others))
    # Measurement values only they have, written with enough digits not to occur by chance.
    values = sorted(
        {v for v in numbers(theirs) if v not in shared and not v.is_integer() and len(repr(v)) >= 5}
    )
    assert len(values) >= 5, values
    series = [
        r["valueSampledData"]["data"] for r in theirs if "valueSampledData" in r
    ]  # their heart rate, steps, RR: long strings nobody else has
    assert series
    patient = world.configs[ERASED].fhir_patient_id
    value_patterns = [re.compile(rf"(?<![\d.]){re.escape(repr(v))}(?!\d)") for v in values]
    # A value of theirs that anyone else's stored row also holds (a neighbour's daily mean that
    # happens to be equal: the simulated values change with the date) is no trace of them.
    others_rows = rows_not_naming(world.store, names_pattern(ERASED))
    value_patterns = [p for p in value_patterns if not p.search(others_rows)][:40]
    assert len(value_patterns) >= 5, values
    return Traces([names_pattern(ERASED), *value_patterns], [patient, *series[:10]])


def row_texts(store: RecordStore) -> Iterator[tuple[str, str]]:
    """(table, text) of every row of every table of the store, as the searches below read it."""
    with store.read() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                yield (
                    table.name,
                    " ".join(v.decode("latin-1") if isinstance(v, bytes) else repr(v) for v in row),
                )


def rows_not_naming(store: RecordStore, person: re.Pattern[str]) -> str:
    """The text of every stored row that does not name the person: everyone else's data."""
    return "\n".join(text for _, text in row_texts(store) if not person.search(text))


def table_hits(store: RecordStore, traces: Traces) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for table, text in row_texts(store):
        if found := traces.found_in(text):
            hits.setdefault(table, []).extend(found)
    return hits


def file_hits(root: Path, traces: Traces) -> dict[str, list[str]]:
    hits = {}
    for path in root.rglob("*"):
        if path.is_file() and (found := traces.found_in(path.read_bytes().decode("latin-1"))):
            hits[str(path.relative_to(root))] = found
    return hits


def server_hits(server: FhirServer, traces: Traces) -> list[str]:
    return traces.found_in(json.dumps(list(server.resources.values())))


def dagster_hits(world: World, traces: Traces) -> dict[str, list[str]]:
    """Runs, their event logs, backfills, and every row of every table of the instance's SQLite
    databases, and its captured logs."""
    return storage_hits(world.instance, world.dagster_dir, traces.found_in)


def others_resources(world: World) -> dict[tuple[str, str], dict]:
    return {
        (r["resourceType"], r["id"]): r for r in published(world) if owner(r) != (PROVIDER, ERASED)
    }


def acknowledged(store: RecordStore, resources: dict[tuple[str, str], dict]) -> int:
    """How many of the resources the outbox holds with exactly this body, acknowledged."""
    o = fhir_outbox
    with store.read() as conn:
        rows = {
            (r.resource_type, r.resource_id): r
            for r in conn.execute(sa.select(o.c.resource_type, o.c.resource_id, o.c.body,
                                            o.c.body_hash, o.c.delivered_hash))
        }  # fmt: skip
    return sum(
        1
        for key, resource in resources.items()
        if key in rows
        and orjson.loads(rows[key].body) == resource
        and rows[key].delivered_hash == rows[key].body_hash
    )


def check_files_valid(world: World) -> None:
    """Every manifest names exactly the partition's file rows; each file exists, is named by its
    content, holds `count` resources; no file is left that no manifest names."""
    for day in DAYS:
        directory = partition_dir(day, PROVIDER)
        manifest = world.output.manifest(directory)
        names = set()
        for entry in manifest["output"]:
            name = entry["url"].rsplit("/", 1)[-1]
            body = world.output.read(f"{directory}/{name}")
            resource_type, bucket = name.split(".")[:2]
            assert name == file_name(resource_type, int(bucket), body)
            assert len(body.splitlines()) == entry["count"]
            names.add(name)
        assert set(world.output.names(directory)) == names | {MANIFEST}


# -- the tests -----------------------------------------------------------------------------------


def test_nothing_of_the_person_is_left_and_nothing_of_anyone_else_changes(
    world: World, salt: bytes
) -> None:
    store, server = world.store, world.server
    traces = traces_of(world)
    # Before: they are everywhere the tests look.
    assert set(table_hits(store, traces)) >= {
        "users", "oauth_tokens", "series_chunks", "measurements", "coverage", "type_status",
        "day_versions", "provider_cursors", "aggregates", "webhook_inbox",
        "webhook_subscriptions", "request_budget", "fhir_outbox",
    }  # fmt: skip
    assert file_hits(Path(world.output.root), traces)
    assert server_hits(server, traces)
    assert dagster_hits(world, traces)
    others_before = others_resources(world)
    on_server_before = {k: v for k, v in server.resources.items() if owner(v) != (PROVIDER, ERASED)}
    records_before = {
        u: len(store.read_records(PROVIDER, EVERYTHING, user_ids=[u])) for u in (OTHER, NEIGHBOUR)
    }

    dagster = erase_from_dagster(world.instance, PROVIDER, ERASED)
    report = erase_person(
        store, world.output, client_of(server), PROVIDER, ERASED, requested_by="dpo@clinic"
    )

    assert report.complete and report.server_error == ""
    assert dagster.runs_deleted == 2 and dagster.runs_active == 0
    assert dagster.backfills_rewritten == 2 and dagster.check_executions_deleted == 2
    assert report.counts["fhir_server_deleted"] > 0
    assert report.counts["fhir_partitions_rewritten"] == len(DAYS)
    for table in PERSON_COUNTS:
        assert report.counts[table] > 0, table
    # Nothing of them anywhere.
    assert table_hits(store, traces) == {}
    assert file_hits(Path(world.output.root), traces) == {}
    assert server_hits(server, traces) == []
    assert dagster_hits(world, traces) == {}
    assert remaining_rows(store, PROVIDER, ERASED) == {}
    assert TokenStore(store).load(PROVIDER, ERASED) is None
    assert TokenStore(store).load(PROVIDER, OTHER) is not None
    # The audit record: who, when, how much; the subject only as its salted hash.
    with store.read() as conn:
        [row] = conn.execute(sa.select(erasures)).all()
    assert row.subject_hash == subject_hash(PROVIDER, ERASED, salt=salt) == report.subject
    assert row.requested_by == "dpo@clinic" and abs(row.erased_at_us - now_us()) < 60e6
    assert json.loads(row.counts) == report.counts
    # Everyone else: the same resources, byte for byte, in valid files; the same records; the
    # server still holds theirs, delivered.
    assert others_resources(world) == others_before
    check_files_valid(world)
    assert {k: v for k, v in server.resources.items()} == on_server_before
    for u, count in records_before.items():
        assert len(store.read_records(PROVIDER, EVERYTHING, user_ids=[u])) == count
    assert pending(store) == []
    assert acknowledged(store, others_before) == len(others_before)
    for partition in world.partitions:
        assert outbox_counts(store, partition)["failed"] == 0
    assert [r.dagster_run.tags.get("ohx/users") for r in world.instance.get_run_records()] == [
        OTHER
    ]
    assert {b.backfill_id: b.tags["ohx/users"] for b in world.instance.get_backfills()} == {
        "bf1": OTHER,
        "bf2": "ohx-erased",
    }

    # Publishing again, even every bucket by force, brings nothing of them back (no withdrawn
    # copies) and changes nothing of the others; delivery sends nothing.
    publish_and_deliver(world, force=True)
    assert file_hits(Path(world.output.root), traces) == {}
    assert server_hits(server, traces) == []
    assert others_resources(world).keys() == others_before.keys()

    # Twice is fine: nothing left to remove, a second audit row.
    again = erase_person(
        store, world.output, client_of(server), PROVIDER, ERASED, requested_by="dpo@clinic"
    )
    assert again.complete and again.total == 0
    assert len(previous_erasures(store, report.subject)) == 2
    assert erase_from_dagster(world.instance, PROVIDER, ERASED).runs_deleted == 0


def test_with_the_server_down_the_values_go_and_the_server_copies_go_on_the_next_run(
    sqlite_world: World,
) -> None:
    world = sqlite_world
    store, server = world.store, world.server
    held = len(server.resources)
    server.stop()
    report = erase_person(
        store, world.output, client_of(server), PROVIDER, ERASED, requested_by="dpo"
    )
    assert not report.complete and report.server_pending > 0
    assert ERASED not in report.server_error and "unavailable" in report.server_error
    # What stays for the server's sake: identifiers to delete by, no body, never delivered again.
    with store.read() as conn:
        kept = conn.execute(sa.select(fhir_outbox).where(fhir_outbox.c.user_id == ERASED)).all()
    assert len(kept) == report.server_pending
    assert {r.body for r in kept} == {"{}"} and all(r.match_url for r in kept)
    assert pending(store) == []
    # The subject can still be resolved (the outbox rows name them) until the server confirms.
    assert resolve_subject(store, PROVIDER, report.subject, salt=SALT.encode()) == ERASED
    server.start()
    again = erase_person(
        store, world.output, client_of(server), PROVIDER, ERASED, requested_by="dpo"
    )
    assert again.complete and again.counts["fhir_server_deleted"] == report.server_pending
    assert len(server.resources) < held
    assert not [r for r in server.resources.values() if owner(r) == (PROVIDER, ERASED)]
    assert resolve_subject(store, PROVIDER, report.subject, salt=SALT.encode()) is None


def test_without_a_server_the_erasure_says_what_is_left(sqlite_world: World) -> None:
    world = sqlite_world
    report = erase_person(world.store, world.output, None, PROVIDER, ERASED, requested_by="dpo")
    assert not report.complete and report.server_pending > 0
    assert remaining_rows(world.store, PROVIDER, ERASED) == {"fhir_outbox": report.server_pending}


def test_a_render_read_before_the_erasure_cannot_bring_them_back(sqlite_world: World) -> None:
    """A publisher that read the bucket before the erasure commits after it: the raised
    published versions make its commit stale, so the manifest never names their data again."""
    from ohx_dagster.publish import partitions as publish

    world = sqlite_world
    store = world.store
    day = DAYS[1]
    bucket = bucket_of(PROVIDER, ERASED)
    configs = {u: c for u, c in world.configs.items() if bucket_of(PROVIDER, u) == bucket}
    _, versions = publish._read_bucket(store, PROVIDER, day, configs)
    assert set(versions) == {ERASED, NEIGHBOUR}
    directory = partition_dir(day, PROVIDER)
    manifest_before = world.output.read(f"{directory}/{MANIFEST}")
    erase_person(store, world.output, None, PROVIDER, ERASED, requested_by="dpo")
    manifest = publish._commit_bucket(
        store, world.output, provider=PROVIDER, key=PROVIDER, day=day, bucket=bucket,
        files=[], versions=versions, final={}, configs=configs,
        hourly=publish.aggregate.empty_aggregates(), daily=publish.aggregate.empty_aggregates(),
    )  # fmt: skip
    assert manifest is None  # dropped as stale
    assert world.output.read(f"{directory}/{MANIFEST}") != manifest_before
    assert ERASED.encode() not in world.output.read(f"{directory}/{MANIFEST}")


def test_the_job_takes_a_subject_hash_and_leaves_no_id_in_dagster(sqlite_world: World) -> None:
    world = sqlite_world
    store = world.store
    subject = subject_hash(PROVIDER, ERASED, salt=SALT.encode())
    config = erasure_module.run_config(PROVIDER, subject, "dpo@clinic")
    config["ops"]["erase_person"]["config"]["wait_for_runs_s"] = 0.0
    resources = {
        "store": RecordStoreResource(database_url=store.url),
        "output": FhirOutputResource(root=world.output.root_url),
        "fhir_server": FhirServerResource(
            base_url=world.server.url, bearer_token=world.server.token
        ),
    }
    result = erase_person_job.execute_in_process(
        run_config=config, resources=resources, instance=world.instance
    )
    assert result.success
    counts = result.output_for_node("erase_person")
    assert counts["dagster_runs_deleted"] == 2 and counts["fhir_server_deleted"] > 0
    assert remaining_rows(store, PROVIDER, ERASED) == {}
    traces = traces_of_id_only(world)
    assert dagster_hits(world, traces) == {}  # the job's own run included
    [row] = _erasure_rows(store)
    assert row.subject_hash == subject and json.loads(row.counts)["dagster_runs_deleted"] == 2
    # Again: nothing is left, which the run says, and records.
    again = erase_person_job.execute_in_process(
        run_config=config, resources=resources, instance=world.instance
    )
    assert again.success and again.output_for_node("erase_person") == {"found": 0}
    assert len(previous_erasures(store, subject)) == 2
    assert runs_naming(world.instance, PROVIDER, ERASED) == ([], [])
    # Both requests are in the audit log, under the subject, by who asked.
    erased = [(r.subject, r.actor, r.outcome) for r in audit.read(store, action="erase")]
    assert erased == [(subject, "dpo@clinic", "ok")] * 2


def traces_of_id_only(world: World) -> Traces:
    return Traces([names_pattern(ERASED)], [world.configs[ERASED].fhir_patient_id])


def _erasure_rows(store: RecordStore):
    with store.read() as conn:
        return conn.execute(sa.select(erasures)).all()


def test_a_malformed_subject_is_refused_by_name(tmp_path: Path) -> None:
    config = erasure_module.run_config(PROVIDER, "0" * 64, "dpo")
    config["ops"]["erase_person"]["config"]["subject"] = "sim-002"
    url = f"sqlite:///{tmp_path / 'ohx.db'}"
    RecordStore(url).dispose()
    with pytest.raises(Exception, match="subject='<7 characters, not shown>'"):
        erase_person_job.execute_in_process(
            run_config=config,
            resources={
                "store": RecordStoreResource(database_url=url),
                "output": FhirOutputResource(root=str(tmp_path / "fhir")),
                "fhir_server": FhirServerResource(),
            },
        )


# -- small parts ---------------------------------------------------------------------------------


def test_every_table_is_erased_by_a_rule() -> None:
    """A table added with person data must be erased: keyed by provider + user_id (erased by
    its columns), or listed with its own rule, or listed as holding nothing of a person."""
    by_columns = {t.name for t in person_tables()}
    for table in metadata.sorted_tables:
        assert table.name in by_columns | set(OWN_RULE) | set(NOT_PERSONAL), table.name
    assert {"users", "series_chunks", "webhook_inbox", "webhook_subscriptions"} <= by_columns


def test_the_salt_comes_from_the_environment_or_one_file_per_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert erasure_salt({"OHX_ERASURE_SALT": SALT}) == SALT.encode()
    with pytest.raises(ConfigError, match="OHX_ERASURE_SALT"):
        erasure_salt({"OHX_ERASURE_SALT": "short"})
    env = {"OHX_HOME": str(tmp_path / "home")}
    first = erasure_salt(env)
    assert erasure_salt(env) == first and len(first) >= 32
    path = tmp_path / "home" / "erasure-salt"
    assert path.stat().st_mode & 0o777 == 0o600
    other = erasure_salt({"OHX_HOME": str(tmp_path / "elsewhere")})
    assert subject_hash("p", "u", salt=first) != subject_hash("p", "u", salt=other)


def test_the_subject_command_prints_the_hash_and_a_run_config_without_the_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[str] = []
    erasure_module.main(
        ["subject", "--provider", "oura", "--user", "person-42", "--requested-by", "dpo"],
        out=lines.append,
    )
    digest, config = lines
    assert digest == subject_hash("oura", "person-42", salt=SALT.encode())
    assert "person-42" not in config and digest in config


def test_a_run_of_another_providers_partition_is_not_theirs() -> None:
    assert run_provider({"dagster/partition": "2026-01-01|oura-3"}) == "oura"
    assert run_provider({"dagster/asset_partition_range_start": "2026-01-01|simulated"}) == (
        "simulated"
    )
    assert run_provider({"ohx/users": "x"}) is None


def test_names_pattern_matches_whole_ids_only() -> None:
    pattern = names_pattern("sim-002")
    assert pattern.search("Observation|simulated|sim-002|heart_rate")
    assert pattern.search('{"ohx/users": "sim-001,sim-002"}')
    assert pattern.search("sim-watch-sim-002")
    assert not pattern.search("sim-0021") and not pattern.search("xsim-002")


def test_report_total_and_completeness() -> None:
    report = ErasureReport("0" * 64, {"users": 1, "fhir_outbox": 2})
    assert report.total == 3 and report.complete
    report.server_pending = 1
    assert not report.complete
