"""Aggregation on the real Fitabase data, checked against independent pandas computations over
the CSV files, plus the edges: users never mixed, local days across clock changes."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.records import concat, make_batch
from ohx_dagster.core.times import HOUR_US, to_us
from ohx_dagster.providers.fitabase import FitabaseSource, parse_dirs
from ohx_dagster.publish import aggregate

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
CHICAGO = "America/Chicago"
HOUR = timedelta(hours=1)


def read_csv(path: Path, time_column: str) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"Id": "string"}).dropna(how="all")
    table["local"] = pd.to_datetime(table[time_column], format=TIME_FORMAT)
    return table


def zones_of(source: FitabaseSource) -> dict[str, ZoneInfo]:
    return {u.user_id: u.zone for u in source.discover_users()}


def hourly_heart_rate_by_pandas(path: Path, zone: str) -> pd.DataFrame:
    """Per Id and hour: count, min, max, mean, with the hour's start in UTC microseconds."""
    table = read_csv(path, "Time")
    table["hour"] = table["local"].dt.floor("h")
    stats = table.groupby(["Id", "hour"])["Value"].agg(["count", "min", "max", "mean"])
    stats = stats.reset_index()
    start = stats["hour"].dt.tz_localize(zone).dt.tz_convert("UTC").dt.as_unit("us")
    stats["bucket_start_us"] = start.astype("int64")
    return stats.rename(columns={"Id": "user_id"}).drop(columns="hour")


