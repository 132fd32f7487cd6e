"""Which FHIR resources one partition (UTC day x source) publishes, read from the store."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from ohx_dagster.fhir.observations import aggregate_observations
from ohx_dagster.models import AggregationLevel, DateRange
from ohx_dagster.store import RecordStore


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


def partition_resources(store: RecordStore, source: str, day: date) -> list[dict[str, Any]]:
    """Hourly aggregates of the UTC day and daily aggregates of the local day `day`, as
    Observations for the users whose aggregation preference asks for them."""
    configs = {c.user_id: c for c in store.users(source, connected_only=False)}
    window = utc_day(day)
    hourly = store.read_aggregates(source, AggregationLevel.HOURLY.value, window)
    # A local day starts between 14 h before and 12 h after the UTC midnight of the same date.
    daily_window = DateRange(window.start - timedelta(hours=14), window.end)
    daily = _local_day_of(
        store.read_aggregates(source, AggregationLevel.DAILY.value, daily_window), day
    )
    return [*aggregate_observations(hourly, configs), *aggregate_observations(daily, configs)]
