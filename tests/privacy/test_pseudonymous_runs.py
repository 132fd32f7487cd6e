"""Dagster names people by their salted subject only (issue 19): person ids never reach run tags,
backfills, event logs (metadata, check results, log lines, failures) or any table of the
instance, so erasure has nothing to chase there.

Real parts: the definitions as the code location loads them (simulated source, SQLite store),
a Dagster instance on disk (dg.instance_for_test), the webhook, new-user and republish sensors
evaluated on it as the daemon does, their runs and a backfill's run executed in process with the
tags the sensors asked for, the sync status asset, an operator's run typed with `ohx/users`, and
one launched for one person by subject. Then every run's tags, every event log entry, every
backfill and every row of every table of the instance's databases are searched for every
person's id: nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster_storage import storage_hits

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import DateRange
from ohx_dagster.definitions import build_definitions
from ohx_dagster.privacy.identity import match_subjects, redact
from ohx_dagster.privacy.subjects import erasure_salt, short, subject_hash
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.storage.store import NEEDS_REAUTHORIZATION, RecordStore
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.run_request import SUBJECTS_TAG, USERS_TAG, SyncRequest
from ohx_dagster.sync.strategies import SyncStrategy
from sensors.erasure import names_pattern

TODAY = datetime.now(UTC).date()
PEOPLE = 3
PROVIDER = "simulated"


@dataclass
class World:
    defs: dg.Definitions
    store: RecordStore
    instance: dg.DagsterInstance
    dagster_dir: Path
    people: list[str]

    def tick(self, name: str, cursor: str | None = None) -> dg.SensorResult:
        resources = {n: self.defs.resources[n] for n in ("store", "sources")}
        context = dg.build_sensor_context(
            instance=self.instance, cursor=cursor, definitions=self.defs, resources=resources
        )
        return self.defs.get_sensor_def(name)(context)

    def run(self, partition: str | None, tags: dict[str, str], job: str = "sync_partition"):
        definition = self.defs.resolve_job_def(job)
        return definition.execute_in_process(
            instance=self.instance, partition_key=partition, tags=tags, raise_on_error=False
        )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in ("OHX_DATABASE_URL", "OHX_FHIR_DIR", "DAGSTER_HOME", "OHX_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "OHX_HOME": str(tmp_path / "home"),
        "OHX_DATABASE_URL": f"sqlite:///{tmp_path / 'ohx.db'}",
        "OHX_FHIR_DIR": str(tmp_path / "fhir"),
        "OHX_SOURCES": PROVIDER,
        "OHX_SIMULATED_USERS": str(PEOPLE),
        "OHX_SIMULATED_HR_HZ": "0.01",
        "OHX_PARTITIONS_START": (TODAY - timedelta(days=5)).isoformat(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(Settings.from_env(env))
    store = RecordStore(env["OHX_DATABASE_URL"])
    configs = [
        dataclasses.replace(c, lookback_days=1) for c in SimulatedSource(PEOPLE).discover_users()
    ]
    store.add_users(configs)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield World(defs, store, instance, tmp_path / "dagster", [c.user_id for c in configs])
    store.dispose()


def id_hits(world: World) -> dict[str, list[str]]:
    """Where any person's id is found: run tags and config, every event log entry, backfills,
    every row of every table of the instance's SQLite databases, and its other files."""
    patterns = [names_pattern(u) for u in world.people]

    def found(text: str) -> list[str]:
        return [p.pattern for p in patterns if p.search(text)]

    return storage_hits(world.instance, world.dagster_dir, found)


def people_with_records(store: RecordStore, day) -> set[str]:
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    records = store.read_records(PROVIDER, DateRange(start, start + timedelta(days=1)))
    return set(records["user_id"].unique()) if not records.empty else set()


