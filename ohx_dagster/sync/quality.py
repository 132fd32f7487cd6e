"""Data-quality rules the asset checks apply, as plain functions of record and aggregate frames."""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from ohx_dagster.core.models import PLAUSIBLE_RANGES, HealthDataType
from ohx_dagster.core.records import rows_by

LINK_TOLERANCE: Final = pd.Timedelta(seconds=60)


def implausible_values(records: pd.DataFrame) -> dict[str, int]:
    """Per type, how many values lie outside the plausible range (ECG: per waveform sample)."""
    found: dict[str, int] = {}
    if records.empty:
        return found
    # Whole columns once, then the rows of each type (a frame copied per type was most of the
    # time, and comparing the type column with each type's name the rest).
    rows_of = rows_by(records["data_type"].to_numpy())
    value = records["value"].to_numpy(dtype="float64")
    diastolic = records["diastolic"].to_numpy(dtype="float64")
    for kind, (low, high) in PLAUSIBLE_RANGES.items():
        rows = rows_of.get(kind.value)
        if rows is None:
            continue
        if kind is HealthDataType.ECG:
            waveforms = records["samples"].to_numpy()[rows]
            values = np.concatenate([np.asarray(s, dtype="float64") for s in waveforms])
        else:
            low_values = diastolic[rows]
            values = np.concatenate([value[rows], low_values[~np.isnan(low_values)]])
        outside = int(((values < low) | (values > high)).sum())
        if outside:
            found[kind.value] = outside
    return found


def recordings_without_heart_rate(records: pd.DataFrame) -> list[str]:
    """ECG recordings and RR sessions with no heart rate of the same user within a minute."""
    missing: list[str] = []
    if records.empty:
        return missing
    # Plain arrays and one comparison per type: a day of 1 Hz heart rate is most of the rows.
    kinds = records["data_type"].to_numpy(dtype=object)
    rows_of = rows_by(kinds)
    nothing = np.zeros(0, dtype=np.int64)
    linked = np.zeros(len(kinds), dtype=bool)
    for kind in (HealthDataType.ECG, HealthDataType.RR_INTERVALS):
        linked[rows_of.get(kind.value, nothing)] = True
    if not linked.any():
        return missing
    people = records["user_id"].to_numpy(dtype=object)
    stamps = records["ts"].array.asi8
    heart_rate = np.zeros(len(kinds), dtype=bool)
    heart_rate[rows_of.get(HealthDataType.HEART_RATE.value, nothing)] = True
    tolerance = LINK_TOLERANCE.value // 1000  # microseconds, like the timestamps
    for user_id in sorted(pd.unique(people[linked])):
        mine = people == user_id
        beats = stamps[heart_rate & mine]
        if beats.size > 1 and (beats[1:] < beats[:-1]).any():
            beats = np.sort(beats)
        rows = np.flatnonzero(linked & mine)
        wanted = stamps[rows]
        if beats.size == 0:
            linked_ok = np.zeros(len(wanted), dtype=bool)
        else:
            position = np.searchsorted(beats, wanted)
            before = np.abs(wanted - beats[np.clip(position - 1, 0, None)])
            after = np.abs(beats[np.clip(position, None, beats.size - 1)] - wanted)
            linked_ok = (before <= tolerance) | (after <= tolerance)
        for row in rows[~linked_ok]:
            moment = records["ts"].iloc[row]
            missing.append(f"{user_id} {kinds[row]} at {moment.isoformat()}")
    return missing


def aggregate_inconsistencies(aggregates: pd.DataFrame) -> list[str]:
    """Rows whose statistics contradict each other (min <= mean <= max, count >= 1)."""
    if aggregates.empty:
        return []
    frame = aggregates
    bad = (
        (frame["count"] < 1)
        | (frame["min"] > frame["mean"] + 1e-9)
        | (frame["mean"] > frame["max"] + 1e-9)
    )
    return [
        f"{r.user_id} {r.data_type} {r.level} bucket {r.bucket_start_us}"
        for r in frame[bad].itertuples()
    ]
