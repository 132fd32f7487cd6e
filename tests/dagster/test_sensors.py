"""webhook_sensor and new_user_sensor, evaluated as the daemon does (build_sensor_context)."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.definitions import build_definitions
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.strategies import PRIORITY, SyncStrategy
from resources import RecordStoreResource
from sensors.webhooks import BATCH_LIMIT

TODAY = datetime.now(UTC).date()


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ohx.db'}"


@pytest.fixture
def defs(tmp_path, database_url) -> dg.Definitions:
    env = {
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": database_url,
        "OHX_PARTITIONS_START": (TODAY - timedelta(days=90)).isoformat(),
    }
    return build_definitions(Settings.from_env(env))


@pytest.fixture
def store(database_url) -> RecordStore:
    store = RecordStore(database_url)
    store.add_users(
        [
            HealthSyncConfig(user_id="sim-001", provider="simulated"),
            HealthSyncConfig(
                user_id="sim-002",
                provider="simulated",
                enabled_types=frozenset({HealthDataType.HEART_RATE, HealthDataType.STEPS}),
            ),
        ]
    )
    return store


def tick(defs, name: str, database_url: str, cursor: str | None = None):
    sensor = defs.get_sensor_def(name)
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={"store": RecordStoreResource(database_url=database_url)},
    )
    return sensor(context)


def event(key: str, user: str, data_type: str | None, when: datetime, provider="simulated"):
    return NewEvent(provider, key, user, data_type, when, {"event_id": key})


def test_webhook_tick_groups_events_by_partition_and_ignores_with_reasons(
    defs, store, database_url
):
    now = datetime.now(UTC).replace(microsecond=0)
    yesterday = now - timedelta(days=1)
    inbox = Inbox(store)
    inbox.add(
        [
            event("e1", "sim-001", "heart_rate", now),
            event("e2", "sim-002", "steps", now),
            event("e3", "sim-001", "weight", yesterday),
            event("e4", "nobody", "heart_rate", now),
            event("e5", "sim-002", "spo2", now),  # not enabled for sim-002
            event("e6", "oura-user", "heart_rate", now, provider="oura"),
        ]
    )
    result = tick(defs, "webhook_sensor", database_url)
    by_partition = {r.partition_key: r for r in result.run_requests}
    assert set(by_partition) == {f"{now.date()}|simulated", f"{yesterday.date()}|simulated"}
    today_request = by_partition[f"{now.date()}|simulated"]
    request = SyncRequest.from_tags(today_request.tags)
    assert request.strategy is SyncStrategy.PUSH
    # People by salted subject only (issue 19); the run resolves them through the store.
    assert "ohx/users" not in today_request.tags and request.user_ids is None
    assert request.resolve(store, "simulated").user_ids == {"sim-001", "sim-002"}
    assert today_request.tags["dagster/priority"] == str(PRIORITY[SyncStrategy.PUSH])
    assert int(today_request.tags["dagster/priority"]) > PRIORITY[SyncStrategy.INCREMENTAL]
    assert today_request.run_key == f"webhook|{now.date()}|simulated|2"
    # Each run reads its own notifications back from the inbox by its run key.
    yesterdays = by_partition[f"{yesterday.date()}|simulated"]
    assert SyncRequest.from_tags(yesterdays.tags).inbox == yesterdays.run_key
    assert [e.event_key for e in inbox.dispatched_to(yesterdays.run_key)] == ["e3"]
    assert [e.event_key for e in inbox.dispatched_to(today_request.run_key)] == ["e1", "e2"]
    assert result.cursor == "6"
    assert inbox.counts() == {"pending": 0, "dispatched": 3, "ignored": 3}

    again = tick(defs, "webhook_sensor", database_url, cursor=result.cursor)
    assert not again.run_requests


def test_webhook_tick_reads_a_bounded_batch_and_resumes_from_its_cursor(defs, store, database_url):
    now = datetime.now(UTC)
    total = BATCH_LIMIT + 500
    Inbox(store).add([event(f"e{i}", "sim-001", "heart_rate", now) for i in range(total)])
    first = tick(defs, "webhook_sensor", database_url)
    assert int(first.cursor) == BATCH_LIMIT
    assert len(first.run_requests) == 1
    assert first.run_requests[0].tags["ohx/inbox-events"] == str(BATCH_LIMIT)
    second = tick(defs, "webhook_sensor", database_url, cursor=first.cursor)
    assert int(second.cursor) == total
    assert second.run_requests[0].run_key != first.run_requests[0].run_key


def test_new_user_sensor_backfills_the_lookback_with_the_initial_strategy(
    defs, store, database_url
):
    result = tick(defs, "new_user_sensor", database_url)
    assert len(result.run_requests) == 1
    backfill = result.run_requests[0]
    assert backfill.requires_backfill_daemon()
    request = SyncRequest.from_tags(backfill.tags)
    assert request.strategy is SyncStrategy.INITIAL
    assert "ohx/users" not in backfill.tags and request.user_ids is None
    assert request.resolve(store, "simulated").user_ids == {"sim-001", "sim-002"}
    assert int(backfill.tags["dagster/priority"]) < 0
    subset = backfill.asset_graph_subset
    keys = {
        asset_key.to_user_string(): set(partitions.get_partition_keys())
        for asset_key, partitions in subset.partitions_subsets_by_asset_key.items()
    }
    expected = {f"{TODAY - timedelta(days=days_back)}|simulated" for days_back in range(0, 31)}
    assert set(keys) == {
        "raw_health_records",
        "hourly_aggregates",
        "daily_aggregates",
        "fhir_observations",
        "fhir_delivery",
    }
    assert all(found == expected for found in keys.values())

    assert not tick(defs, "new_user_sensor", database_url, cursor=result.cursor).run_requests
    store.add_users([HealthSyncConfig(user_id="sim-003", provider="simulated", lookback_days=3)])
    later = tick(defs, "new_user_sensor", database_url, cursor=result.cursor)
    later_request = SyncRequest.from_tags(later.run_requests[0].tags)
    assert later_request.resolve(store, "simulated").user_ids == {"sim-003"}
    later_keys = later.run_requests[0].asset_graph_subset.partitions_subsets_by_asset_key
    assert len(next(iter(later_keys.values())).get_partition_keys()) == 4


def test_new_user_backfill_never_starts_before_the_first_partition(tmp_path, database_url, store):
    env = {
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": database_url,
        "OHX_PARTITIONS_START": (TODAY - timedelta(days=5)).isoformat(),
    }
    defs = build_definitions(Settings.from_env(env))
    result = tick(defs, "new_user_sensor", database_url)
    subset = next(
        iter(result.run_requests[0].asset_graph_subset.partitions_subsets_by_asset_key.values())
    )
    days = sorted(date.fromisoformat(k.split("|")[0]) for k in subset.get_partition_keys())
    assert days[0] == TODAY - timedelta(days=5)


def test_a_tick_whose_cursor_was_lost_asks_for_the_same_runs_again(defs, store, database_url):
    # The first tick marks its events dispatched; if the daemon dies before it stores the
    # cursor, the next tick starts from the old cursor and must not skip those events.
    now = datetime.now(UTC)
    Inbox(store).add([event(f"e{i}", "sim-001", "heart_rate", now) for i in range(5)])
    first = tick(defs, "webhook_sensor", database_url)
    replayed = tick(defs, "webhook_sensor", database_url, cursor=None)
    assert [r.run_key for r in replayed.run_requests] == [r.run_key for r in first.run_requests]
    assert replayed.cursor == first.cursor


def test_the_sensor_reads_a_bounded_batch_from_a_large_backlog(store):
    inbox = Inbox(store)
    now = datetime.now(UTC)
    inbox.add([event(f"e{i}", "sim-001", "heart_rate", now) for i in range(100_000)])
    batch = inbox.for_sensor(50_000, BATCH_LIMIT)
    assert [e.id for e in batch] == list(range(50_001, 50_001 + BATCH_LIMIT))
