"""Hash-sharded source partitions (ohx_dagster/sync/shards.py): `simulated:3` gives the partition
keys
simulated-0..2, each run for its own users only, adding up to exactly the unsharded partition."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from clock import latest_past

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import MAX_SHARDS, Shard, Sharding, user_shard
from resources import RecordStoreResource

DAY = "2025-01-05"
USERS = [f"sim-{i:03d}" for i in range(1, 7)]


def test_shard_assignment_is_stable_across_processes():
    # hashlib, not hash(): another interpreter with another hash seed assigns the same shards.
    script = (
        "from ohx_dagster.sync.shards import user_shard; "
        "print([user_shard('oura', f'u{i}', 8) for i in range(200)])"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    here = [user_shard("oura", f"u{i}", 8) for i in range(200)]
    assert other.stdout.strip() == str(here)
    # Known values: a change of the hash would move every user to another partition.
    assert [user_shard("simulated", u, 3) for u in USERS] == [2, 0, 1, 1, 2, 1]


def test_every_user_is_in_exactly_one_shard():
    sharding = Sharding.parse("oura:8")
    users = [f"user-{i}" for i in range(2_000)]
    shards = sharding.shards("oura")
    holders = {u: [s.key for s in shards if s.holds(u)] for u in users}
    assert all(len(keys) == 1 for keys in holders.values())
    assert all(holders[u] == [sharding.key_of("oura", u)] for u in users)
    sizes = Counter(keys[0] for keys in holders.values())
    assert set(sizes) == set(sharding.keys_of("oura"))
    assert min(sizes.values()) > 150  # 250 expected per shard: no shard is starved
    assert sum(len(s.select(users)) for s in shards) == len(users)


def test_source_keys_and_their_shards():
    sharding = Sharding.parse("simulated:4, oura:8,fitabase,polar:1")
    assert sharding.all_keys() == [
        *(f"simulated-{i}" for i in range(4)),
        *(f"oura-{i}" for i in range(8)),
        "fitabase",
        "polar",
    ]
    assert sharding.shard("oura-3") == Shard("oura", 3, 8)
    assert sharding.shard("fitabase") == Shard("fitabase")
    assert sharding.shard("fitabase").holds("anyone")
    assert all(sharding.shard(key).key == key for key in sharding.all_keys())
    for key in ("oura", "oura-8", "oura-03", "fitabase-0", "withings", "oura-x"):
        with pytest.raises(KeyError):
            sharding.shard(key)


def test_settings_give_every_shard_key(tmp_path):
    settings = Settings.from_env(
        {
            "OHX_HOME": str(tmp_path),
            "OHX_SOURCES": "simulated:4,fitabase:2",
            "OHX_FITABASE_DIR": str(tmp_path),
            "OHX_FITABASE_TZ": "UTC",
        }
    )
    assert settings.sources == ("simulated", "fitabase")
    assert settings.live_sources == ("simulated",)
    assert settings.source_keys == (
        "simulated-0",
        "simulated-1",
        "simulated-2",
        "simulated-3",
        "fitabase-0",
        "fitabase-1",
    )
    plain = Settings.from_env({"OHX_HOME": str(tmp_path), "OHX_SOURCES": "simulated:1"})
    assert plain.source_keys == ("simulated",)


@pytest.mark.parametrize(
    "value",
    ["simulated:0", "simulated:65", "simulated:x", "simulated:", "simulated:2.5", ":3", "s:-1"],
)
def test_bad_shard_counts_are_refused(tmp_path, value):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"OHX_HOME": str(tmp_path), "OHX_SOURCES": value})
    assert "OHX_SOURCES" in str(refused.value)
    assert repr(value) in str(refused.value)
    assert str(MAX_SHARDS) in str(refused.value)


def test_a_source_named_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="OHX_SOURCES names 'simulated' twice"):
        Settings.from_env({"OHX_HOME": str(tmp_path), "OHX_SOURCES": "simulated:2,simulated"})


# -- in-process materialization: three shards add up to the unsharded partition ------------------


def _settings(home: Path, sources: str) -> Settings:
    return Settings.from_env(
        {
            "OHX_HOME": str(home),
            "OHX_PARTITIONS_START": "2025-01-01",
            "OHX_SOURCES": sources,
            "OHX_SIMULATED_USERS": str(len(USERS)),
        }
    )


def _materialize(settings: Settings, tmp_path: Path) -> None:
    defs = build_definitions(settings)
    job = defs.get_job_def("sync_partition")
    (tmp_path / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        for key in settings.source_keys:
            result = job.execute_in_process(partition_key=f"{DAY}|{key}", instance=instance)
            assert result.success
            failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
            assert failed == []


def _resources(settings: Settings, key: str) -> list[dict]:
    """Every resource the partition's manifest names (none when it was never published)."""
    output = FhirOutput(settings.fhir_dir)
    directory = f"{DAY}/{key}"
    manifest = output.manifest(directory) or {"output": []}
    return [
        r
        for entry in manifest["output"]
        for r in output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}")
    ]


