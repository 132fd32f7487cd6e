"""Which FHIR resources one partition (UTC day x source) publishes, read from the store.

- heart rate, steps and RR series: one Observation (valueSampledData) per user, type, device and
  UTC hour of the day, for every user: aggregates derive from them, and ECG and RR recordings are
  published with the heart rate measured around them;
- individual measurements of the sparse types for users whose preference is "individual";
- hourly aggregates of the UTC day and daily aggregates of the local day, per user preference,
  each with derivedFrom the series Observations it summarises;
- ECG: waveform Observation + DiagnosticReport linking it to its heart rate;
- one Device per provider device that any of them references.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from ohx_dagster.fhir.common import device
from ohx_dagster.fhir.ecg import ecg_reports
from ohx_dagster.fhir.measurements import individual_rows, measurement_observations
from ohx_dagster.fhir.observations import aggregate_observations
from ohx_dagster.fhir.series import HOUR_US, SERIES_TYPES, series_observations, series_reference
from ohx_dagster.models import AggregationLevel, DateRange, HealthDataType
from ohx_dagster.store import RecordStore, health_records, to_us
from ohx_dagster.sync import LINK_MARGIN

LINK_MARGIN_US = int(LINK_MARGIN.total_seconds() * 1_000_000)


def utc_day(day: date) -> DateRange:
    start = datetime.combine(day, time(), tzinfo=ZoneInfo("UTC"))
    return DateRange(start, start + timedelta(days=1))


def _local_day_of(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    """Daily aggregate rows whose local calendar day is `day`."""
    if frame.empty:
        return frame
    local = pd.to_datetime(
        frame["bucket_start_us"] + frame["utc_offset_min"] * 60_000_000, unit="us"
    )
    return frame[local.dt.date == day].reset_index(drop=True)


class SeriesIndex:
    """Which series Observations exist: (user, type) -> sorted [(hour_us, device_id)].

    Read as one grouped query over the records, so daily aggregates (a local day reaches into the
    neighbouring UTC days) and ECG links point only at series that are published somewhere."""

    def __init__(
        self,
        store: RecordStore,
        provider: str,
        window: DateRange,
        user_ids: Collection[str] | None = None,
    ) -> None:
        t = health_records
        hour = t.c.ts_us // HOUR_US
        query = sa.select(t.c.user_id, t.c.data_type, hour.label("hour"), t.c.device_id).where(
            t.c.provider == provider,
            t.c.ts_us >= to_us(window.start),
            t.c.ts_us < to_us(window.end),
            t.c.data_type.in_([k.value for k in SERIES_TYPES]),
        )
        if user_ids is not None:
            query = query.where(t.c.user_id.in_(list(user_ids)))
        query = query.group_by(t.c.user_id, t.c.data_type, hour, t.c.device_id)
        self.provider = provider
        self.hours: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        with store.read() as conn:
            for user_id, data_type, hour_number, device_id in conn.execute(query):
                self.hours[(user_id, data_type)].append((int(hour_number) * HOUR_US, device_id))
        for entries in self.hours.values():
            entries.sort()

    def references(
        self, user_id: str, data_type: str, start_us: int, end_us: int
    ) -> list[dict[str, str]]:
        """Series Observations of the user and type whose hour overlaps [start, end)."""
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


def _devices(source: str, records: pd.DataFrame, sparse: pd.DataFrame) -> list[dict[str, Any]]:
    published = records[
        records["data_type"].isin([t.value for t in (*SERIES_TYPES, HealthDataType.ECG)])
    ]
    ids = set(published["device_id"]) | set(sparse["device_id"])
    return [device(source, device_id) for device_id in sorted(ids) if device_id]


def partition_resources(
    store: RecordStore, source: str, day: date, *, user_ids: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Every resource the partition publishes (see the module docstring), as plain dicts: of the
    provider `source`'s users, or of `user_ids` only (a shard partition's users)."""
    configs = {c.user_id: c for c in store.users(source, connected_only=False)}
    window = utc_day(day)
    records = store.read_records(source, window, user_ids=user_ids)
    # A local day starts between 14 h before and 12 h after the UTC midnight of the same date.
    daily_window = DateRange(window.start - timedelta(hours=14), window.end)
    index = SeriesIndex(
        store, source, DateRange(daily_window.start, window.end + timedelta(hours=12)), user_ids
    )
    hourly = store.read_aggregates(source, AggregationLevel.HOURLY.value, window, user_ids=user_ids)
    daily = _local_day_of(
        store.read_aggregates(
            source, AggregationLevel.DAILY.value, daily_window, user_ids=user_ids
        ),
        day,
    )
    return [
        *series_observations(records, configs),
        *measurement_observations(records, configs),
        *ecg_reports(records, configs, index.heart_rate),
        *aggregate_observations(hourly, configs, index.derived_from),
        *aggregate_observations(daily, configs, index.derived_from),
        *_devices(source, records, individual_rows(records, configs)),
    ]
