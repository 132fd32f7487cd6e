"""Partitions: day (UTC) x source. Users are never a partition dimension (DESIGN.md).

A `source` key is a provider (`oura`) or one hash shard of its users (`oura-3`), as OHX_SOURCES
says (ohx_dagster/shards.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg

from ohx_dagster.shards import Shard, Sharding

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
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        # A run tagged only with dagster/partition (CLI `job execute --tags`) gives the key as a
        # string; the definition parses it the way it formats it.
        partitions = context.assets_def.partitions_def
        key = partitions.get_partition_key_from_str(key)  # type: ignore[union-attr]
    keys = key.keys_by_dimension
    return date.fromisoformat(keys[DAY]), keys[SOURCE]


def day_and_shard(
    context: dg.AssetExecutionContext, sharding: Sharding | None
) -> tuple[date, Shard]:
    """The partition's day and the shard of users behind its source key (the whole provider
    when the source is not sharded)."""
    day, key = day_and_source(context)
    return day, Shard(key) if sharding is None else sharding.shard(key)
