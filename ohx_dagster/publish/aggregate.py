"""Hourly and daily statistics per user and type, computed vectorized with pandas.

Buckets never mix users (the seed's aggregator did). Buckets are the person's own clock
(ohx_dagster/core/localdays.py): a daily bucket is their local calendar day (23 or 25 hours long
across a DST change, shorter or longer on the day their zone changed), an hourly bucket one hour of
their wall clock (in Asia/Kolkata these begin at half past a UTC hour), so "Tuesday's steps" is the
Tuesday the person lived, and every sample is in exactly one hour and one day of its person.

Steps are counted once per person: when two devices (a phone and a watch) both count the same
local hour's steps, the hour's steps come from the device that counted the most, as HealthKit and
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

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final, cast
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ohx_dagster.core.datatypes import DATA_TYPES
from ohx_dagster.core.localdays import Calendar, own_day_bounds, own_days
from ohx_dagster.core.models import AggregationLevel, DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import HOUR_US, from_us
from ohx_dagster.storage.schema import AGGREGATE_COLUMNS

if TYPE_CHECKING:
    from ohx_dagster.storage.record_tables import Chunk

HOURLY_KEYS: Final = ["provider", "user_id", "data_type", "bucket_start_us", "bucket_end_us"]
# A person's clock: their zone history (a config), or one zone for every day (tests, imports).
Clock = HealthSyncConfig | ZoneInfo | Calendar
UTC_CLOCK: Final = Calendar("UTC")


def _calendar(zones: Mapping[str, Clock], user_id: object) -> Calendar:
    found = zones.get(str(user_id))
    return UTC_CLOCK if found is None else Calendar.of(found)


def _offsets(frame: pd.DataFrame) -> np.ndarray:
    """Each record's own UTC offset in minutes, NaN where it has none."""
    if "utc_offset_min" not in frame:
        return np.full(len(frame), np.nan)
    return frame["utc_offset_min"].to_numpy(dtype="float64", na_value=np.nan)


def _groups(frame: pd.DataFrame) -> Iterable[tuple[str, str, np.ndarray]]:
    """(user, type, row numbers) of the frame's records."""
    users = frame["user_id"].to_numpy(dtype=object)
    kinds = frame["data_type"].to_numpy(dtype=object)
    for user_id, kind in dict.fromkeys(zip(users.tolist(), kinds.tolist(), strict=True)):
        yield str(user_id), str(kind), np.flatnonzero((users == user_id) & (kinds == kind))


def _hour_columns(frame: pd.DataFrame, zones: Mapping[str, Clock]) -> pd.DataFrame:
    """The frame with each row's local hour as bucket_start_us, bucket_end_us and the offset
    it is written with as bucket_offset_min."""
    starts = np.zeros(len(frame), dtype="int64")
    ends = np.zeros(len(frame), dtype="int64")
    offsets = np.zeros(len(frame), dtype="int64")
    stamps = frame["ts"].dt.as_unit("us").astype("int64").to_numpy()
    own = _offsets(frame)
    for user_id, kind, rows in _groups(frame):
        calendar = _calendar(zones, user_id)
        starts[rows], ends[rows], offsets[rows] = calendar.record_hours(
            kind, stamps[rows], own[rows]
        )
    return frame.assign(bucket_start_us=starts, bucket_end_us=ends, bucket_offset_min=offsets)


# ECG waveforms are published as recordings, not as statistics.
AGGREGATED_TYPES: Final = frozenset(k for k, facts in DATA_TYPES.items() if facts.aggregated)


def empty_aggregates() -> pd.DataFrame:
    return pd.DataFrame(columns=AGGREGATE_COLUMNS)


DUPLICATE_WINDOW: Final = timedelta(seconds=60)
# Within these differences two apps' readings are the same reading (units as stored: kg, mmHg,
# Cel, %): about the resolution of a home scale, cuff, thermometer and pulse oximeter.
DUPLICATE_TOLERANCE: Final[dict[str, float]] = {
    kind.value: facts.duplicate_tolerance
    for kind, facts in DATA_TYPES.items()
    if facts.duplicate_tolerance is not None
}
METHOD_PREFERENCE: Final[dict[str, int]] = {"device": 0, "manual": 1, "ambiguous": 2}


