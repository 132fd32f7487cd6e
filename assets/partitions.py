"""Partitions: day (UTC) x source. Users are never a partition dimension (DESIGN.md).

A `source` key is a provider (`oura`) or one hash shard of its users (`oura-3`), as OHX_SOURCES
says (ohx_dagster/sync/shards.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import dagster as dg

from ohx_dagster.sync.shards import Shard, Sharding

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


def outside_partitions(partitions: dg.MultiPartitionsDefinition, key: str) -> str | None:
    """None when `key` is one of the partitions; else one line naming the valid days (and
    OHX_PARTITIONS_START), the valid sources (OHX_SOURCES) and what to change."""
    if partitions.has_partition_key(key):
        return None
    days = partitions.get_partitions_def_for_dimension(DAY)
    sources = partitions.get_partitions_def_for_dimension(SOURCE).get_partition_keys()
    first = days.get_first_partition_key()
    last = days.get_last_partition_key()
    day, _, source = key.partition("|")
    if not _is_date(day):
        fix = f"{day!r} is not a day: expected YYYY-MM-DD|source, such as {last}|{sources[0]}"
    elif source and source not in sources:
        fix = f"use one of its sources, or add {source.split('-')[0]!r} to OHX_SOURCES"
    elif first and day < first:
        fix = f"set OHX_PARTITIONS_START={day} (or earlier) where Dagster runs, or pick a later day"
    else:
        fix = "pick a day in that range, as YYYY-MM-DD|source"
    return (
        f"partition {key!r} is not one of this code location's partitions: days {first} "
        f"(OHX_PARTITIONS_START) to {last} (today, UTC) x sources {', '.join(sources)} "
        f"(OHX_SOURCES): {fix}"
    )


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _check_partitions(context: dg.AssetExecutionContext, keys: Sequence[str]) -> None:
    """A run for a key outside the partitions (launched from the CLI by tag, or before
    OHX_PARTITIONS_START was changed) stops before it fetches or writes anything."""
    partitions = context.assets_def.partitions_def
    if not isinstance(partitions, dg.MultiPartitionsDefinition):
        return
    for key in keys:
        problem = outside_partitions(partitions, str(key))
        if problem is not None:
            raise dg.Failure(description=problem, allow_retries=False)


def day_and_source(context: dg.AssetExecutionContext) -> tuple[date, str]:
    key = context.partition_key
    _check_partitions(context, [key])
    if not isinstance(key, dg.MultiPartitionKey):
        # A run tagged only with dagster/partition (CLI `job execute --tags`) gives the key as a
        # string; the definition parses it the way it formats it.
        partitions = context.assets_def.partitions_def
        key = partitions.get_partition_key_from_str(key)
    keys = key.keys_by_dimension
    return date.fromisoformat(keys[DAY]), keys[SOURCE]


def day_and_shard(
    context: dg.AssetExecutionContext, sharding: Sharding | None
) -> tuple[date, Shard]:
    """The partition's day and the shard of users behind its source key (the whole provider
    when the source is not sharded)."""
    day, key = day_and_source(context)
    return day, Shard(key) if sharding is None else sharding.shard(key)


def days_and_shard(
    context: dg.AssetExecutionContext, sharding: Sharding
) -> tuple[list[date], Shard]:
    """The run's days (one, or the range a backfill run covers: BACKFILL_POLICY) and the shard
    behind its source key; a range always lies within one source key."""
    if not context.has_partition_key_range:
        day, shard = day_and_shard(context, sharding)
        return [day], shard
    _check_partitions(context, context.partition_keys)
    keys = [k.keys_by_dimension for k in _multi_keys(context, context.partition_keys)]
    sources = {k[SOURCE] for k in keys}
    assert len(sources) == 1, f"a run covers one source key, not {sorted(sources)}"
    days = sorted(date.fromisoformat(k[DAY]) for k in keys)
    return days, sharding.shard(sources.pop())


def _multi_keys(context: dg.AssetExecutionContext, keys: list[str]) -> list[dg.MultiPartitionKey]:
    partitions = context.assets_def.partitions_def
    return [
        k if isinstance(k, dg.MultiPartitionKey) else partitions.get_partition_key_from_str(k)
        for k in keys
    ]


# A backfill (a new person's history, or one launched by hand) runs up to a week of one source
# key per run: a run costs seconds before any work, a day of one person's data much less.
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=7)
