"""The record store on SQLite and PostgreSQL: chunks merged idempotently, coverage and changed days
committed with the records, people and their states, aggregates, and several processes writing one
person's hours at once without losing a sample."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import DateRange, HealthSyncConfig
from ohx_dagster.core.records import concat, make_batch
from ohx_dagster.core.times import to_us
from ohx_dagster.storage.store import ACTIVE, DISCONNECTED, NEEDS_REAUTHORIZATION, RecordStore

T0 = datetime(2016, 4, 1, tzinfo=UTC)
DAY = DateRange(T0, T0 + timedelta(days=1))
CHICAGO = ZoneInfo("America/Chicago")


def heart_rate_batch(user: str, start_s: int, count: int, step_s: int = 5, device="fitbit"):
    """Heart rate every `step_s` seconds; the value depends only on the timestamp."""
    seconds = start_s + step_s * np.arange(count)
    return make_batch(
        provider="fitabase",
        user_id=user,
        data_type="heart_rate",
        timestamps=pd.DatetimeIndex(T0 + pd.to_timedelta(seconds, unit="s")),
        values=60.0 + (seconds % 97),
        unit="/min",
        device_id=device,
        utc_offset_min=-300,
    )


def commit(store: RecordStore, batch: pd.DataFrame, user: str = "u1", **kw):
    store.add_users([HealthSyncConfig(user_id=user, provider="fitabase")])
    return store.commit("fitabase", user, CHICAGO, batch, **kw)


def identities(frame: pd.DataFrame) -> set[tuple]:
    columns = ["provider", "user_id", "data_type", "ts", "device_id"]
    return set(frame[columns].itertuples(index=False, name=None))


def test_the_same_batch_twice_changes_nothing_the_second_time(store: RecordStore) -> None:
    batch = heart_rate_batch("u1", 0, 500)
    first = commit(store, batch)
    # 00:00 UTC is 19:00 the day before in Chicago: the local day the samples were lived in.
    assert first.changed_anything and first.days == {date(2016, 3, 31)}
    stored = store.read_records("fitabase", DAY)
    second = commit(store, batch)
    assert not second.changed_anything and second.days == set()
    assert store.count_records() == 500
    pd.testing.assert_frame_equal(stored, store.read_records("fitabase", DAY))
    expected = batch.sort_values("ts", ignore_index=True)
    pd.testing.assert_frame_equal(stored, expected, check_dtype=False)


def test_overlapping_batches_store_the_union_and_replace_values(store: RecordStore) -> None:
    commit(store, heart_rate_batch("u1", 0, 100))
    corrected = heart_rate_batch("u1", 250, 100)
    corrected["value"] = 150.0
    report = commit(store, corrected)
    stored = store.read_records("fitabase", DAY)
    assert len(stored) == 150  # 0..495 s and 250..745 s every 5 s
    assert (stored.loc[stored["ts"] >= T0 + timedelta(seconds=250), "value"] == 150.0).all()
    assert report.changed_anything


def test_a_person_erased_while_their_fetch_ran_gets_nothing_written(store: RecordStore) -> None:
    """The erasure race: a fetch that began before the person was erased commits after it."""
    batch = heart_rate_batch("gone", 0, 10)
    report = store.commit("fitabase", "gone", CHICAGO, batch, covered={"heart_rate": [(0, 1)]})
    assert report.unknown_person and not report.changed_anything
    assert store.count_records("fitabase") == 0 and store.coverage("fitabase", ["gone"]) == {}


def test_identity_includes_device_and_user(store: RecordStore) -> None:
    commit(store, heart_rate_batch("u1", 0, 10))
    commit(store, heart_rate_batch("u1", 0, 10, device="phone"))
    commit(store, heart_rate_batch("u2", 0, 10), user="u2")
    stored = store.read_records("fitabase", DAY)
    assert len(identities(stored)) == 30
    assert store.read_records("fitabase", DAY, user_ids=["u2"])["user_id"].unique().tolist() == [
        "u2"
    ]


def test_a_replace_window_deletes_what_the_provider_no_longer_holds(store: RecordStore) -> None:
    commit(store, heart_rate_batch("u1", 0, 720))  # an hour at 5 s
    window = (to_us(T0 + timedelta(minutes=10)), to_us(T0 + timedelta(minutes=20)))
    kept = heart_rate_batch("u1", 600, 60)  # the provider now sends 10:00-15:00 only
    report = commit(store, kept, replace={"heart_rate": [window]})
    stored = store.read_records("fitabase", DAY)
    assert len(stored) == 720 - 60  # 15:00-20:00 is gone, the rest untouched
    assert report.changed_anything and report.days == {date(2016, 3, 31)}  # 19:00 in Chicago


def test_read_window_is_half_open(store: RecordStore) -> None:
    commit(store, heart_rate_batch("u1", 3590, 3))  # 00:59:50, 00:59:55, 01:00:00
    hour = DateRange(T0, T0 + timedelta(hours=1))
    assert len(store.read_records("fitabase", hour)) == 2


def test_ecg_samples_blood_pressure_and_provenance_round_trip(store: RecordStore) -> None:
    ecg = make_batch(
        provider="fitabase", user_id="u1", data_type="ecg", timestamps=[T0], values=None,
        unit="mV", samples=[[0.1, -0.25, 1.123456]], sampling_rate_hz=130.0, duration_s=0.023,
    )  # fmt: skip
    bp = make_batch(
        provider="fitabase", user_id="u1", data_type="blood_pressure",
        timestamps=[T0 + timedelta(minutes=1)], values=[121.0], diastolic=[79.0], unit="mmHg",
        method="manual",
    )  # fmt: skip
    commit(store, concat([ecg, bp]))
    stored = store.read_records("fitabase", DAY).set_index("data_type")
    assert stored.loc["ecg", "samples"] == [100.0, -250.0, 1123.456]
    assert stored.loc["ecg", "sampling_rate_hz"] == 130.0
    assert stored.loc["blood_pressure", ["value", "diastolic"]].tolist() == [121.0, 79.0]
    assert stored.loc["blood_pressure", "method"] == "manual"


def test_microsecond_timestamps_are_exact(store: RecordStore) -> None:
    stamps = [T0 + timedelta(microseconds=1), T0 + timedelta(seconds=1, microseconds=999_999)]
    batch = make_batch(
        provider="fitabase", user_id="u1", data_type="rr_intervals", timestamps=stamps,
        values=[812.0, 799.0], unit="ms",
    )  # fmt: skip
    commit(store, batch)
    assert store.read_records("fitabase", DAY)["ts"].tolist() == stamps


def test_coverage_is_committed_with_the_records_and_joins_touching_windows(store) -> None:
    a = (to_us(T0), to_us(T0 + timedelta(hours=2)))
    b = (to_us(T0 + timedelta(hours=2)), to_us(T0 + timedelta(hours=3)))
    commit(store, heart_rate_batch("u1", 0, 10), covered={"heart_rate": [a]})
    commit(store, heart_rate_batch("u1", 0, 10), covered={"heart_rate": [b], "steps": [a]})
    assert store.coverage("fitabase") == {
        ("u1", "heart_rate"): [(a[0], b[1])],
        ("u1", "steps"): [a],
    }
    assert store.last_synced("fitabase", "u1", "heart_rate") == T0 + timedelta(hours=3)


def test_people_states_refusals_and_reconnection(store: RecordStore) -> None:
    config = HealthSyncConfig(user_id="u1", provider="oura", timezone="Europe/Paris")
    store.upsert_user(config)
    connected_at = store.person("oura", "u1").connected_at_us
    store.record_errors("oura", "u1", {"spo2": "HTTP 403: scope spo2Daily not granted"},
                        refused=True, config=config)  # fmt: skip
    assert store.refused_types(config) == {"spo2": "HTTP 403: scope spo2Daily not granted"}
    edited = HealthSyncConfig(
        user_id="u1", provider="oura", timezone="Europe/Paris", lookback_days=7
    )
    assert store.refused_types(edited) == {}  # other settings: tried again
    other = HealthSyncConfig(user_id="u2", provider="oura")
    assert store.refused_types_of("oura", {"u1": config, "u2": other}) == {
        "u1": store.refused_types(config), "u2": {}
    }  # fmt: skip
    assert store.refused_types_of("oura", {"u1": edited}) == {"u1": {}}
    store.set_state("oura", "u1", NEEDS_REAUTHORIZATION, "invalid_grant")
    assert store.active_users("oura") == []
    assert store.person("oura", "u1").state == NEEDS_REAUTHORIZATION
    store.upsert_user(config)  # the connect flow: active again, refusals forgotten
    person = store.person("oura", "u1")
    assert person.state == ACTIVE and person.connected_at_us == connected_at
    assert store.refused_types(config) == {}
    store.set_state("oura", "u1", DISCONNECTED, "appli 46: unlinked")
    assert store.users("oura") == [] and store.user("oura", "u1") == config


def test_add_users_registers_only_new_people(store: RecordStore) -> None:
    first = HealthSyncConfig(user_id="u1", provider="fitabase", timezone="America/Chicago")
    assert store.add_users([first]) == 1
    assert store.add_users([first, HealthSyncConfig(user_id="u2", provider="fitabase")]) == 1
    assert [c.user_id for c in store.users("fitabase")] == ["u1", "u2"]
    assert store.user("fitabase", "u1").timezone == "America/Chicago"


def test_day_versions_move_on_change_and_publishing_catches_up(store: RecordStore) -> None:
    commit(store, heart_rate_batch("u1", 0, 10))
    # 00:00 UTC is 19:00 the day before in Chicago: the partition of that local day publishes them.
    assert store.unpublished_days("fitabase") == {date(2016, 3, 31): {"u1"}}
    with store.read() as conn:
        versions = store.day_versions(conn, "fitabase", date(2016, 3, 31), None)
    store.mark_published("fitabase", date(2016, 3, 31), versions, {"u1": True})
    assert store.unpublished_days("fitabase") == {}
    commit(store, heart_rate_batch("u1", 0, 10))  # nothing new
    assert store.unpublished_days("fitabase") == {}


def glucose_batch(user: str, day_start: datetime) -> pd.DataFrame:
    """An hour of CGM readings every 5 minutes from `day_start` (UTC)."""
    return make_batch(
        provider="fitabase",
        user_id=user,
        data_type="interstitial_glucose",
        timestamps=pd.date_range(day_start, periods=12, freq="5min"),
        values=np.full(12, 110.0),
        unit="mg/dL",
        device_id="cgm",
        utc_offset_min=-360,
    )


def test_late_cgm_readings_mark_the_published_days_whose_14_day_summary_counts_them(
    store: RecordStore,
) -> None:
    """A day's 14-day CGM summary counts the 13 days before it: readings that reach the store
    after a later day was published make that day due again; days never published (and days to
    come) are left for their own data."""
    published = [date(2016, 4, 14), date(2016, 4, 15)]  # the 13th day after, and the 14th
    for day in published:
        commit(store, glucose_batch("u1", datetime.combine(day, datetime.min.time(), UTC)
                                    + timedelta(hours=12)))  # fmt: skip
        with store.read() as conn:
            versions = store.day_versions(conn, "fitabase", day, None)
        store.mark_published("fitabase", day, versions, {"u1": True})
    assert store.unpublished_days("fitabase") == {}
    commit(store, glucose_batch("u1", T0 + timedelta(hours=12)))  # 07:00 on 1 April in Chicago
    assert store.unpublished_days("fitabase") == {date(2016, 4, 1): {"u1"}, published[0]: {"u1"}}
    commit(store, heart_rate_batch("u1", 86_400 * 3, 10))  # heart rate is in no such summary
    assert set(store.unpublished_days("fitabase")) == {date(2016, 4, 1), published[0],
                                                       date(2016, 4, 3)}  # fmt: skip


def test_retention_trims_the_hour_that_straddles_the_cutoff(store: RecordStore) -> None:
    commit(store, heart_rate_batch("u1", 0, 1440))  # two hours at 5 s
    removed, _ = store.delete_before("fitabase", "u1", T0 + timedelta(minutes=90))
    assert removed == 1080
    stored = store.read_records("fitabase", DAY)
    assert stored["ts"].min() == T0 + timedelta(minutes=90)


def test_unsupported_database_urls_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OHX_DATABASE_URL"):
        RecordStore("mysql://localhost/ohx")


def test_a_server_database_is_not_migrated_behind_the_operators_back(pg_database_url) -> None:
    with pytest.raises(ConfigError, match="run `ohx db upgrade`"):
        RecordStore(pg_database_url, migrate_schema=False)


def test_sqlite_store_is_in_wal_mode(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'nested' / 'ohx.db'}")
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.dispose()


# -- concurrent writers of one person's hours ----------------------------------------------------

WRITERS = 4
ROUNDS = 6


def _writer(url: str, worker: int, start: object, errors: object) -> None:
    """One process: open the store (migrating it if it is first) and commit overlapping batches
    of the same person and hours as the others."""
    try:
        start.wait(timeout=60)  # type: ignore[attr-defined]
        store = RecordStore(url, migrate_schema=True)
        store.add_users([HealthSyncConfig(user_id="u1", provider="fitabase")])
        for round_ in range(ROUNDS):
            # Each worker covers seconds [worker*1000, worker*1000 + 3000): neighbours overlap.
            batch = heart_rate_batch("u1", worker * 1000 + round_ * 100, 600)
            span = (to_us(T0), to_us(T0 + timedelta(minutes=worker * 10 + round_)))
            store.commit("fitabase", "u1", CHICAGO, batch, covered={"heart_rate": [span]})
            store.add_users([HealthSyncConfig(user_id=f"u{worker % 2}", provider="fitabase")])
        store.dispose()
    except BaseException as exc:
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
        raise


def test_concurrent_processes_merge_the_same_hours_without_losing_a_sample(store_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start, errors = context.Event(), context.Queue()
    workers = [
        context.Process(target=_writer, args=(store_url, worker, start, errors))
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

    store = RecordStore(store_url, migrate_schema=True)
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
    last = max(worker * 10 + ROUNDS - 1 for worker in range(WRITERS))
    assert store.last_synced("fitabase", "u1", "heart_rate") == T0 + timedelta(minutes=last)
    assert [c.user_id for c in store.users("fitabase")] == ["u0", "u1"]
    store.dispose()


def test_one_batch_of_several_types_and_devices_lands_in_their_own_chunks(store) -> None:
    """A fetch mixes types, devices and hours in any order: each (type, device, hour) becomes its
    own chunk holding exactly its samples."""
    watch = heart_rate_batch("u1", 0, 3 * 720)  # three hours every 5 s
    phone = heart_rate_batch("u1", 2, 3 * 720, device="phone")
    steps = make_batch(provider="fitabase", user_id="u1", data_type="steps",
                       timestamps=pd.DatetimeIndex(T0 + pd.to_timedelta(np.arange(180), "min")),
                       values=np.arange(180) % 50, unit="{steps}", device_id="phone",
                       duration_s=60.0)  # fmt: skip
    batch = concat([watch, steps, phone]).sample(frac=1.0, random_state=3)
    commit(store, batch.reset_index(drop=True))
    found = store.read_chunks("fitabase", DAY)
    assert sorted((c.data_type, c.device_id) for c in found) == sorted(
        [("heart_rate", "fitbit")] * 3 + [("heart_rate", "phone")] * 3 + [("steps", "phone")] * 3
    )
    for chunk in found:
        assert chunk.hour_us <= chunk.samples.ts_us.min()
        assert chunk.samples.ts_us.max() < chunk.hour_us + 3_600_000_000
    stored = store.read_records("fitabase", DAY)
    assert identities(stored) == identities(batch)
    merged = stored.merge(batch, on=["data_type", "ts", "device_id"], suffixes=("", "_sent"))
    assert len(merged) == len(batch) and (merged["value"] == merged["value_sent"]).all()
