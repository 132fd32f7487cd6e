"""sync_partition against the invariant: no sample the provider holds is lost or counted twice,
whatever fails, whatever order runs happen in.

The source here is the simulated provider (deterministic: its history is a pure function of
person, type and hour) behind the same `Windowed` adapter the product uses, with faults injected
per person and type the way providers fail: an outage, a refused type (403), a spent grant, a rate
limit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.errors import (
    NeedsReauthorization,
    ProviderError,
    RateLimited,
    ValidationError,
)
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import from_us
from ohx_dagster.providers.base import FetchResult, Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.storage.store import NEEDS_REAUTHORIZATION, RecordStore
from ohx_dagster.sync.fetch import SyncFailed, sync_partition
from ohx_dagster.sync.strategies import SyncStrategy, goal

# Relative to the wall clock: people connect "now", and their history reaches 30 days back.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAY = NOW.date() - timedelta(days=5)
HR, SPO2 = HealthDataType.HEART_RATE, HealthDataType.SPO2


class ScriptedSource(Windowed):
    """The simulated provider, with failures scripted per person (and type)."""

    def __init__(self, people: int = 3, horizon=timedelta(0), **faults) -> None:
        super().__init__(
            SimulatedSource(people, clock=lambda: NOW), SUPPORTED_TYPES["simulated"], horizon
        )
        self.faults: dict[str, Exception] = faults.get("raise", {})
        self.refuse: dict[str, set[str]] = faults.get("refuse", {})
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def fetch_windows(self, user: HealthSyncConfig, windows: Mapping) -> FetchResult:
        self.calls.append((user.user_id, tuple(sorted(k.value for k in windows))))
        if user.user_id in self.faults:
            raise self.faults[user.user_id]
        refused = self.refuse.get(user.user_id, set())
        result = super().fetch_windows(
            user, {k: w for k, w in windows.items() if k.value not in refused}
        )
        result.refused |= {
            kind: f"HTTP 403: {kind} not permitted"
            for kind in refused
            if HealthDataType(kind) in windows
        }
        return result


def goal_window(config: HealthSyncConfig, days: Sequence[date]) -> DateRange:
    """What runs of these day partitions leave covered for a person: the UTC days and the
    person's local days of those dates (what the partitions publish)."""
    first, last = (
        goal(SyncStrategy.PARTITION, day, config, NOW - timedelta(days=400), NOW)
        for day in (min(days), max(days))
    )
    return DateRange(from_us(first[0]), from_us(last[1]))


def held(store: RecordStore, people: Sequence[str], days: Sequence[date]) -> int:
    """What the provider holds for these people and days (the simulator is deterministic)."""
    source = SimulatedSource(3, clock=lambda: NOW)
    total = 0
    for config in source.discover_users():
        if config.user_id in people:
            window = goal_window(config, days)
            total += len(source.fetch(config, SUPPORTED_TYPES["simulated"], window, batch_size=0))
    return total


def stored(store: RecordStore, days: Sequence[date]) -> int:
    return sum(
        len(store.read_records("simulated", goal_window(config, days), user_ids=[config.user_id]))
        for config in store.users("simulated")
    )


def test_a_run_commits_its_day_and_a_rerun_fetches_nothing(store: RecordStore) -> None:
    source = ScriptedSource()
    report = sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    people = ["sim-001", "sim-002", "sim-003"]
    assert sorted(report.users_synced) == people
    assert stored(store, [DAY]) == held(store, people, [DAY]) == report.records
    assert DAY in report.days_changed
    source.calls.clear()
    again = sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    assert source.calls == [] and again.records == 0 and sorted(again.users_synced) == people


@pytest.mark.parametrize(
    "error",
    [ProviderError("simulated: HTTP 503"), ConnectionResetError("reset by peer")],
    ids=["provider-error", "network-error"],
)
def test_one_persons_failure_loses_nobody_elses_data(store: RecordStore, error) -> None:
    source = ScriptedSource(**{"raise": {"sim-002": error}})
    with pytest.raises(SyncFailed) as failed:
        sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    report = failed.value.report
    assert report.transient and sorted(report.users_synced) == ["sim-001", "sim-003"]
    assert "sim-002" in report.failures
    assert stored(store, [DAY]) == held(store, ["sim-001", "sim-003"], [DAY])
    # The outage ends: the retry fetches sim-002's day, and nothing of the others again.
    fixed = ScriptedSource()
    sync_partition(fixed, store, DAY, strategy="incremental", now=NOW)
    assert [user for user, _ in fixed.calls] == ["sim-002"]
    assert stored(store, [DAY]) == held(store, ["sim-001", "sim-002", "sim-003"], [DAY])


