"""The record store on SQLite and PostgreSQL: idempotent upserts, forward-only sync state, users,
aggregates, and several processes writing one store (a SQLite file) at once."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ohx_dagster.errors import ConfigError
from ohx_dagster.models import AggregationLevel, DateRange, HealthSyncConfig
from ohx_dagster.records import make_batch
from ohx_dagster.store import AGGREGATE_COLUMNS, RecordStore, from_us, to_us

T0 = datetime(2016, 4, 1, tzinfo=UTC)
DAY = DateRange(T0, T0 + timedelta(days=1))


def heart_rate_batch(user: str, start_s: int, count: int, step_s: int = 5) -> pd.DataFrame:
    """Heart rate every `step_s` seconds; the value depends only on the timestamp."""
    seconds = start_s + step_s * np.arange(count)
    return make_batch(
        provider="fitabase",
        user_id=user,
        data_type="heart_rate",
        timestamps=pd.DatetimeIndex(T0 + pd.to_timedelta(seconds, unit="s")),
        values=60.0 + (seconds % 97),
        unit="/min",
        device_id="fitbit",
        utc_offset_min=-300,
    )


def identities(frame: pd.DataFrame) -> set[tuple]:
    return set(
        frame[["provider", "user_id", "data_type", "ts", "device_id"]].itertuples(
            index=False, name=None
        )
    )


def test_same_batch_twice_gives_the_same_rows(store: RecordStore) -> None:
    batch = heart_rate_batch("u1", 0, 500)
    assert store.upsert_records(batch) == 500
    first = store.read_records("fitabase", DAY)
    assert store.upsert_records(batch) == 500
    second = store.read_records("fitabase", DAY)
    assert store.count_records() == 500
    pd.testing.assert_frame_equal(first, second)
    expected = batch.sort_values("ts", ignore_index=True)
    pd.testing.assert_frame_equal(second, expected, check_dtype=True)


def test_overlapping_batches_store_the_union_and_replace_values(store: RecordStore) -> None:
    store.upsert_records(heart_rate_batch("u1", 0, 100))
    overlapping = heart_rate_batch("u1", 250, 100)  # seconds 250..745 overlap 250..495
    overlapping["value"] = 150.0
    store.upsert_records(overlapping)
    stored = store.read_records("fitabase", DAY)
    assert len(stored) == 150  # 100 + 100 - 50 shared identities
    assert len(identities(stored)) == 150
    late = stored[stored["ts"] >= T0 + timedelta(seconds=250)]
    assert (late["value"] == 150.0).all() and len(late) == 100


def test_identity_includes_device_and_user(store: RecordStore) -> None:
    batch = heart_rate_batch("u1", 0, 10)
    other_device = batch.assign(device_id="polar")
    other_user = batch.assign(user_id="u2")
    store.upsert_records(pd.concat([batch, other_device, other_user], ignore_index=True))
    assert store.count_records("fitabase") == 30
    assert len(store.read_records("fitabase", DAY, user_ids=["u2"])) == 10
    assert store.count_records("simulated") == 0


def test_read_records_window_is_half_open(store: RecordStore) -> None:
    store.upsert_records(heart_rate_batch("u1", 0, 24 * 12 + 1, step_s=300))  # to next midnight
    window = DateRange(T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    stored = store.read_records("fitabase", window)
    assert len(stored) == 12
    assert stored["ts"].min() == pd.Timestamp(window.start)
    assert stored["ts"].max() == pd.Timestamp(window.end) - pd.Timedelta(minutes=5)
    assert len(store.read_records("fitabase", DAY)) == 24 * 12
    assert store.read_records("fitabase", DAY, data_types=["steps"]).empty


def test_ecg_samples_and_blood_pressure_round_trip(store: RecordStore) -> None:
    waveform = np.sin(np.arange(7500) / 40.0) * 1000 + 0.125
    ecg = make_batch(
        provider="simulated",
        user_id="sim-001",
        data_type="ecg",
        timestamps=[T0 + timedelta(hours=9, minutes=15)],
        values=None,
        unit="mV",
        samples=[waveform / 1000.0],
        sampling_rate_hz=250.0,
        duration_s=30.0,
        device_id="watch",
    )
    bp = make_batch(
        provider="simulated",
        user_id="sim-001",
        data_type="blood_pressure",
        timestamps=[T0 + timedelta(hours=7, minutes=30)],
        values=[121.0],
        diastolic=[79.0],
        unit="mm[Hg]",
        device_id="cuff",
    )
    store.upsert_records(pd.concat([ecg, bp], ignore_index=True))
    stored = store.read_records("simulated", DAY)
    got_ecg = stored[stored["data_type"] == "ecg"].iloc[0]
    np.testing.assert_allclose(got_ecg["samples"], waveform, rtol=1e-12)
    assert got_ecg["sampling_rate_hz"] == 250.0
    assert got_ecg["duration_s"] == 30.0
    assert np.isnan(got_ecg["value"])
    got_bp = stored[stored["data_type"] == "blood_pressure"].iloc[0]
    assert (got_bp["value"], got_bp["diastolic"]) == (121.0, 79.0)
    assert got_bp["samples"] is None


def test_microsecond_timestamps_are_exact(store: RecordStore) -> None:
    moment = datetime(2016, 4, 1, 12, 0, 0, 123457, tzinfo=UTC)
    assert from_us(to_us(moment)) == moment
    batch = make_batch(
        provider="p",
        user_id="u",
        data_type="heart_rate",
        timestamps=[moment],
        values=[70],
        unit="bpm",
    )
    store.upsert_records(batch)
    assert store.read_records("p", DAY)["ts"].iloc[0] == pd.Timestamp(moment)


def test_sync_state_only_moves_forward(store: RecordStore) -> None:
    assert store.last_synced("fitbit", "u1", "heart_rate") is None
    noon = T0 + timedelta(hours=12)
    store.advance_sync_state("fitbit", "u1", ["heart_rate", "steps"], noon)
    store.advance_sync_state("fitbit", "u1", ["heart_rate"], noon - timedelta(hours=3))
    assert store.last_synced("fitbit", "u1", "heart_rate") == noon
    store.advance_sync_state("fitbit", "u1", ["heart_rate"], noon + timedelta(minutes=1))
    assert store.last_synced("fitbit", "u1", "heart_rate") == noon + timedelta(minutes=1)
    assert store.last_synced("fitbit", "u1", "steps") == noon
    assert store.last_synced("fitbit", "u2", "heart_rate") is None
    assert store.last_synced("withings", "u1", "heart_rate") is None


def test_add_users_registers_only_new_users(store: RecordStore) -> None:
    chicago = HealthSyncConfig(user_id="u1", provider="fitabase", timezone="America/Chicago")
    assert store.add_users([chicago]) == 1
    edited = HealthSyncConfig(user_id="u1", provider="fitabase", timezone="Europe/Amsterdam")
    store.upsert_user(edited)
    # A source re-announcing its users must not undo an edited config.
    assert store.add_users([chicago, HealthSyncConfig(user_id="u2", provider="fitabase")]) == 1
    assert store.user("fitabase", "u1") == edited
    assert [c.user_id for c in store.users("fitabase")] == ["u1", "u2"]
    assert store.users("fitbit") == []
    assert store.user("fitabase", "nobody") is None


def test_upsert_user_replaces_config_and_keeps_connection_time(store: RecordStore) -> None:
    first = HealthSyncConfig(user_id="u1", provider="fitbit", aggregation=AggregationLevel.DAILY)
    store.upsert_user(first)
    ((connected_at, config),) = store.users_connected_since(0)
    assert config == first
    store.upsert_user(HealthSyncConfig(user_id="u1", provider="fitbit"), connected=False)
    assert store.users("fitbit") == []
    assert store.users("fitbit", connected_only=False)[0].aggregation is AggregationLevel.HOURLY
    store.upsert_user(first)
    ((again, _),) = store.users_connected_since(0)
    assert again == connected_at
    assert store.users_connected_since(connected_at) == []


def aggregate_rows(mean: float) -> pd.DataFrame:
    start = to_us(T0)
    rows = [
        {
            "provider": "fitabase",
            "user_id": user,
            "data_type": "heart_rate",
            "level": "hourly",
            "bucket_start_us": start + hour * 3_600_000_000,
            "bucket_end_us": start + (hour + 1) * 3_600_000_000,
            "utc_offset_min": -300,
            "count": 10,
            "min": mean - 5,
            "max": mean + 5,
            "mean": mean,
            "sum": mean * 10,
            "diastolic_min": np.nan,
            "diastolic_max": np.nan,
            "diastolic_mean": np.nan,
            "unit": "/min",
        }
        for user in ("u1", "u2")
        for hour in range(3)
    ]
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


def test_aggregates_upsert_replaces_statistics(store: RecordStore) -> None:
    assert store.upsert_aggregates(aggregate_rows(70.0)) == 6
    assert store.upsert_aggregates(aggregate_rows(80.0)) == 6
    stored = store.read_aggregates("fitabase", "hourly", DAY)
    assert len(stored) == 6
    assert (stored["mean"] == 80.0).all()
    assert stored["diastolic_mean"].isna().all()
    assert store.read_aggregates("fitabase", "daily", DAY).empty
    first_hour = DateRange(T0, T0 + timedelta(hours=1))
    assert sorted(store.read_aggregates("fitabase", "hourly", first_hour)["user_id"]) == [
        "u1",
        "u2",
    ]


def test_unsupported_database_urls_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OHX_DATABASE_URL"):
        RecordStore("mysql://localhost/ohx")


def test_sqlite_store_is_in_wal_mode(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'nested' / 'ohx.db'}")
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.dispose()


# -- concurrent writers on one SQLite file ---------------------------------------------------

WRITERS = 4
ROUNDS = 6


def _writer(url: str, worker: int, start: object, errors: object) -> None:
    """One process: open the store (creating tables if needed) and upsert overlapping batches."""
    try:
        start.wait(timeout=60)  # type: ignore[attr-defined]
        store = RecordStore(url)
        for round_ in range(ROUNDS):
            # Each worker covers seconds [worker*1000, worker*1000 + 3000): neighbours overlap.
            batch = heart_rate_batch("u1", worker * 1000 + round_ * 100, 600)
            store.upsert_records(batch)
            store.advance_sync_state(
                "fitabase", "u1", ["heart_rate"], T0 + timedelta(minutes=worker * 10 + round_)
            )
            store.add_users([HealthSyncConfig(user_id=f"u{worker % 2}", provider="fitabase")])
        store.dispose()
    except BaseException as exc:
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
        raise


def test_concurrent_processes_write_one_store(store_url: str) -> None:
    """No "database is locked" on SQLite, no duplicate-table or deadlock errors on PostgreSQL."""
    url = store_url  # a fresh file or database: the workers also race to create the tables
    context = multiprocessing.get_context("spawn")
    start, errors = context.Event(), context.Queue()
    workers = [
        context.Process(target=_writer, args=(url, worker, start, errors))
        for worker in range(WRITERS)
    ]
    for process in workers:
        process.start()
    start.set()
    for process in workers:
        process.join(timeout=120)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert messages == []
    assert [p.exitcode for p in workers] == [0] * WRITERS

    store = RecordStore(url)
    expected = pd.concat(
        [
            heart_rate_batch("u1", worker * 1000 + round_ * 100, 600)
            for worker in range(WRITERS)
            for round_ in range(ROUNDS)
        ],
        ignore_index=True,
    ).drop_duplicates(subset=["ts"])
    stored = store.read_records("fitabase", DAY)
    assert len(stored) == len(expected) == len(identities(stored))
    assert identities(stored) == identities(expected)
    assert (stored["value"].to_numpy() == expected.sort_values("ts")["value"].to_numpy()).all()
    last = max(worker * 10 + ROUNDS - 1 for worker in range(WRITERS))
    assert store.last_synced("fitabase", "u1", "heart_rate") == T0 + timedelta(minutes=last)
    assert [c.user_id for c in store.users("fitabase")] == ["u0", "u1"]
    store.dispose()
