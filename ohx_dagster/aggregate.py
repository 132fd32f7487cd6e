"""Hourly and daily statistics per user and type, computed vectorized with pandas.

Buckets never mix users (the seed's aggregator did). Hourly buckets are UTC hours; daily buckets are
the user's local calendar days (23 or 25 hours long across a DST change), so "Tuesday's steps" is
the Tuesday the person lived.

Steps are counted once per person: when two devices (a phone and a watch) both count the same
hour's steps, the hour's steps come from the device that counted the most, as HealthKit and
Health Connect resolve overlapping sources. Every device's records stay in the store and in the
FHIR series; only the statistics choose.

A spot reading logged by two apps (a weigh-in the scale's app and a second app both record) is
counted once: two readings of one person and type (weight, blood pressure, body temperature,
SpO2) from different devices or apps, at most DUPLICATE_WINDOW apart, whose values (and
diastolic values) differ by at most the type's DUPLICATE_TOLERANCE, are one reading. The one
counted is the device's over a hand entry over an ambiguous one (METHOD_PREFERENCE), then the
smallest device id. Readings of one device are never merged: a cuff that measures three times a
minute apart took three readings. Both stay in the store and are published as their own
Observations with their devices; only the statistics count one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ohx_dagster.models import AggregationLevel, DateRange, HealthDataType
from ohx_dagster.schema import aggregates
from ohx_dagster.times import to_us

HOUR_US: Final = 3_600_000_000
AGGREGATE_COLUMNS: Final[list[str]] = [c.name for c in aggregates.columns]
# ECG waveforms are published as recordings, not as statistics.
AGGREGATED_TYPES: Final = frozenset(HealthDataType) - {HealthDataType.ECG}


def empty_aggregates() -> pd.DataFrame:
    return pd.DataFrame(columns=AGGREGATE_COLUMNS)


DUPLICATE_WINDOW: Final = timedelta(seconds=60)
# Within these differences two apps' readings are the same reading (units as stored: kg, mmHg,
# Cel, %): about the resolution of a home scale, cuff, thermometer and pulse oximeter.
DUPLICATE_TOLERANCE: Final[dict[str, float]] = {
    HealthDataType.WEIGHT.value: 0.1,
    HealthDataType.BLOOD_PRESSURE.value: 1.0,
    HealthDataType.TEMPERATURE.value: 0.1,
    HealthDataType.SPO2.value: 1.0,
}
METHOD_PREFERENCE: Final[dict[str, int]] = {"device": 0, "manual": 1, "ambiguous": 2}


def _same_reading(a: pd.Series, b: pd.Series, tolerance: float) -> bool:
    if a["device_id"] == b["device_id"] or abs(a["value"] - b["value"]) > tolerance:
        return False
    diastolic_a, diastolic_b = a.get("diastolic"), b.get("diastolic")
    if pd.isna(diastolic_a) and pd.isna(diastolic_b):
        return True
    return bool(abs(diastolic_a - diastolic_b) <= tolerance)


def _preference(row: pd.Series) -> tuple[int, str]:
    return METHOD_PREFERENCE.get(str(row.get("method") or "device"), 3), str(row["device_id"])


def without_duplicate_readings(frame: pd.DataFrame) -> pd.DataFrame:
    """The spot readings with each reading two apps logged counted once (see the module
    docstring for the rule)."""
    sparse = frame["data_type"].isin(list(DUPLICATE_TOLERANCE))
    if sparse.sum() < 2:
        return frame
    if not frame.index.is_unique:
        frame = frame.reset_index(drop=True)
        sparse = sparse.reset_index(drop=True)
    dropped: list[int] = []
    window = pd.Timedelta(DUPLICATE_WINDOW)
    for (_, data_type), group in frame[sparse].groupby(["user_id", "data_type"], sort=False):
        if len(group) < 2:
            continue
        tolerance = DUPLICATE_TOLERANCE[str(data_type)]
        kept: list[int] = []  # indices counted so far, in time order
        for index, row in group.sort_values("ts", kind="stable").iterrows():
            twin = next(
                (
                    k
                    for k in reversed(kept)
                    if row["ts"] - group.at[k, "ts"] <= window
                    and _same_reading(group.loc[k], row, tolerance)
                ),
                None,
            )
            if twin is None:
                kept.append(index)
            elif _preference(row) < _preference(group.loc[twin]):
                kept[kept.index(twin)] = index
                dropped.append(twin)
            else:
                dropped.append(index)
    return frame.drop(index=dropped) if dropped else frame


def aggregated_records(records: pd.DataFrame) -> pd.DataFrame:
    """The records the statistics are computed from: no ECG, steps from one device an hour, and
    a spot reading two apps logged counted once."""
    frame = records[records["data_type"].isin([t.value for t in AGGREGATED_TYPES])]
    frame = without_duplicate_readings(frame)
    steps = frame["data_type"] == HealthDataType.STEPS.value
    if not steps.any():
        return frame
    counted = frame[steps].assign(hour=frame.loc[steps, "ts"].dt.floor("h"))
    totals = counted.groupby(["user_id", "hour", "device_id"], sort=True)["value"].sum()
    # Largest total wins; equal totals go to the first device id in sort order (deterministic).
    best = totals.reset_index().sort_values(
        ["user_id", "hour", "value", "device_id"], ascending=[True, True, False, True]
    )
    best = best.drop_duplicates(["user_id", "hour"])[["user_id", "hour", "device_id"]]
    kept = counted.merge(best, on=["user_id", "hour", "device_id"], how="inner")
    return pd.concat([frame[~steps], kept.drop(columns="hour")], ignore_index=True)


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values if v}))


def _statistics(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=True, observed=True)
    stats = grouped.agg(
        count=("value", "size"),
        min=("value", "min"),
        max=("value", "max"),
        mean=("value", "mean"),
        sum=("value", "sum"),
        diastolic_min=("diastolic", "min"),
        diastolic_max=("diastolic", "max"),
        diastolic_mean=("diastolic", "mean"),
        unit=("unit", "first"),
        devices=("device_id", _joined),
        methods=("method", _joined),
    )
    return stats.reset_index()


def _offset_minutes(zone: ZoneInfo, starts_us: np.ndarray) -> np.ndarray:
    moments = pd.to_datetime(starts_us, unit="us", utc=True).tz_convert(zone)
    return np.array([int(m.utcoffset().total_seconds() // 60) for m in moments], dtype="int64")


def hourly(records: pd.DataFrame, zones: Mapping[str, ZoneInfo]) -> pd.DataFrame:
    """Statistics per (provider, user, type, UTC hour); offsets are the user's local offset."""
    frame = aggregated_records(records)
    if frame.empty:
        return empty_aggregates()
    frame = frame.assign(bucket_start_us=frame["ts"].dt.floor("h").astype("int64"))
    stats = _statistics(frame, ["provider", "user_id", "data_type", "bucket_start_us"])
    stats["level"] = AggregationLevel.HOURLY.value
    stats["bucket_end_us"] = stats["bucket_start_us"] + HOUR_US
    stats["utc_offset_min"] = 0
    for user_id, rows in stats.groupby("user_id").groups.items():
        zone = zones.get(str(user_id), ZoneInfo("UTC"))
        starts = stats.loc[rows, "bucket_start_us"].to_numpy()
        stats.loc[rows, "utc_offset_min"] = _offset_minutes(zone, starts)
    return stats[AGGREGATE_COLUMNS]