def test_sensors_and_runs_leave_no_person_id_in_dagster(world: World) -> None:
    first, second, third = world.people
    salt = erasure_salt()
    # The new-user sensor's backfill, as the daemon stores it, and one of its runs.
    backfilled = world.tick("new_user_sensor")
    [request] = backfilled.run_requests
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id="bf1",
        backfill_timestamp=time.time(),
        tags=request.tags,
        dynamic_partitions_store=world.instance,
        asset_graph_subset=request.asset_graph_subset,
        title=None,
        description=None,
        run_config=None,
    )
    world.instance.add_backfill(backfill)
    stored = world.instance.get_backfill("bf1")
    assert stored is not None and USERS_TAG not in stored.tags
    assert SyncRequest.from_tags(stored.tags).resolve(world.store, PROVIDER).user_ids == set(
        world.people
    )
    # One person needs to connect again: their reason shows in metadata and checks.
    world.store.set_state(PROVIDER, third, NEEDS_REAUTHORIZATION, f"grant of {third} revoked")
    now = datetime.now(UTC).replace(microsecond=0)
    Inbox(world.store).add(
        [
            NewEvent(PROVIDER, "e1", first, "heart_rate", now, {"event_id": "e1"}),
            # Ignored (the person must reconnect): the reason names them; the log must not.
            NewEvent(PROVIDER, "e2", third, "heart_rate", now, {"event_id": "e2"}),
        ]
    )

    # The webhook sensor's push run.
    pushed = world.tick("webhook_sensor")
    [push] = pushed.run_requests
    assert USERS_TAG not in push.tags
    assert push.tags[SUBJECTS_TAG] == subject_hash(PROVIDER, first, salt=salt)
    result = world.run(push.partition_key, push.tags)
    assert result.success
    assert people_with_records(world.store, TODAY) == {first}

    yesterday = f"{TODAY - timedelta(days=1)}|{PROVIDER}"
    result = world.run(yesterday, {**stored.tags, "dagster/backfill": "bf1"})
    assert result.success
    # Synced: the two active people; the one to reconnect is skipped, by subject.
    assert people_with_records(world.store, TODAY - timedelta(days=1)) == {first, second}
    [raw] = [m.metadata for m in result.asset_materializations_for_node("raw_health_records")]
    skipped = raw["people_skipped"].value
    assert skipped == {
        short(subject_hash(PROVIDER, third, salt=salt)): (
            f"needs reauthorization (grant of {short(subject_hash(PROVIDER, third, salt=salt))} "
            "revoked): connect the account again"
        )
    }

    # The sync status asset: its table and the connections_authorized check list subjects.
    status = world.run(None, {}, job="sync_status_job")
    [check] = [
        c for c in status.get_asset_check_evaluations() if c.check_name == "connections_authorized"
    ]
    assert not check.passed
    assert check.metadata["people"].value == [short(subject_hash(PROVIDER, third, salt=salt))]

    # An operator types an id in the launchpad: the run syncs that person and its tags then
    # hold the subject instead.
    typed = world.run(
        f"{TODAY - timedelta(days=2)}|{PROVIDER}", {USERS_TAG: second, "ohx/strategy": "partition"}
    )
    assert typed.success
    assert people_with_records(world.store, TODAY - timedelta(days=2)) == {second}
    tags = world.instance.get_run_by_id(typed.run_id).tags
    assert USERS_TAG not in tags and tags[SUBJECTS_TAG] == subject_hash(PROVIDER, second, salt=salt)

    # The republish sensor's refresh runs.
    refreshed = world.tick("republish_sensor")
    assert refreshed.run_requests  # the typed run's local day reached into the next day
    for refresh in refreshed.run_requests:
        assert USERS_TAG not in refresh.tags and SUBJECTS_TAG in refresh.tags
        assert world.run(refresh.partition_key, refresh.tags).success

    runs = world.instance.get_run_records()
    assert len(runs) >= 5
    assert id_hits(world) == {}