def test_shard_partitions_add_up_to_the_unsharded_partition(tmp_path):
    whole = _settings(tmp_path / "whole" / "home", "simulated")
    _materialize(whole, tmp_path / "whole")
    sharded = _settings(tmp_path / "sharded" / "home", "simulated:3")
    assert sharded.source_keys == ("simulated-0", "simulated-1", "simulated-2")
    _materialize(sharded, tmp_path / "sharded")

    whole_store = RecordStore(whole.database_url)
    sharded_store = RecordStore(sharded.database_url)
    assert sharded_store.count_records("simulated") == whole_store.count_records("simulated") > 0
    # Records and aggregates stay keyed by provider: the store is not sharded.
    assert sharded_store.count_records() == sharded_store.count_records("simulated")

    expected = _resources(whole, "simulated")
    by_shard = {key: _resources(sharded, key) for key in sharded.source_keys}
    assert not (Path(sharded.fhir_dir) / DAY / "simulated").exists()
    ids = {(r["resourceType"], r["id"]) for found in by_shard.values() for r in found}
    assert ids == {(r["resourceType"], r["id"]) for r in expected}
    # Only the Devices a provider shares may appear twice; every Observation is in one shard.
    observations = Counter(
        r["id"] for found in by_shard.values() for r in found if r["resourceType"] != "Device"
    )
    assert max(observations.values()) == 1

    patients = {f"Patient/{c.fhir_patient_id}": c.user_id for c in sharded_store.users("simulated")}
    sharding = Sharding(sharded.source_counts)
    for key, resources in by_shard.items():
        users = {patients[r["subject"]["reference"]] for r in resources if "subject" in r}
        assert users == {u for u in USERS if sharding.key_of("simulated", u) == key}
        assert users  # 6 users in 3 shards: 1, 3 and 2 of them
    whole_store.dispose()
    sharded_store.dispose()


# -- automation: sensors and schedules ask for shard keys -----------------------------------------


@pytest.fixture
def sharded_defs(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'ohx.db'}"
    today = datetime.now(UTC).date()
    env = {
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": database_url,
        "OHX_PARTITIONS_START": (today - timedelta(days=90)).isoformat(),
        "OHX_SOURCES": "simulated:3",
    }
    store = RecordStore(database_url)
    store.add_users([HealthSyncConfig(user_id=u, provider="simulated") for u in USERS])
    yield build_definitions(Settings.from_env(env)), store, database_url
    store.dispose()


def _tick(defs, name: str, database_url: str):
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"store": RecordStoreResource(database_url=database_url)},
    )
    return defs.get_sensor_def(name)(context)


def test_webhook_sensor_routes_each_event_to_its_users_shard(sharded_defs):
    defs, store, database_url = sharded_defs
    now = datetime.now(UTC).replace(microsecond=0)
    Inbox(store).add(
        [NewEvent("simulated", f"e{u}", u, "heart_rate", now, {"event_id": u}) for u in USERS]
    )
    result = _tick(defs, "webhook_sensor", database_url)
    users_by_key = {
        r.partition_key: SyncRequest.from_tags(r.tags).resolve(store, "simulated").user_ids
        for r in result.run_requests
    }
    day = now.date().isoformat()
    assert users_by_key == {
        f"{day}|simulated-0": {"sim-002"},
        f"{day}|simulated-1": {"sim-003", "sim-004", "sim-006"},
        f"{day}|simulated-2": {"sim-001", "sim-005"},
    }


def test_new_user_sensor_backfills_each_user_in_their_shard(sharded_defs):
    defs, store, database_url = sharded_defs
    result = _tick(defs, "new_user_sensor", database_url)
    found = {}
    for request in result.run_requests:
        subsets = request.asset_graph_subset.partitions_subsets_by_asset_key.values()
        sources = {key.split("|")[1] for s in subsets for key in s.get_partition_keys()}
        assert len(sources) == 1
        found[sources.pop()] = (
            SyncRequest.from_tags(request.tags).resolve(store, "simulated").user_ids
        )
    assert found == {
        "simulated-0": {"sim-002"},
        "simulated-1": {"sim-003", "sim-004", "sim-006"},
        "simulated-2": {"sim-001", "sim-005"},
    }


def test_schedules_request_every_shard_key(sharded_defs):
    defs, _, database_url = sharded_defs
    moment = latest_past(12, 5)  # an hourly tick that has happened, whatever the hour now
    today = moment.date()
    with dg.build_schedule_context(
        scheduled_execution_time=moment,
        resources={"store": RecordStoreResource(database_url=database_url)},
        instance=dg.DagsterInstance.local_temp(),
    ) as context:
        requests = list(defs.get_schedule_def("hourly_incremental_sync")(context))
    assert {r.partition_key for r in requests} == {f"{today}|simulated-{i}" for i in range(3)}