def local_day_window(day: date, zone: ZoneInfo) -> DateRange:
    """The UTC instants of one local calendar day in a zone."""
    start = datetime.combine(day, time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    return DateRange(start, end)


def records_window_for_local_day(day: date) -> DateRange:
    """UTC window that holds local day `day` in every zone on Earth (UTC-12 .. UTC+14)."""
    start = datetime.combine(day, time(), tzinfo=ZoneInfo("UTC")) - timedelta(hours=14)
    return DateRange(start, start + timedelta(hours=24 + 14 + 12))


def daily(records: pd.DataFrame, zones: Mapping[str, ZoneInfo], day: date) -> pd.DataFrame:
    """Statistics per (provider, user, type) over local calendar day `day` in each user's zone."""
    frame = aggregated_records(records)
    if frame.empty:
        return empty_aggregates()
    # Each user's local day as UTC bounds, then one grouping for all users (not one per user).
    users = pd.Index(frame["user_id"].unique())
    user_zones = [zones.get(str(user_id), ZoneInfo("UTC")) for user_id in users]
    windows = [local_day_window(day, zone) for zone in user_zones]
    bounds = pd.DataFrame(
        {
            # Timestamp.value is nanoseconds whatever the unit: use the store's exact conversion.
            "bucket_start_us": [to_us(w.start) for w in windows],
            "bucket_end_us": [to_us(w.end) for w in windows],
            "utc_offset_min": [
                int(w.start.astimezone(zone).utcoffset().total_seconds() // 60)
                for w, zone in zip(windows, user_zones, strict=True)
            ],
        },
        index=users,
    )
    stamps = frame["ts"].dt.as_unit("us").astype("int64")
    inside = (stamps >= frame["user_id"].map(bounds["bucket_start_us"])) & (
        stamps < frame["user_id"].map(bounds["bucket_end_us"])
    )
    if not inside.any():
        return empty_aggregates()
    stats = _statistics(frame[inside], ["provider", "user_id", "data_type"])
    stats["level"] = AggregationLevel.DAILY.value
    stats = stats.join(bounds, on="user_id")
    return stats[AGGREGATE_COLUMNS].reset_index(drop=True)


def count_mismatches(records: pd.DataFrame, hourly_stats: pd.DataFrame) -> list[str]:
    """Per person and type, hourly counts that do not add up to the records the statistics
    count (ECG aside, steps from one device an hour): a bucket lost or counted twice."""
    counted = aggregated_records(records)
    expected = counted.groupby(["user_id", "data_type"]).size()
    got = (
        hourly_stats.groupby(["user_id", "data_type"])["count"].sum()
        if not hourly_stats.empty
        else expected.iloc[:0]
    )
    difference = expected.sub(got, fill_value=0)
    return [f"{u} {t}: {int(v):+d}" for (u, t), v in difference[difference != 0].items()]
