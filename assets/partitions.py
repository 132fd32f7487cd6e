"""Partitions: day (UTC) x source. Users are never a partition dimension (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg

DAY = "day"
SOURCE = "source"


def health_partitions(start: date, sources: Sequence[str]) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            # end_offset=1: today's partition exists while today is still going on, so hourly and
            # realtime runs can sync it (by default Dagster only offers finished days).
            DAY: dg.DailyPartitionsDefinition(
                start_date=start.isoformat(), timezone="UTC", end_offset=1
            ),
            SOURCE: dg.StaticPartitionsDefinition(list(sources)),
        }
    )


def partition_key(day: date, source: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DAY: day.isoformat(), SOURCE: source})


def day_and_source(context: dg.AssetExecutionContext) -> tuple[date, str]:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    return date.fromisoformat(keys[DAY]), keys[SOURCE]