def test_a_run_for_one_person_by_subject_syncs_exactly_that_person(world: World) -> None:
    second = world.people[1]
    day = TODAY - timedelta(days=3)
    shown = short(subject_hash(PROVIDER, second, salt=erasure_salt()))
    # What the UI shows (12 hex digits) is enough to launch a run for them.
    result = world.run(f"{day}|{PROVIDER}", {SUBJECTS_TAG: shown})
    assert result.success
    assert people_with_records(world.store, day) == {second}
    [raw] = [m.metadata for m in result.asset_materializations_for_node("raw_health_records")]
    assert raw["people"].value == 1 and raw["people_skipped"].value == {}
    # A subject naming nobody selects nobody (never everyone), and the check says so.
    nobody = "0" * 64
    other_day = TODAY - timedelta(days=4)
    result = world.run(f"{other_day}|{PROVIDER}", {SUBJECTS_TAG: nobody})
    assert people_with_records(world.store, other_day) == set()
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "nothing_skipped"]
    assert not check.passed
    assert check.metadata["skipped"].value == [
        f"subject {short(nobody)}: names no person of the source (erased, or another "
        "OHX_ERASURE_SALT?)"
    ]
    assert id_hits(world) == {}


def test_a_backfill_launched_with_typed_ids_keeps_them_only_until_its_first_run(
    world: World,
) -> None:
    first = world.people[0]
    salt = erasure_salt()
    days = [TODAY - timedelta(days=2), TODAY - timedelta(days=1)]
    world.instance.add_backfill(
        PartitionBackfill(
            backfill_id="typed", status=BulkActionStatus.REQUESTED, from_failure=False,
            tags={USERS_TAG: first, "ohx/strategy": "partition"},
            backfill_timestamp=time.time(),
            partition_names=[f"{d}|{PROVIDER}" for d in days],
        )
    )  # fmt: skip
    assert id_hits(world)  # the operator's ids, until a run of the backfill starts
    launched = world.instance.get_backfill("typed")
    result = world.run(f"{days[0]}|{PROVIDER}", {**launched.tags, "dagster/backfill": "typed"})
    assert result.success
    assert people_with_records(world.store, days[0]) == {first}
    converted = world.instance.get_backfill("typed")
    assert USERS_TAG not in converted.tags
    assert converted.tags[SUBJECTS_TAG] == subject_hash(PROVIDER, first, salt=salt)
    # Its next run carries the subject only, and syncs the same person.
    later = world.run(f"{days[1]}|{PROVIDER}", {**converted.tags, "dagster/backfill": "typed"})
    assert later.success
    assert people_with_records(world.store, days[1]) == {first}
    assert id_hits(world) == {}


def test_a_subject_tag_that_is_not_subjects_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        SyncRequest.from_tags({SUBJECTS_TAG: "sim-001,abcdef012345"})
    message = str(refused.value)
    assert "\n" not in message and "sim-001" not in message
    assert "1 of 2 values are not subjects" in message and USERS_TAG in message
    with pytest.raises(ConfigError, match="is empty"):
        SyncRequest.from_tags({SUBJECTS_TAG: " , "})


def test_the_product_never_writes_ids_into_tags() -> None:
    with pytest.raises(ValueError, match="by subject"):
        SyncRequest(SyncStrategy.PUSH, user_ids=frozenset({"sim-001"})).tags()
    request = SyncRequest.for_people(SyncStrategy.PUSH, PROVIDER, ["sim-001"], salt=b"s" * 16)
    assert request.tags()[SUBJECTS_TAG] == subject_hash(PROVIDER, "sim-001", salt=b"s" * 16)
    assert "sim-001" not in json.dumps(request.tags())


def test_subjects_match_whole_or_by_prefix_and_ids_are_hidden_as_whole_tokens() -> None:
    salt = b"salt-0123456789abcdef"
    people = [f"u{i}" for i in range(50)]
    digests = {u: subject_hash(PROVIDER, u, salt=salt) for u in people}
    wanted = [digests["u7"], digests["u8"][:12], "f" * 64]
    found, unmatched = match_subjects(PROVIDER, people, wanted, salt=salt)
    assert found == {digests["u7"]: "u7", digests["u8"][:12]: "u8"}
    assert unmatched == {"f" * 64}
    hidden = redact(
        {"u1": "u1 and u12 and xu1 and u1.", "list": ["u12: failed"]}, PROVIDER, ["u1"], salt=salt
    )
    shown = short(digests["u1"])
    assert hidden == {shown: f"{shown} and u12 and xu1 and {shown}.", "list": ["u12: failed"]}