def without_duplicate_readings(frame: pd.DataFrame) -> pd.DataFrame:
    """The spot readings with each reading two apps logged counted once (see the module
    docstring for the rule). Plain arrays: a person's day has a few spot readings, where pandas'
    per-row access cost more than the rule."""
    kinds = frame["data_type"].to_numpy(dtype=object)
    candidates = np.flatnonzero(np.isin(kinds, list(DUPLICATE_TOLERANCE)))
    if candidates.size < 2:
        return frame
    users = frame["user_id"].to_numpy(dtype=object)
    devices = frame["device_id"].to_numpy(dtype=object)
    stamps = frame["ts"].array.as_unit("us").asi8
    value = frame["value"].to_numpy(dtype="float64")
    missing = np.full(len(frame), np.nan)
    diastolic = frame["diastolic"].to_numpy(dtype="float64") if "diastolic" in frame else missing
    methods = frame["method"].to_numpy(dtype=object) if "method" in frame else [None] * len(frame)
    window = DUPLICATE_WINDOW // timedelta(microseconds=1)

    def same(a: int, b: int, tolerance: float) -> bool:
        if devices[a] == devices[b] or abs(value[a] - value[b]) > tolerance:
            return False
        if np.isnan(diastolic[a]) and np.isnan(diastolic[b]):
            return True
        return bool(abs(diastolic[a] - diastolic[b]) <= tolerance)

    def preference(row: int) -> tuple[int, str]:
        return METHOD_PREFERENCE.get(str(methods[row] or "device"), 3), str(devices[row])

    groups: dict[tuple[str, str], list[int]] = {}
    for row in candidates.tolist():
        groups.setdefault((users[row], kinds[row]), []).append(row)
    dropped: list[int] = []
    for (_, data_type), rows in groups.items():
        if len(rows) < 2 or len({devices[r] for r in rows}) < 2:  # one device: its own readings
            continue
        tolerance = DUPLICATE_TOLERANCE[str(data_type)]
        kept: list[int] = []  # rows counted so far, in time order
        for row in sorted(rows, key=lambda r: stamps[r]):
            twin = next(
                (
                    k
                    for k in reversed(kept)
                    if stamps[row] - stamps[k] <= window and same(k, row, tolerance)
                ),
                None,
            )
            if twin is None:
                kept.append(row)
            elif preference(row) < preference(twin):
                kept[kept.index(twin)] = row
                dropped.append(twin)
            else:
                dropped.append(row)
    if not dropped:
        return frame
    keep = np.ones(len(frame), dtype=bool)
    keep[dropped] = False
    return frame[keep]


def aggregated_records(
    records: pd.DataFrame, zones: Mapping[str, Clock] | None = None
) -> pd.DataFrame:
    """The records the statistics are computed from: no ECG, steps from one device a local hour,
    and a spot reading two apps logged counted once."""
    frame = records[records["data_type"].isin([t.value for t in AGGREGATED_TYPES])]
    frame = without_duplicate_readings(frame)
    steps = frame["data_type"] == HealthDataType.STEPS.value
    if not steps.any():
        return frame
    counted = _hour_columns(frame[steps], zones or {})
    counted = counted.drop(columns="bucket_end_us").rename(columns={"bucket_start_us": "hour"})
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


def _exact_sum(values: Iterable[float]) -> tuple[float, int]:
    """(sum, count) of the non-NaN values, the sum correctly rounded (math.fsum): the same bits
    whatever the order and however the values are split into chunks, so the statistics from
    stored chunks, from rows and from a few readings are one number each."""
    kept = [v for v in values if v == v]
    return math.fsum(kept), len(kept)


def _sum_of(values: pd.Series) -> float:
    return _exact_sum(values.to_numpy(dtype="float64").tolist())[0]


