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
    for kind, (low, high) in PLAUSIBLE_RANGES.items():
        rows = records[records["data_type"] == kind.value]
        if rows.empty:
            continue
        if kind is HealthDataType.ECG:
            values = np.concatenate([np.asarray(s, dtype="float64") for s in rows["samples"]])
        else:
            values = np.concatenate(
                [rows["value"].to_numpy(), rows["diastolic"].dropna().to_numpy()]
            )
        outside = int(((values < low) | (values > high)).sum())
        if outside:
            found[kind.value] = outside
    return found


def recordings_without_heart_rate(records: pd.DataFrame) -> list[str]:
    """ECG recordings and RR sessions with no heart rate of the same user within a minute."""
    missing = []
    heart_rate = records[records["data_type"] == HealthDataType.HEART_RATE.value]
    linked = records[
        records["data_type"].isin([HealthDataType.ECG.value, HealthDataType.RR_INTERVALS.value])
    ]
    for user_id, rows in linked.groupby("user_id"):
        stamps = heart_rate.loc[heart_rate["user_id"] == user_id, "ts"].sort_values().to_numpy()
        for kind, ts in zip(rows["data_type"], rows["ts"], strict=True):
            position = np.searchsorted(stamps, ts.to_datetime64())
            near = [stamps[i] for i in (position - 1, position) if 0 <= i < len(stamps)]
            if not any(abs(pd.Timestamp(n, tz="UTC") - ts) <= LINK_TOLERANCE for n in near):
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