def compare_hourly(stats: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = stats[stats["data_type"] == "heart_rate"].set_index(["user_id", "bucket_start_us"])
    want = expected.set_index(["user_id", "bucket_start_us"])
    assert sorted(got.index) == sorted(want.index)
    got = got.loc[want.index]
    np.testing.assert_array_equal(got["count"].to_numpy(), want["count"].to_numpy())
    np.testing.assert_array_equal(got["min"].to_numpy(), want["min"].to_numpy())
    np.testing.assert_array_equal(got["max"].to_numpy(), want["max"].to_numpy())
    np.testing.assert_allclose(got["mean"].to_numpy(), want["mean"].to_numpy(), rtol=1e-12)
    assert (got["bucket_end_us"] - got.index.get_level_values(1) == HOUR_US).all()
    assert (got["unit"] == "/min").all()
    assert (got["level"] == "hourly").all()


def test_hourly_heart_rate_equals_pandas_over_the_csv(fitabase_dir: Path) -> None:
    source = FitabaseSource([fitabase_dir], "UTC")
    stats = aggregate.hourly(source.records, zones_of(source))
    expected = hourly_heart_rate_by_pandas(fitabase_dir / "heartrate_seconds_merged.csv", "UTC")
    assert len(expected) > 20
    compare_hourly(stats, expected)
    assert (stats["utc_offset_min"] == 0).all()


def test_hourly_heart_rate_in_chicago_keeps_the_local_offset(fitabase_dir: Path) -> None:
    source = FitabaseSource([fitabase_dir], CHICAGO)
    stats = aggregate.hourly(source.records, zones_of(source))
    expected = hourly_heart_rate_by_pandas(fitabase_dir / "heartrate_seconds_merged.csv", CHICAGO)
    compare_hourly(stats, expected)
    assert (stats["utc_offset_min"] == -300).all()  # April and May: CDT


def test_hourly_heart_rate_of_both_exports(shared_data: Path) -> None:
    dirs = os.pathsep.join(str(shared_data / name) for name in ("fitabase", "fitabase-may"))
    source = FitabaseSource(parse_dirs(dirs), "UTC")
    stats = aggregate.hourly(source.records, zones_of(source))
    expected = pd.concat(
        [
            hourly_heart_rate_by_pandas(shared_data / name / "heartrate_seconds_merged.csv", "UTC")
            for name in ("fitabase", "fitabase-may")
        ],
        ignore_index=True,
    )
    assert set(expected["user_id"]) == {"2022484408", "8877689391"}
    compare_hourly(stats, expected)


def test_hourly_steps_never_mix_users(fitabase_dir: Path) -> None:
    source = FitabaseSource([fitabase_dir], "UTC")
    stats = aggregate.hourly(source.records, zones_of(source))
    steps = stats[stats["data_type"] == "steps"]
    table = read_csv(fitabase_dir / "hourlySteps_merged.csv", "ActivityHour")
    # One bucket per (user, hour) row of the export, holding exactly that user's steps.
    assert len(steps) == len(table) == 22_099
    assert (steps["count"] == 1).all()
    expected = table.groupby("Id")["StepTotal"].sum()
    got = steps.groupby("user_id")["sum"].sum()
    pd.testing.assert_series_equal(
        got.sort_index(), expected.astype("float64"), check_names=False, check_index_type=False
    )


def test_daily_steps_per_local_day_equal_the_csv_sums(fitabase_dir: Path) -> None:
    source = FitabaseSource([fitabase_dir], CHICAGO)
    # The steps alone: each of the 31 days aggregates these, not the export's heart rates too.
    records = source.records
    records = records[records["data_type"] == "steps"]
    zones = zones_of(source)
    table = read_csv(fitabase_dir / "hourlySteps_merged.csv", "ActivityHour")
    table["day"] = table["local"].dt.date
    expected = table.groupby(["day", "Id"])["StepTotal"].agg(["sum", "count"])
    days = sorted(table["day"].unique())
    assert len(days) == 31
    rows = []
    for day in days:
        daily = aggregate.daily(records, zones, day)
        steps = daily[daily["data_type"] == "steps"]
        window = aggregate.local_day_window(day, ZoneInfo(CHICAGO))
        assert (steps["bucket_start_us"] == int(window.start.timestamp() * 1_000_000)).all()
        assert (steps["utc_offset_min"] == -300).all()
        rows.extend((day, r.user_id, r.sum, r.count) for r in steps.itertuples())
    got = pd.DataFrame(rows, columns=["day", "Id", "sum", "count"]).set_index(["day", "Id"])
    assert sorted(got.index) == sorted(expected.index)
    got = got.loc[expected.index]
    np.testing.assert_array_equal(got["sum"].to_numpy(), expected["sum"].to_numpy())
    np.testing.assert_array_equal(got["count"].to_numpy(), expected["count"].to_numpy())


def test_daily_steps_equal_fitbits_own_daily_totals_for_full_days(fitabase_dir: Path) -> None:
    """Fitbit's dailyActivity TotalSteps, where the day has all 24 hourly rows, match our sum."""
    source = FitabaseSource([fitabase_dir], CHICAGO)
    day = date(2016, 4, 20)
    daily = aggregate.daily(source.records, zones_of(source), day)
    steps = daily[(daily["data_type"] == "steps") & (daily["count"] == 24)]
    totals = pd.read_csv(fitabase_dir / "dailyActivity_merged.csv", dtype={"Id": "string"})
    totals = totals[totals["ActivityDate"] == "4/20/2016"].set_index("Id")["TotalSteps"]
    assert len(steps) > 20
    close = [
        abs(r.sum - totals[r.user_id]) <= 0.01 * totals[r.user_id] + 50 for r in steps.itertuples()
    ]
    assert sum(close) >= 0.9 * len(close)


def test_two_users_in_one_hour_stay_apart() -> None:
    hour = pd.Timestamp("2016-04-12T10:00:00Z")
    stamps = pd.date_range(hour, periods=60, freq="min")
    batch = concat(
        make_batch(
            provider="simulated",
            user_id=user,
            data_type="heart_rate",
            timestamps=stamps,
            values=np.full(60, value),
            unit="/min",
        )
        for user, value in (("a", 60.0), ("b", 120.0))
    )
    zones = {"a": ZoneInfo("UTC"), "b": ZoneInfo("Asia/Kolkata")}
    stats = aggregate.hourly(batch, zones).set_index("user_id")
    assert stats.loc["a", "mean"] == 60.0 and stats.loc["a", "count"] == 60
    # Kolkata's hours begin at half past a UTC hour: 10:00-11:00Z is the end of 15:00-16:00
    # local and the start of 16:00-17:00.
    kolkata = stats.loc[["b"]]
    assert list(kolkata["count"]) == [30, 30] and set(kolkata["mean"]) == {120.0}
    assert list(kolkata["bucket_start_us"]) == [
        to_us(hour - pd.Timedelta(minutes=30)),
        to_us(hour + pd.Timedelta(minutes=30)),
    ]
    assert set(kolkata["bucket_end_us"] - kolkata["bucket_start_us"]) == {HOUR_US}
    assert set(kolkata["utc_offset_min"]) == {330}
    daily = aggregate.daily(batch, zones, date(2016, 4, 12)).set_index("user_id")
    assert daily.loc["a", "max"] == 60.0 and daily.loc["b", "min"] == 120.0


@pytest.mark.parametrize(
    ("day", "hours", "offset"),
    [(date(2016, 3, 13), 23, -360), (date(2016, 11, 6), 25, -300), (date(2016, 4, 1), 24, -300)],
)
def test_local_days_across_clock_changes(day: date, hours: int, offset: int) -> None:
    zone = ZoneInfo(CHICAGO)
    window = aggregate.local_day_window(day, zone)
    stamps = pd.date_range(
        window.start - timedelta(hours=2), window.end, freq="h", inclusive="left"
    )
    batch = make_batch(
        provider="fitabase",
        user_id="u",
        data_type="steps",
        timestamps=stamps,
        values=np.full(len(stamps), 100.0),
        unit="1",
    )
    (row,) = aggregate.daily(batch, {"u": zone}, day).itertuples()
    assert row.bucket_end_us - row.bucket_start_us == hours * HOUR_US
    assert (row.count, row.sum) == (hours, 100.0 * hours)
    assert row.utc_offset_min == offset
    outer = aggregate.records_window_for_local_day(day)
    assert outer.start <= window.start and window.end <= outer.end


def test_ecg_is_not_aggregated_and_blood_pressure_keeps_diastolic() -> None:
    t0 = datetime(2016, 4, 12, 9, tzinfo=UTC)
    batch = concat(
        [
            make_batch(
                provider="s",
                user_id="u",
                data_type="ecg",
                timestamps=[t0],
                values=None,
                unit="uV",
                samples=[[1.0, 2.0]],
                sampling_rate_hz=250.0,
            ),
            make_batch(
                provider="s",
                user_id="u",
                data_type="blood_pressure",
                timestamps=[t0, t0 + timedelta(minutes=30)],
                values=[120.0, 130.0],
                diastolic=[80.0, 70.0],
                unit="mm[Hg]",
            ),
        ]
    )
    (row,) = aggregate.hourly(batch, {}).itertuples()
    assert row.data_type == "blood_pressure"
    assert (row.min, row.max, row.mean) == (120.0, 130.0, 125.0)
    assert (row.diastolic_min, row.diastolic_max, row.diastolic_mean) == (70.0, 80.0, 75.0)
    assert aggregate.hourly(batch[batch["data_type"] == "ecg"], {}).empty
    assert aggregate.daily(batch.iloc[:0], {}, date(2016, 4, 12)).empty


def _steps(user: str, device: str, stamps: list[datetime], values: list[float]) -> pd.DataFrame:
    return make_batch(
        provider="p", user_id=user, data_type="steps", timestamps=stamps, values=values,
        unit="1", device_id=device,
    )  # fmt: skip


def test_steps_of_two_devices_in_one_hour_count_once() -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    records = concat(
        [
            _steps("u", "phone", [at, at + timedelta(minutes=30)], [60, 40]),
            _steps("u", "watch", [at + timedelta(minutes=10)], [300]),
            _steps("u", "phone", [at + timedelta(hours=1)], [50]),  # the watch was off
            _steps("v", "phone", [at], [7]),  # another user is never compared
        ]
    )
    hourly = aggregate.hourly(records, {}).set_index(["user_id", "bucket_start_us"])
    nine, ten = (int(pd.Timestamp(at + timedelta(hours=h)).value // 1000) for h in (0, 1))
    assert hourly.loc[("u", nine), "sum"] == 300 and hourly.loc[("u", nine), "count"] == 1
    assert hourly.loc[("u", ten), "sum"] == 50
    assert hourly.loc[("v", nine), "sum"] == 7
    daily = aggregate.daily(records, {}, at.date()).set_index("user_id")
    assert daily.loc["u", "sum"] == 350


def test_apple_health_steps_from_phone_and_garmin_count_once_per_hour(shared_data: Path) -> None:
    # Independent of the importer: read the XML's StepCount records with a regular expression,
    # sum per source and hour, keep the larger source of each hour, add up the local day.
    from ohx_dagster.providers.apple_health import AppleHealthSource

    export = shared_data / "apple-health" / "export.xml"
    pattern = re.compile(
        r'<Record type="HKQuantityTypeIdentifierStepCount" sourceName="([^"]*)"[^>]*?'
        r'startDate="([^"]*)"[^>]*?value="([^"]*)"'
    )
    rows = [
        (source, pd.Timestamp(datetime.strptime(start, "%Y-%m-%d %H:%M:%S %z")), float(value))
        for source, start, value in pattern.findall(export.read_text(encoding="utf-8"))
    ]
    frame = pd.DataFrame(rows, columns=["source", "start", "value"])
    frame["hour"] = frame["start"].map(lambda t: t.tz_convert("UTC").floor("h"))
    frame["local_day"] = frame["start"].map(lambda t: t.date())  # the export's own +02:00
    per_source = frame.groupby(["local_day", "hour", "source"])["value"].sum()
    expected = per_source.groupby(["local_day", "hour"]).max().groupby("local_day").sum()
    both = frame.groupby("local_day")["source"].nunique()
    day = date(2017, 10, 24)
    assert both[day] == 2  # the phone and Garmin Connect both counted that day

    source = AppleHealthSource(export)
    records = source.records
    zones = {c.user_id: c.zone for c in source.discover_users()}
    daily = aggregate.daily(records[records["data_type"] == "steps"], zones, day)
    assert float(daily["sum"].iloc[0]) == expected[day]
    assert expected[day] < frame[frame["local_day"] == day]["value"].sum()


# -- a spot reading two apps logged counts once ---------------------------------------------------

NOON = datetime(2025, 6, 3, 12, tzinfo=UTC)


def _weights(device: str, moments: list[datetime], values: list[float], method="device"):
    return make_batch(provider="withings", user_id="u1", data_type="weight", timestamps=moments,
                      values=values, unit="kg", device_id=device, method=method)  # fmt: skip


def _daily_weight(batch: pd.DataFrame) -> pd.Series:
    stats = aggregate.daily(batch, {"u1": ZoneInfo("UTC")}, NOON.date())
    return stats[stats["data_type"] == "weight"].iloc[0]


def test_a_weigh_in_two_apps_logged_counts_once_and_the_device_wins() -> None:
    scale = _weights("body-scale", [NOON], [72.4])
    app = _weights("phone-app", [NOON + timedelta(seconds=40)], [72.45], method="manual")
    day = _daily_weight(concat([app, scale]))
    assert (day["count"], day["mean"], day["devices"]) == (1, 72.4, "body-scale")


def test_readings_of_one_device_or_far_apart_or_different_are_all_counted() -> None:
    repeated = _weights("cuff", [NOON, NOON + timedelta(seconds=30)], [72.4, 72.4])
    later = _weights("app", [NOON + timedelta(seconds=200)], [72.4])
    different = _weights("other", [NOON + timedelta(seconds=10)], [73.0])
    assert _daily_weight(concat([repeated, later, different]))["count"] == 4


def test_blood_pressure_twins_need_both_values_close() -> None:
    def bp(device: str, seconds: int, systolic: float, diastolic: float) -> pd.DataFrame:
        return make_batch(provider="apple_health", user_id="u1", data_type="blood_pressure",
                          timestamps=[NOON + timedelta(seconds=seconds)], values=[systolic],
                          diastolic=[diastolic], unit="mm[Hg]", device_id=device)  # fmt: skip

    same = concat([bp("cuff", 0, 120, 80), bp("app", 20, 120, 80.5)])
    assert len(aggregate.aggregated_records(same)) == 1
    other = concat([bp("cuff", 0, 120, 80), bp("app", 20, 120, 85)])
    assert len(aggregate.aggregated_records(other)) == 2


@settings(max_examples=examples(60), deadline=None)
@given(
    gaps=st.lists(st.integers(180, 6 * 3600), min_size=1, max_size=12),
    values=st.lists(st.floats(40, 150, allow_nan=False), min_size=12, max_size=12),
    shifts=st.lists(st.integers(-60, 60), min_size=12, max_size=12),
    jitter=st.lists(st.floats(-0.09, 0.09), min_size=12, max_size=12),
)
def test_a_second_app_copying_every_reading_changes_no_statistic(gaps, values, shifts, jitter):
    """Invariant: readings of one scale, each copied by a second app within 60 s and 0.1 kg, give
    the statistics of the scale alone (nothing counted twice, nothing of the scale lost)."""
    moments = [NOON - timedelta(hours=10) + timedelta(seconds=sum(gaps[: i + 1]))
               for i in range(len(gaps))]  # fmt: skip
    scale = _weights("scale", moments, [round(v, 2) for v in values[: len(gaps)]])
    copies = _weights(
        "app",
        [m + timedelta(seconds=s) for m, s in zip(moments, shifts, strict=False)],
        [round(v, 2) + j for v, j in zip(values, jitter, strict=False)][: len(gaps)],
        method="manual",
    )
    zones = {"u1": ZoneInfo("UTC")}
    alone = aggregate.hourly(scale, zones)
    both = aggregate.hourly(concat([copies, scale]), zones)
    columns = ["bucket_start_us", "count", "min", "max", "mean", "devices"]
    pd.testing.assert_frame_equal(
        both[columns].reset_index(drop=True), alone[columns].reset_index(drop=True)
    )


def _counted_once_by_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """The rule of the module docstring read row by row with pandas (as it was first written)."""
    window = pd.Timedelta(aggregate.DUPLICATE_WINDOW)

    def same(a: pd.Series, b: pd.Series, tolerance: float) -> bool:
        if a["device_id"] == b["device_id"] or abs(a["value"] - b["value"]) > tolerance:
            return False
        if pd.isna(a["diastolic"]) and pd.isna(b["diastolic"]):
            return True
        return bool(abs(a["diastolic"] - b["diastolic"]) <= tolerance)

    def preference(row: pd.Series) -> tuple[int, str]:
        return aggregate.METHOD_PREFERENCE.get(row["method"], 3), row["device_id"]

    dropped: list[int] = []
    for (_, kind), group in frame.groupby(["user_id", "data_type"], sort=False):
        kept: list[int] = []
        for index, row in group.sort_values("ts", kind="stable").iterrows():
            tolerance = aggregate.DUPLICATE_TOLERANCE[kind]
            twins = [k for k in reversed(kept) if row["ts"] - group.at[k, "ts"] <= window
                     and same(group.loc[k], row, tolerance)]  # fmt: skip
            twin = twins[0] if twins else None
            if twin is None:
                kept.append(index)
            elif preference(row) < preference(group.loc[twin]):
                kept[kept.index(twin)] = index
                dropped.append(twin)
            else:
                dropped.append(index)
    return frame.drop(index=dropped)


@settings(max_examples=examples(150), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["weight", "blood_pressure", "spo2"]),
            st.sampled_from(["scale", "app", "cuff"]),
            st.sampled_from(["device", "manual", "ambiguous"]),
            st.integers(0, 150),  # seconds: often inside one window
            st.sampled_from([90.0, 90.05, 90.5, 91.0, 95.0]),
            st.sampled_from([60.0, 60.5, 62.0]),
        ),
        max_size=14,
    )
)
def test_spot_readings_counted_once_read_as_the_rule_says(rows) -> None:
    """without_duplicate_readings on plain arrays keeps exactly the rows the rule read row by row
    with pandas keeps, whatever the mix of people, devices, methods, times and values."""
    frame = pd.DataFrame(
        rows, columns=["user_id", "data_type", "device_id", "method", "s", "value", "diastolic"]
    )
    frame["ts"] = pd.to_datetime(NOON) + pd.to_timedelta(frame.pop("s"), unit="s")
    frame.loc[frame["data_type"] != "blood_pressure", "diastolic"] = np.nan
    expected = _counted_once_by_pandas(frame)
    pd.testing.assert_frame_equal(aggregate.without_duplicate_readings(frame), expected)


