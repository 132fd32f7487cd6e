"""Which FHIR resources one day partition publishes for a bucket of people, from data read once.

- heart rate, steps and RR series: one Observation (valueSampledData) per stored chunk of the UTC
  day (a chunk is one person, type, device and hour), for every person: aggregates derive from them,
  and ECG and RR recordings are published with the heart rate measured around them;
- individual measurements of the sparse types, for people whose preference is "individual";
- hourly aggregates of the UTC day and daily aggregates of the local day, per preference, each
  with derivedFrom the series Observations it summarises;
- ECG: waveform Observation + DiagnosticReport linking it to its heart rate;
- one Device per provider device that any of them references.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import pandas as pd

from ohx_dagster.fhir.common import device
from ohx_dagster.fhir.ecg import ecg_reports
from ohx_dagster.fhir.measurements import individual_rows, measurement_observations
from ohx_dagster.fhir.observations import aggregate_observations
from ohx_dagster.fhir.series import chunk_observation, series_reference
from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.record_tables import Chunk, chunks_to_batch
from ohx_dagster.records import concat
from ohx_dagster.sync import LINK_MARGIN
from ohx_dagster.times import HOUR_US, to_us, utc_day

LINK_MARGIN_US: Final = int(LINK_MARGIN.total_seconds() * 1_000_000)


def read_window(day: date) -> DateRange:
    """What one partition's publishing reads: its UTC day, and the hours that a local calendar day
    of the same date reaches in any zone (UTC-12 .. UTC+14), plus the link margin."""
    window = utc_day(day)
    return DateRange(window.start - timedelta(hours=14), window.end + timedelta(hours=12))


@dataclass
class BucketData:
    """A bucket of people's data around one day partition, as read from the store in one go."""

    provider: str
    day: date
    configs: Mapping[str, HealthSyncConfig]
    chunks: Sequence[Chunk]
    sparse: pd.DataFrame  # measurements and ECG recordings

    def records(self) -> pd.DataFrame:
        """Every sample as one batch (for the statistics, which are vectorized over it)."""
        return concat([chunks_to_batch(self.provider, self.chunks), self.sparse])

    def in_day(self) -> tuple[list[Chunk], pd.DataFrame]:
        window = utc_day(self.day)
        start, end = to_us(window.start), to_us(window.end)
        chunks = [c for c in self.chunks if start <= c.hour_us < end]
        if self.sparse.empty:
            return chunks, self.sparse
        inside = (self.sparse["ts"] >= window.start) & (self.sparse["ts"] < window.end)
        return chunks, self.sparse[inside].reset_index(drop=True)


class SeriesIndex:
    """Which series Observations exist: (user, type) -> sorted [(hour_us, device_id)], so daily
    aggregates (a local day reaches into neighbouring UTC days) and ECG links point only at series
    that are published somewhere."""

    def __init__(self, provider: str, chunks: Sequence[Chunk]) -> None:
        self.provider = provider
        self.hours: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for chunk in chunks:
            self.hours[(chunk.user_id, chunk.data_type)].append((chunk.hour_us, chunk.device_id))
        for entries in self.hours.values():
            entries.sort()

    def references(
        self, user_id: str, data_type: str, start_us: int, end_us: int
    ) -> list[dict[str, str]]:
        return [
            series_reference(self.provider, user_id, data_type, hour_us, device_id)
            for hour_us, device_id in self.hours.get((user_id, data_type), ())
            if hour_us < end_us and hour_us + HOUR_US > start_us
        ]

    def derived_from(self, row: Any) -> list[dict[str, str]]:
        return self.references(
            row["user_id"], row["data_type"], int(row["bucket_start_us"]), int(row["bucket_end_us"])
        )

    def heart_rate(self, user_id: str, start_us: int, end_us: int) -> list[dict[str, str]]:
        return self.references(
            user_id,
            HealthDataType.HEART_RATE.value,
            start_us - LINK_MARGIN_US,
            end_us + LINK_MARGIN_US,
        )


def _devices(provider: str, chunks: Sequence[Chunk], *frames: pd.DataFrame) -> list[dict]:
    """A Device for every device a published resource references."""
    ids = {c.device_id for c in chunks}
    for frame in frames:
        if not frame.empty:
            ids |= set(frame["device_id"])
    return [device(provider, device_id) for device_id in sorted(ids) if device_id]


def bucket_resources(
    data: BucketData,
    hourly: pd.DataFrame,
    daily: pd.DataFrame,
    statuses: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Every resource the partition publishes for the bucket's people (module docstring);
    `statuses`: per person, final or preliminary for the partition's series and aggregates."""
    chunks, sparse = data.in_day()
    index = SeriesIndex(data.provider, data.chunks)
    configs = data.configs
    ecg = sparse[sparse["data_type"] == HealthDataType.ECG.value] if not sparse.empty else sparse
    individual = individual_rows(sparse, configs) if not sparse.empty else sparse
    return [
        *(
            chunk_observation(data.provider, c, configs[c.user_id], statuses.get(c.user_id, "final"))
            for c in chunks
            if c.user_id in configs
        ),
        *(measurement_observations(sparse, configs) if not sparse.empty else ()),
        *(ecg_reports(ecg, configs, index.heart_rate) if not ecg.empty else ()),
        *aggregate_observations(hourly, configs, index.derived_from, statuses),
        *aggregate_observations(daily, configs, index.derived_from, statuses),
        *_devices(data.provider, chunks, ecg, individual),
    ]
