"""File import of a Polar H10 chest-strap recording (ECGLogger CSV): ECG, heart rate, RR intervals.

The CSV has one row per ECG sample (about 130 Hz, amplitude in mV) with epoch-nanosecond times;
heart rate (bpm) appears once a second and each RR interval (ms) once a beat, on the row of the
sample logged with it. A recording becomes one ECG record (samples in uV, the sampling rate measured
from its own clock: first to last sample), heart-rate records each second and RR records per beat,
all from the one device, so the ECG and RR are stored and published with their heart rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Final

import pandas as pd

from ohx_dagster.errors import ValidationError
from ohx_dagster.models import AggregationLevel, DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.records import concat, empty_batch, make_batch

NAME: Final = "polar"
DEVICE: Final = "polar-h10"
COLUMNS: Final = ("time_ns", "ecg", "hr", "rr")


class PolarH10Source:
    """One recording file = one user (the file's stem) wearing one Polar H10."""

    name = NAME

    def __init__(self, path: Path | str, *, user_id: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValidationError("OHX_POLAR_CSV", str(self.path), "a Polar H10 CSV file")
        self.user_id = user_id or self.path.stem

    @cached_property
    def frame(self) -> pd.DataFrame:
        frame = pd.read_csv(self.path, usecols=list(COLUMNS))
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValidationError("columns", missing, f"the columns {COLUMNS} in {self.path}")
        frame = frame.sort_values("time_ns", kind="stable").reset_index(drop=True)
        frame["ts"] = pd.to_datetime(frame["time_ns"] // 1000, unit="us", utc=True)
        return frame

    def discover_users(self) -> list[HealthSyncConfig]:
        return [
            HealthSyncConfig(
                user_id=self.user_id, provider=NAME, aggregation=AggregationLevel.INDIVIDUAL
            )
        ]

    def sampling_rate_hz(self) -> float:
        ns = self.frame["time_ns"].to_numpy()
        return float((len(ns) - 1) * 1e9 / (ns[-1] - ns[0]))

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int = 1000,
    ) -> pd.DataFrame:
        if user.user_id != self.user_id:
            return empty_batch()
        frame = self.frame
        inside = (frame["ts"] >= window.start) & (frame["ts"] < window.end)
        common = {"provider": NAME, "user_id": self.user_id, "device_id": DEVICE}
        batches = []
        for kind in sorted(HealthDataType(t) for t in data_types):
            if kind is HealthDataType.HEART_RATE:
                rows = frame[inside & frame["hr"].notna()]
                batches.append(
                    make_batch(
                        **common,
                        data_type=kind,
                        timestamps=rows["ts"],
                        values=rows["hr"].to_numpy(),
                        unit="bpm",
                    )
                )
            elif kind is HealthDataType.RR_INTERVALS:
                rows = frame[inside & frame["rr"].notna()]
                batches.append(
                    make_batch(
                        **common,
                        data_type=kind,
                        timestamps=rows["ts"],
                        values=rows["rr"].to_numpy(),
                        unit="ms",
                    )
                )
            elif kind is HealthDataType.ECG and window.contains(frame["ts"].iloc[0]):
                # The recording is one record, stamped with its first sample: any window that
                # holds its start yields the same record (idempotent upserts).
                rate = self.sampling_rate_hz()
                samples = frame["ecg"].to_numpy(dtype="float64")
                batches.append(
                    make_batch(
                        **common,
                        data_type=kind,
                        timestamps=frame["ts"].iloc[:1],
                        values=None,
                        unit="mV",
                        samples=[samples],
                        sampling_rate_hz=rate,
                        duration_s=len(samples) / rate,
                    )
                )
        return concat(batches)