def _steps_at(user: str, device: str, start: datetime, values: list[float]) -> pd.DataFrame:
    moments = [start + timedelta(minutes=i) for i in range(len(values))]
    return make_batch(provider="simulated", user_id=user, data_type="steps", timestamps=moments,
                      values=values, unit="{steps}", device_id=device, duration_s=60.0)  # fmt: skip


@pytest.mark.parametrize("day", [date(2025, 3, 9), date(2025, 3, 30)])  # New York's, Europe's DST
def test_statistics_from_chunks_equal_the_statistics_of_the_records(
    sqlite_store, day: date
) -> None:
    """What publishing computes from the stored chunks (bucket_statistics) is exactly what
    hourly, daily and count_mismatches give for the same records of each person's local day:
    five zones (Kolkata's +5:30 hours cut UTC chunks in two), steps from two devices with a tie,
    a weigh-in two apps logged, hand entries."""
    from ohx_dagster.core.models import DateRange, HealthDataType
    from ohx_dagster.core.times import to_us
    from ohx_dagster.fhir.partition import read_window
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.storage import record_tables

    window = read_window(day)
    source = SimulatedSource(6, clock=lambda: window.end)
    configs = {c.user_id: c for c in source.discover_users()}
    noon = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    one = noon + timedelta(hours=1)
    watch = source.fetch(
        configs["sim-002"], [HealthDataType.STEPS], DateRange(one, noon + 2 * HOUR)
    )
    assert not watch.empty
    extra = concat(
        [
            _steps_at("sim-001", "phone", noon, [10, 20, 30]),  # the watch counts more
            _steps_at("sim-002", "a-phone", one, [watch["value"].sum()]),  # a tie: a-phone first
            _steps_at("sim-003", "phone", noon + 2 * HOUR, [5000]),  # the phone counts more
            make_batch(provider="simulated", user_id="sim-004", data_type="weight",
                       timestamps=[noon + timedelta(hours=-5, minutes=2, seconds=30)],
                       values=[70.0], unit="kg", device_id="phone-app", method="manual"),
            make_batch(provider="simulated", user_id="sim-006", data_type="temperature",
                       timestamps=[noon + timedelta(minutes=7 * i) for i in range(40)],
                       values=36.0 + np.random.default_rng(1).random(40).round(3), unit="Cel",
                       device_id="thermometer"),  # sums that rounding could change
            make_batch(provider="simulated", user_id="sim-005", data_type="heart_rate",
                       timestamps=[noon + timedelta(seconds=1, microseconds=500_000)],
                       values=[77.5], unit="/min", device_id="", method="manual"),
        ]
    )  # fmt: skip
    sqlite_store.add_users(configs.values())
    for user_id, config in configs.items():
        batch = source.fetch(config, list(HealthDataType), window)
        batch = concat([batch, extra[extra["user_id"] == user_id]])
        sqlite_store.commit("simulated", user_id, config.zone, batch)
    start, end = to_us(window.start), to_us(window.end)
    with sqlite_store.read() as conn:
        chunks = record_tables.read_chunks(conn, "simulated", start, end)
        sparse = record_tables.read_measurements(conn, "simulated", start, end)
    zones = {u: c.zone for u, c in configs.items()}
    records = concat([record_tables.chunks_to_batch("simulated", chunks), sparse])
    in_day = aggregate.in_local_day(records, zones, day)
    hourly = aggregate.hourly(in_day, zones)
    daily = aggregate.daily(records, zones, day)
    got_hourly, got_daily, mismatches = aggregate.bucket_statistics(
        "simulated", chunks, sparse, zones, day
    )
    pd.testing.assert_frame_equal(got_hourly, hourly.reset_index(drop=True), check_exact=True)
    pd.testing.assert_frame_equal(got_daily, daily.reset_index(drop=True), check_exact=True)
    assert mismatches == aggregate.count_mismatches(in_day, hourly, zones) == []
    # The hours tile each person's day: their counts are the day's.
    per_person = hourly.groupby(["user_id", "data_type"])["count"].sum()
    assert per_person.to_dict() == daily.set_index(["user_id", "data_type"])["count"].to_dict()
    assert len(records) > 100_000, len(records)
    assert set(daily["user_id"]) == set(configs)
    assert {"manual", "device"} <= set(",".join(hourly["methods"]).split(","))