def _statistics(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=True, observed=True)
    stats = grouped.agg(
        count=("value", "size"),
        min=("value", "min"),
        max=("value", "max"),
        sum=("value", _sum_of),
        counted=("value", "count"),
        diastolic_min=("diastolic", "min"),
        diastolic_max=("diastolic", "max"),
        diastolic_sum=("diastolic", _sum_of),
        diastolic_counted=("diastolic", "count"),
        unit=("unit", "first"),
        devices=("device_id", _joined),
        methods=("method", _joined),
    )
    stats["mean"] = stats["sum"] / stats["counted"]
    stats["diastolic_mean"] = stats["diastolic_sum"] / stats["diastolic_counted"]
    order = ["count", "min", "max", "mean", "sum", "diastolic_min", "diastolic_max",
             "diastolic_mean", "unit", "devices", "methods"]  # fmt: skip
    return stats[order].reset_index()


def hourly(records: pd.DataFrame, zones: Mapping[str, Clock]) -> pd.DataFrame:
    """Statistics per (provider, user, type, local hour of the user)."""
    frame = aggregated_records(records, zones)
    if frame.empty:
        return empty_aggregates()
    frame = _hour_columns(frame, zones)
    stats = _statistics(frame, HOURLY_KEYS)
    first = frame.groupby(HOURLY_KEYS, sort=True, observed=True)["bucket_offset_min"].first()
    stats["utc_offset_min"] = first.to_numpy(dtype="int64")
    return _hourly_rows(stats)


def _hourly_rows(stats: pd.DataFrame) -> pd.DataFrame:
    """Statistics per local hour (with the offset each starts at) as aggregate rows."""
    stats["level"] = AggregationLevel.HOURLY.value
    return stats[AGGREGATE_COLUMNS]


def local_day_window(day: date, zone: Clock) -> DateRange:
    """The UTC instants of one local calendar day of a person (or in a zone)."""
    start, end = Calendar.of(zone).day_window(day)
    return DateRange(from_us(start), from_us(end))


def records_window_for_local_day(day: date) -> DateRange:
    """UTC window that holds local day `day` in every zone on Earth (UTC-12 .. UTC+14)."""
    start = datetime.combine(day, time(), tzinfo=ZoneInfo("UTC")) - timedelta(hours=14)
    return DateRange(start, start + timedelta(hours=24 + 14 + 12))


def daily(records: pd.DataFrame, zones: Mapping[str, Clock], day: date) -> pd.DataFrame:
    """Statistics per (provider, user, type) over local calendar day `day` of each user."""
    # Only the records near the day are worked on (a day of margin beyond every zone's day keeps
    # the duplicate rule's neighbours): given a month, the day cost a month's work.
    window = records_window_for_local_day(day)
    near = (records["ts"] >= window.start - timedelta(days=1)) & (
        records["ts"] < window.end + timedelta(days=1)
    )
    records = records if near.all() else records[near]
    frame = in_local_day(aggregated_records(records, zones), zones, day)
    if frame.empty:
        return empty_aggregates()
    stats = _statistics(frame, DAILY_KEYS)
    return _daily_rows(stats, zones, day, _own_offsets(frame, zones))


# (person, type) -> the own offsets of the first and the last record of their day.
OwnOffsets = dict[tuple[str, str], tuple[int, int]]


def _own_offsets(frame: pd.DataFrame, zones: Mapping[str, Clock]) -> OwnOffsets:
    """The first and last own offset of each (person, type) of a day's records that have one."""
    found: OwnOffsets = {}
    if frame.empty:
        return found
    stamps = frame["ts"].dt.as_unit("us").astype("int64").to_numpy()
    offsets = _offsets(frame)
    for user_id, kind, rows in _groups(frame):
        own = rows[_calendar(zones, user_id).own(kind, offsets[rows])]
        if own.size:
            order = own[np.argsort(stamps[own], kind="stable")]
            found[(user_id, kind)] = (int(offsets[order[0]]), int(offsets[order[-1]]))
    return found


