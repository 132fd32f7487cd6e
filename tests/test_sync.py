"""sync_partition: records commit before sync state moves; one user's failure loses nobody else's
data; a re-run after the fault is fixed repeats nothing twice."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from ohx_dagster.errors import ProviderError
from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.quality import recordings_without_heart_rate
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import SyncFailed, sync_partition

NOW = datetime(2025, 1, 10, tzinfo=UTC)
# Two hours keep the tests fast and still hold sim-001's ECG (09:15 Amsterdam = 08:15 UTC).
WINDOW = DateRange(datetime(2025, 1, 5, 8, tzinfo=UTC), datetime(2025, 1, 5, 10, tzinfo=UTC))
FAILING = "sim-002"


class FaultySource:
    """The simulated provider with an injected outage for some users (or some of their types)."""

    def __init__(
        self, error: Exception, users: set[str], kinds: set[HealthDataType] | None = None
    ) -> None:
        self.inner = SimulatedSource(3, clock=lambda: NOW)
        self.name = self.inner.name
        self.error, self.users, self.kinds = error, users, kinds
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def discover_users(self) -> list[HealthSyncConfig]:
        return self.inner.discover_users()

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int,
    ) -> pd.DataFrame:
        kinds = [HealthDataType(k) for k in data_types]
        self.calls.append((user.user_id, tuple(sorted(k.value for k in kinds))))
        if user.user_id in self.users and (self.kinds is None or self.kinds & set(kinds)):
            raise self.error
        return self.inner.fetch(user, kinds, window, batch_size=batch_size)


def clean_source() -> SimulatedSource:
    return SimulatedSource(3, clock=lambda: NOW)


def test_sync_commits_records_then_advances_state(store: RecordStore) -> None:
    report = sync_partition(clean_source(), store, WINDOW, now=NOW)
    assert sorted(report.users_synced) == ["sim-001", "sim-002", "sim-003"]
    assert report.records == store.count_records("simulated") > 10_000
    assert report.first >= WINDOW.start and report.last < WINDOW.end  # type: ignore[operator]
    for user in report.users_synced:
        for kind in HealthDataType:
            assert store.last_synced("simulated", user, kind) == WINDOW.end
    stored = store.read_records("simulated", WINDOW)
    assert stored.groupby("data_type").size().to_dict() == report.records_by_type
    assert recordings_without_heart_rate(stored) == []
    again = sync_partition(clean_source(), store, WINDOW, now=NOW)
    assert again.records == report.records
    pd.testing.assert_frame_equal(store.read_records("simulated", WINDOW), stored)


@pytest.mark.parametrize(
    "error",
    [ProviderError("503 from the provider"), ConnectionError("connection reset by peer")],
    ids=["provider-error", "network-error"],
)
def test_one_users_failure_loses_nobody_elses_data(
    store: RecordStore, tmp_path: Path, error: Exception
) -> None:
    faulty = FaultySource(error, {FAILING})
    with pytest.raises(SyncFailed, match=FAILING) as caught:
        sync_partition(faulty, store, WINDOW, now=NOW)
    report = caught.value.report
    assert sorted(report.users_synced) == ["sim-001", "sim-003"]
    assert list(report.failures) == [FAILING]
    assert type(error).__name__ in report.failures[FAILING]
    assert "1 of 3 users" in str(caught.value)
    stored = store.read_records("simulated", WINDOW)
    assert set(stored["user_id"]) == {"sim-001", "sim-003"}
    for kind in HealthDataType:
        assert store.last_synced("simulated", FAILING, kind) is None
        assert store.last_synced("simulated", "sim-003", kind) == WINDOW.end

    # The outage ends; the retried run completes and nothing is stored twice.
    fixed = sync_partition(clean_source(), store, WINDOW, now=NOW)
    assert sorted(fixed.users_synced) == ["sim-001", "sim-002", "sim-003"]
    after = store.read_records("simulated", WINDOW)
    reference = RecordStore(f"sqlite:///{tmp_path / 'reference.db'}")
    sync_partition(clean_source(), reference, WINDOW, now=NOW)
    pd.testing.assert_frame_equal(after, reference.read_records("simulated", WINDOW))
    pd.testing.assert_frame_equal(after[after["user_id"] != FAILING].reset_index(drop=True), stored)
    assert store.last_synced("simulated", FAILING, HealthDataType.ECG) == WINDOW.end
    reference.dispose()


def test_a_failure_on_one_type_commits_nothing_of_that_user(store: RecordStore) -> None:
    faulty = FaultySource(ProviderError("ECG endpoint down"), {"sim-001"}, {HealthDataType.ECG})
    with pytest.raises(SyncFailed, match="sim-001"):
        sync_partition(faulty, store, WINDOW, now=NOW)
    assert "sim-001" not in set(store.read_records("simulated", WINDOW)["user_id"])
    assert store.last_synced("simulated", "sim-001", HealthDataType.HEART_RATE) is None


def test_only_the_named_users_are_synced(store: RecordStore) -> None:
    report = sync_partition(clean_source(), store, WINDOW, user_ids=["sim-003", "nobody"], now=NOW)
    assert report.users_synced == ["sim-003"]
    assert "nobody" in report.users_skipped
    assert set(store.read_records("simulated", WINDOW)["user_id"]) == {"sim-003"}
    assert store.last_synced("simulated", "sim-001", HealthDataType.HEART_RATE) is None


def test_ecg_brings_its_heart_rate_even_when_heart_rate_is_not_enabled(store: RecordStore):
    source = clean_source()
    store.add_users(source.discover_users())
    ecg_only = HealthSyncConfig(
        user_id="sim-001",
        provider="simulated",
        enabled_types=frozenset({HealthDataType.ECG}),
        timezone="Europe/Amsterdam",
    )
    store.upsert_user(ecg_only)
    sync_partition(source, store, WINDOW, user_ids=["sim-001"], now=NOW)
    stored = store.read_records("simulated", WINDOW)
    ecg = stored[stored["data_type"] == "ecg"]
    assert len(ecg) == 1
    heart_rate = stored[stored["data_type"] == "heart_rate"]
    start = ecg["ts"].iloc[0]
    assert heart_rate["ts"].min() <= start and heart_rate["ts"].max() >= start
    assert heart_rate["ts"].max() - heart_rate["ts"].min() < pd.Timedelta(minutes=3)
    assert recordings_without_heart_rate(stored) == []
    assert set(stored["data_type"]) == {"ecg", "heart_rate"}


def test_incremental_rerun_fetches_only_the_overlap(store: RecordStore) -> None:
    sync_partition(clean_source(), store, WINDOW, now=NOW)
    counting = FaultySource(ProviderError("never raised"), set())
    later = datetime(2025, 1, 5, 10, 30, tzinfo=UTC)
    day = DateRange(datetime(2025, 1, 5, tzinfo=UTC), datetime(2025, 1, 6, tzinfo=UTC))
    counting.inner = SimulatedSource(3, clock=lambda: later)
    report = sync_partition(counting, store, day, strategy="incremental", now=later)
    # From 09:55 (10:00 minus the 5-minute overlap) to 10:30 for every user.
    assert report.first == datetime(2025, 1, 5, 9, 55, tzinfo=UTC)
    for user in ("sim-001", "sim-002", "sim-003"):
        assert store.last_synced("simulated", user, HealthDataType.HEART_RATE) == later
