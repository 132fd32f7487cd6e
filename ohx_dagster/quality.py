"""Data-quality rules the asset checks apply, as plain functions of record and aggregate frames."""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from ohx_dagster.models import PLAUSIBLE_RANGES, HealthDataType

LINK_TOLERANCE: Final = pd.Timedelta(seconds=60)


def implausible_values(records: pd.DataFrame) -> dict[str, int]:
    """Per type, how many values lie outside the plausible range (ECG: per waveform sample)."""
    found: dict[str, int] = {}
    if records.empty:
        return found
    # Whole columns once, then a mask per type (a frame copied per type was most of the time).
    kinds = records["data_type"].to_numpy()
    value = records["value"].to_numpy(dtype="float64")
    diastolic = records["diastolic"].to_numpy(dtype="float64")
    for kind, (low, high) in PLAUSIBLE_RANGES.items():
        rows = kinds == kind.value
        if not rows.any():
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
    kinds = records["data_type"].to_numpy()
    linked_types = [HealthDataType.ECG.value, HealthDataType.RR_INTERVALS.value]
    linked = records[np.isin(kinds, linked_types)]
    if linked.empty:
        return missing
    heart_rate = records.loc[kinds == HealthDataType.HEART_RATE.value, ["user_id", "ts"]]
    tolerance = LINK_TOLERANCE.value // 1000  # microseconds, like the int64 timestamps below
    for user_id, rows in linked.groupby("user_id"):
        user_hr = heart_rate.loc[heart_rate["user_id"] == user_id, "ts"]
        stamps = np.sort(user_hr.astype("int64").to_numpy())
        wanted = rows["ts"].astype("int64").to_numpy()
        position = np.searchsorted(stamps, wanted)
        before = np.abs(wanted - stamps[np.clip(position - 1, 0, None)]) if stamps.size else None
        after = (
            np.abs(stamps[np.clip(position, None, stamps.size - 1)] - wanted)
            if stamps.size
            else None
        )
        linked_ok = (
            np.zeros(len(wanted), dtype=bool)
            if stamps.size == 0
            else (before <= tolerance) | (after <= tolerance)
        )
        for kind, ts in zip(rows["data_type"][~linked_ok], rows["ts"][~linked_ok], strict=True):
            missing.append(f"{user_id} {kind} at {ts.isoformat()}")
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