def _daily_rows(
    stats: pd.DataFrame, zones: Mapping[str, Clock], day: date, own: OwnOffsets
) -> pd.DataFrame:
    """Statistics of local day `day` as aggregate rows: the day's bounds and the offset it
    starts at, on the clock of the records' own offsets where they have them."""
    starts, ends, offsets = [], [], []
    for user_id, kind in zip(stats["user_id"].tolist(), stats["data_type"].tolist(), strict=True):
        if (user_id, kind) in own:
            first, last = own[(user_id, kind)]
            start, end = own_day_bounds(day, first)[0], own_day_bounds(day, last)[1]
            offset = first
        else:
            calendar = _calendar(zones, user_id)
            start, end = calendar.day_window(day)
            offset = calendar.offset_min(start, day)
        starts.append(start)
        ends.append(end)
        offsets.append(offset)
    stats["level"] = AggregationLevel.DAILY.value
    stats["bucket_start_us"] = np.array(starts, dtype="int64")
    stats["bucket_end_us"] = np.array(ends, dtype="int64")
    stats["utc_offset_min"] = np.array(offsets, dtype="int64")
    return stats[AGGREGATE_COLUMNS].reset_index(drop=True)


def _per_person_and_type(series: pd.Series) -> Iterator[tuple[tuple[str, str], Any]]:
    """The items of a series grouped by ["user_id", "data_type"] (pandas types their keys as
    Hashable)."""
    return cast("Iterator[tuple[tuple[str, str], Any]]", series.items())


def count_mismatches(
    records: pd.DataFrame, hourly_stats: pd.DataFrame, zones: Mapping[str, Clock] | None = None
) -> list[str]:
    """Per person and type, hourly counts that do not add up to the records the statistics
    count (ECG aside, steps from one device a local hour): a bucket lost or counted twice."""
    counted = aggregated_records(records, zones)
    expected = counted.groupby(["user_id", "data_type"]).size()
    got = (
        hourly_stats.groupby(["user_id", "data_type"])["count"].sum()
        if not hourly_stats.empty
        else expected.iloc[:0]
    )
    difference = expected.sub(got, fill_value=0)
    return [
        f"{u} {t}: {int(v):+d}" for (u, t), v in _per_person_and_type(difference[difference != 0])
    ]


# -- from stored chunks ---------------------------------------------------------------------------
#
# Publishing computes a bucket of people's statistics from one read of the store: dense series as
# chunks (one per person, type, device and UTC hour), the rest as a small record batch. Each chunk
# is cut into the person's local hours of the day (one piece, unless the person's hours do not
# begin on the UTC hour or the day begins inside the chunk), each piece reduced to one partial
# (count, min, max, sum, devices, methods) with numpy and the partials combined, so the statistics
# cost a step per piece, not a row per sample. The rows are those `hourly`, `daily` and
# `count_mismatches` give for the same records (tests/publish/test_aggregate.py compares them); only
# the order in which a bucket's values are added differs, which is exact for whole numbers (heart
# rate, steps, RR in ms) and within rounding otherwise.