def test_bad_data_is_not_retried(store: RecordStore) -> None:
    source = ScriptedSource(**{"raise": {"sim-001": ValidationError("value", -5, "bpm >= 20")}})
    with pytest.raises(SyncFailed) as failed:
        sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    assert not failed.value.report.transient


def test_a_refused_type_is_recorded_and_the_others_keep_syncing(store: RecordStore) -> None:
    source = ScriptedSource(refuse={"sim-001": {"spo2"}})
    report = sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    assert report.refused == {"sim-001": {"spo2": "HTTP 403: spo2 not permitted"}}
    assert "sim-001" in report.users_synced
    config = store.user("simulated", "sim-001")
    assert store.refused_types(config) == {"spo2": "HTTP 403: spo2 not permitted"}
    # The next run does not ask for it again (no hourly retry of a permanent refusal) ...
    source.calls.clear()
    sync_partition(source, store, DAY + timedelta(days=1), strategy="incremental", now=NOW)
    asked = dict(source.calls)
    assert "spo2" not in asked["sim-001"] and "spo2" in asked["sim-002"]
    # ... until the person reconnects.
    store.upsert_user(config)
    source = ScriptedSource()
    sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    assert dict(source.calls)["sim-001"] == ("spo2",)


def test_a_spent_grant_parks_the_person_until_they_reconnect(store: RecordStore) -> None:
    spent = NeedsReauthorization("simulated user 'sim-003': invalid_grant")
    report = sync_partition(ScriptedSource(**{"raise": {"sim-003": spent}}), store, DAY,
                            strategy="incremental", now=NOW)  # fmt: skip
    assert "needs reauthorization" in report.users_skipped["sim-003"]
    assert store.person("simulated", "sim-003").state == NEEDS_REAUTHORIZATION
    source = ScriptedSource()
    sync_partition(source, store, DAY + timedelta(days=1), strategy="incremental", now=NOW)
    assert "sim-003" not in dict(source.calls)  # not called while parked
    store.upsert_user(store.user("simulated", "sim-003"))
    sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    assert stored(store, [DAY]) == held(store, ["sim-001", "sim-002", "sim-003"], [DAY])


def test_a_rate_limit_defers_everyone_after_it_and_loses_nothing(store: RecordStore) -> None:
    limited = ScriptedSource(**{"raise": {"sim-002": RateLimited("simulated", 42.0)}})
    with pytest.raises(SyncFailed) as failed:
        sync_partition(limited, store, DAY, strategy="incremental", now=NOW)
    report = failed.value.report
    assert report.deferred == ["sim-002", "sim-003"] and report.retry_after_s == 42.0
    assert [user for user, _ in limited.calls] == ["sim-001", "sim-002"]  # sim-003 never called
    retry = ScriptedSource()
    sync_partition(retry, store, DAY, strategy="incremental", now=NOW)
    assert sorted(user for user, _ in retry.calls) == ["sim-002", "sim-003"]
    assert stored(store, [DAY]) == held(store, ["sim-001", "sim-002", "sim-003"], [DAY])


def test_ecg_brings_its_heart_rate_even_when_heart_rate_is_not_enabled(store: RecordStore):
    source = ScriptedSource(1)
    store.add_users(
        [HealthSyncConfig(user_id="sim-001", provider="simulated", enabled_types=frozenset({"ecg"}),
                          timezone="Europe/Amsterdam")]
    )  # fmt: skip
    report = sync_partition(source, store, DAY, strategy="incremental", now=NOW)
    assert report.records_by_type["ecg"] == 1 and report.records_by_type["heart_rate"] > 0
    assert report.unlinked == []


@given(st.permutations(range(4)), st.booleans())
@settings(max_examples=8, deadline=None)
def test_days_synced_in_any_order_store_exactly_what_the_provider_holds(
    tmp_path_factory, order, twice
):
    """Catch-up after an outage: days run newest first, oldest first, or shuffled, some twice."""
    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('order') / 'ohx.db'}")
    days = [DAY - timedelta(days=d) for d in range(4)]
    source = ScriptedSource(1)
    for position in order:
        sync_partition(source, store, days[position], strategy="incremental", now=NOW)
        if twice:
            sync_partition(source, store, days[position], strategy="incremental", now=NOW)
    assert stored(store, days) == held(store, ["sim-001"], days)
    store.dispose()