_AGGREGATED_VALUES: Final = frozenset(t.value for t in AGGREGATED_TYPES)
DAILY_KEYS: Final = ["provider", "user_id", "data_type"]
# (group key without provider, device id, values, methods) of a chunk or the part of it counted.
Part = tuple[tuple, str, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Piece:
    """The samples of one stored chunk inside one local hour of its person."""

    user_id: str
    data_type: str
    device_id: str
    start_us: int  # the local hour
    end_us: int
    values: np.ndarray
    methods: np.ndarray
    offset_min: int  # the offset the hour is written with


def _labels(values: np.ndarray) -> set[str]:
    """The distinct non-empty labels of a chunk's samples (one comparison pass when constant)."""
    if values.size and (values == values[0]).all():
        return {str(values[0])} if values[0] else set()
    return {str(v) for v in values if v}


def local_pieces(chunks: Sequence[Chunk], zones: Mapping[str, Clock], day: date) -> list[Piece]:
    """The aggregated chunks' samples of each person's local day `day`, cut into their local
    hours (no ECG)."""
    pieces: list[Piece] = []
    hours: dict[str, tuple[int, int, np.ndarray]] = {}
    for chunk in chunks:
        if chunk.data_type not in _AGGREGATED_VALUES or not len(chunk.samples):
            continue
        calendar = _calendar(zones, chunk.user_id)
        if chunk.data_type in calendar.own_offsets:
            pieces += _own_pieces(chunk, day)
            continue
        if chunk.user_id not in hours:
            hours[chunk.user_id] = (*calendar.day_window(day), calendar.hour_bounds(day))
        first, last, bounds = hours[chunk.user_id]
        hour, samples = chunk.hour_us, chunk.samples
        if hour >= last or hour + HOUR_US <= first:
            continue
        at = int(np.searchsorted(bounds, hour))
        if at + 1 < bounds.size and bounds[at] == hour and bounds[at + 1] == hour + HOUR_US:
            pieces.append(Piece(chunk.user_id, chunk.data_type, chunk.device_id, hour,
                                hour + HOUR_US, samples.value, samples.method,
                                calendar.offset_min(hour, day)))  # fmt: skip
            continue
        inside = np.flatnonzero((samples.ts_us >= first) & (samples.ts_us < last))
        if not inside.size:
            continue
        slots = np.searchsorted(bounds, samples.ts_us[inside], side="right") - 1
        for slot in np.unique(slots).tolist():
            rows = inside[slots == slot]
            start = int(bounds[slot])
            pieces.append(Piece(chunk.user_id, chunk.data_type, chunk.device_id,
                                start, int(bounds[slot + 1]), samples.value[rows],
                                samples.method[rows], calendar.offset_min(start, day)))  # fmt: skip
    return pieces


def _own_pieces(chunk: Chunk, day: date) -> list[Piece]:
    """A chunk whose samples carry their own offsets, cut into the local hours of those offsets
    that fall on day `day`."""
    samples = chunk.samples
    offsets = samples.utc_offset_min.astype("int64")
    inside = np.flatnonzero(own_days(samples.ts_us, offsets) == day.toordinal())
    if not inside.size:
        return []
    shift = offsets[inside] * 60_000_000
    local = samples.ts_us[inside] + shift
    starts = local - local % HOUR_US - shift
    pieces = []
    for start, offset in sorted(set(zip(starts.tolist(), offsets[inside].tolist(), strict=True))):
        rows = inside[(starts == start) & (offsets[inside] == offset)]
        pieces.append(Piece(chunk.user_id, chunk.data_type, chunk.device_id, start,
                            start + HOUR_US, samples.value[rows], samples.method[rows],
                            offset))  # fmt: skip
    return pieces


def counted_pieces(pieces: Sequence[Piece]) -> list[Piece]:
    """The pieces the statistics count: per person and local hour the steps of the device that
    counted the most (equal totals: the first device id), as `aggregated_records`."""
    totals: dict[tuple[str, int, str], float] = {}
    for piece in pieces:
        if piece.data_type == HealthDataType.STEPS.value:
            key = (piece.user_id, piece.start_us, piece.device_id)
            totals[key] = totals.get(key, 0.0) + float(piece.values.sum())
    found: dict[tuple[str, int], list[tuple[float, str]]] = {}
    for (user_id, start, device_id), total in totals.items():
        found.setdefault((user_id, start), []).append((-total, device_id))
    best = {(user, start, min(devices)[1]) for (user, start), devices in found.items()}
    return [
        p
        for p in pieces
        if p.data_type != HealthDataType.STEPS.value or (p.user_id, p.start_us, p.device_id) in best
    ]


def _combine(provider: str, parts: Iterable[Part], keys: list[str]) -> pd.DataFrame:
    """`_statistics` of the samples of these parts, grouped by their keys."""
    found: dict[tuple, list] = {}
    for key, device_id, values, methods in parts:
        if not values.size:
            continue
        low, high = float(values.min()), float(values.max())
        entry = found.get(key)
        if entry is None:
            found[key] = [values.size, low, high, [values], {device_id} - {""}, _labels(methods)]
            continue
        entry[0] += values.size
        entry[1], entry[2] = min(entry[1], low), max(entry[2], high)
        entry[3].append(values)
        entry[4] |= {device_id} - {""}
        entry[5] |= _labels(methods)
    if not found:
        return pd.DataFrame()
    ordered = sorted(found)
    rows = [found[key] for key in ordered]
    count = np.array([r[0] for r in rows], dtype="int64")
    sums = np.array([_exact_sum(np.concatenate(r[3]).tolist())[0] for r in rows], dtype="float64")
    columns: dict[str, object] = {"provider": [provider] * len(ordered)}
    for position, name in enumerate(keys[1:]):
        columns[name] = [key[position] for key in ordered]
    frame = pd.DataFrame(
        {
            **columns,
            "count": count,
            "min": np.array([r[1] for r in rows], dtype="float64"),
            "max": np.array([r[2] for r in rows], dtype="float64"),
            "mean": sums / count,
            "sum": sums,
            "diastolic_min": np.nan,
            "diastolic_max": np.nan,
            "diastolic_mean": np.nan,
            "unit": [HealthDataType(key[1]).canonical_unit for key in ordered],
            "devices": [",".join(sorted(r[4])) for r in rows],
            "methods": [",".join(sorted(r[5])) for r in rows],
        }
    )
    for name in keys[3:]:  # the bucket bounds
        frame[name] = frame[name].astype("int64")
    return frame


def _sparse_statistics(records: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`_statistics` of already counted sparse records (a few a person and day, where a pandas
    grouping costs more than the arithmetic), row for row the same; empty frame: none."""
    if records.empty:
        return pd.DataFrame()
    groups: dict[tuple, list[int]] = {}
    for row, key in enumerate(zip(*(records[k].tolist() for k in keys), strict=True)):
        groups.setdefault(key, []).append(row)
    value = records["value"].to_numpy(dtype="float64").tolist()
    diastolic = records["diastolic"].to_numpy(dtype="float64").tolist()
    unit, device, method = (records[c].tolist() for c in ("unit", "device_id", "method"))
    nan = float("nan")
    rows = []
    for key in sorted(groups):
        at = groups[key]
        values = [value[i] for i in at if value[i] == value[i]]
        lows = [diastolic[i] for i in at if diastolic[i] == diastolic[i]]
        total, count = _exact_sum(value[i] for i in at)
        low_total, low_count = _exact_sum(lows)
        units = [unit[i] for i in at if isinstance(unit[i], str)]
        rows.append(
            (*key, len(at), min(values, default=nan), max(values, default=nan),
             total / count if count else nan, total,
             min(lows, default=nan), max(lows, default=nan),
             low_total / low_count if low_count else nan,
             units[0] if units else None,
             ",".join(sorted({str(device[i]) for i in at if device[i]})),
             ",".join(sorted({str(method[i]) for i in at if method[i]})))
        )  # fmt: skip
    names = [*keys, "count", "min", "max", "mean", "sum", "diastolic_min", "diastolic_max",
             "diastolic_mean", "unit", "devices", "methods"]  # fmt: skip
    return pd.DataFrame({name: [r[i] for r in rows] for i, name in enumerate(names)}).astype(
        {"count": "int64", **dict.fromkeys(names[len(keys) + 1 : len(keys) + 8], "float64")}
    )


def _joined_statistics(dense: pd.DataFrame, sparse: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Dense and sparse statistics in key order (a type is one or the other, never both)."""
    parts = [f for f in (dense, sparse) if not f.empty]
    if len(parts) < 2:
        return parts[0].reset_index(drop=True) if parts else pd.DataFrame()
    return pd.concat(parts, ignore_index=True).sort_values(keys, kind="stable", ignore_index=True)


def in_local_day(records: pd.DataFrame, zones: Mapping[str, Clock], day: date) -> pd.DataFrame:
    """The records inside their person's local day `day`."""
    if records.empty:
        return records
    inside = np.zeros(len(records), dtype=bool)
    stamps = records["ts"].dt.as_unit("us").astype("int64").to_numpy()
    offsets = _offsets(records)
    for user_id, kind, rows in _groups(records):
        inside[rows] = _calendar(zones, user_id).in_day(kind, stamps[rows], offsets[rows], day)
    return records[inside]


def bucket_statistics(
    provider: str,
    chunks: Sequence[Chunk],
    sparse: pd.DataFrame,
    zones: Mapping[str, Clock],
    day: date,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(hourly, daily, count mismatches) of one read of a bucket of people around day partition
    `day`: each person's local hours and local day `day` (`hourly`, `daily` and
    `count_mismatches` of the records inside it), computed from the chunks without a row per
    sample."""
    pieces = counted_pieces(local_pieces(chunks, zones, day))
    sparse_day = sparse
    if not sparse.empty:
        sparse_day = aggregated_records(in_local_day(sparse, zones, day), zones)
        if not sparse_day.empty:
            sparse_day = _hour_columns(sparse_day, zones)
    dense = _combine(
        provider,
        (((p.user_id, p.data_type, p.start_us, p.end_us), p.device_id, p.values, p.methods)
         for p in pieces),
        HOURLY_KEYS,
    )  # fmt: skip
    stats = _joined_statistics(dense, _sparse_statistics(sparse_day, HOURLY_KEYS), HOURLY_KEYS)
    hourly_stats = empty_aggregates() if stats.empty else _hourly_rows(_with_hour_offsets(
        stats, pieces, sparse_day))  # fmt: skip
    # The check: the samples counted per person and type against the hourly counts.
    expected: dict[tuple[str, str], int] = {}
    for piece in pieces:
        key = (piece.user_id, piece.data_type)
        expected[key] = expected.get(key, 0) + int(piece.values.size)
    if not sparse_day.empty:
        for key, size in _per_person_and_type(sparse_day.groupby(["user_id", "data_type"]).size()):
            expected[key] = expected.get(key, 0) + int(size)
    got: dict[tuple[str, str], int] = {}
    if not hourly_stats.empty:
        counts = hourly_stats.groupby(["user_id", "data_type"])["count"].sum()
        for key, size in _per_person_and_type(counts):
            got[key] = int(size)
    mismatches = [
        f"{u} {t}: {expected.get((u, t), 0) - got.get((u, t), 0):+d}"
        for u, t in sorted(set(expected) | set(got))
        if expected.get((u, t), 0) != got.get((u, t), 0)
    ]
    # Daily: the same pieces and readings, by person and type.
    people = {p.user_id for p in pieces} | set(
        sparse_day["user_id"] if not sparse_day.empty else ()
    )
    if not people:
        return hourly_stats, empty_aggregates(), mismatches
    dense = _combine(
        provider,
        (((p.user_id, p.data_type), p.device_id, p.values, p.methods) for p in pieces),
        DAILY_KEYS,
    )
    daily_sparse = sparse_day.drop(
        columns=["bucket_start_us", "bucket_end_us", "bucket_offset_min"], errors="ignore"
    )
    stats = _joined_statistics(dense, _sparse_statistics(daily_sparse, DAILY_KEYS), DAILY_KEYS)
    if stats.empty:
        return hourly_stats, empty_aggregates(), mismatches
    own = _own_offsets(daily_sparse, zones)
    for piece in sorted(pieces, key=lambda p: p.start_us):
        if piece.data_type in _calendar(zones, piece.user_id).own_offsets:
            key = (piece.user_id, piece.data_type)
            own[key] = (own.get(key, (piece.offset_min,))[0], piece.offset_min)
    return hourly_stats, _daily_rows(stats, zones, day, own), mismatches


def _with_hour_offsets(
    stats: pd.DataFrame, pieces: Sequence[Piece], sparse_day: pd.DataFrame
) -> pd.DataFrame:
    """Hourly statistics with the offset each hour is written with (its first piece's or
    reading's)."""
    found: dict[tuple, int] = {}
    for p in pieces:
        found.setdefault((p.user_id, p.data_type, p.start_us, p.end_us), p.offset_min)
    if not sparse_day.empty:
        columns = (sparse_day[k].tolist() for k in [*HOURLY_KEYS[1:], "bucket_offset_min"])
        for user_id, kind, start, end, offset in zip(*columns, strict=True):
            found.setdefault((user_id, kind, start, end), int(offset))
    keys = zip(*(stats[k].tolist() for k in HOURLY_KEYS[1:]), strict=True)
    stats["utc_offset_min"] = np.array([found[key] for key in keys], dtype="int64")
    return stats
