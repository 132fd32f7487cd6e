"""Schedules per sync frequency.

Both request every source key: each shard of a sharded source (`oura-0` .. `oura-7`) is its own
partition, run for its own users.

- hourly_incremental_sync: every hour, today's partition of every source, for users who sync
  hourly or in realtime (the sensor covers realtime; this is its safety net). When a source's
  least advanced user last synced on an earlier day (after UTC midnight, or after an outage), the
  days since then are synced too, at most CATCH_UP_DAYS back; older gaps are for a backfill.
- daily_close: every hour, for the users whose local midnight has just passed, the whole local day
  that ended (daily-frequency users are synced only then; everyone's daily aggregates are final).
"""

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from assets.partitions import partition_key
from ohx_dagster.models import SyncFrequency
from ohx_dagster.run_request import SyncRequest
from ohx_dagster.shards import Sharding
from ohx_dagster.strategies import SyncStrategy
from resources import RecordStoreResource

CATCH_UP_DAYS = 7

# UTC offsets in use on Earth, every quarter hour from UTC-12 to UTC+14.
_OFFSETS = [timedelta(minutes=15 * step) for step in range(-48, 57)]


def days_closing_at(moment: datetime) -> list[date]:
    """Local dates that end in some time zone within the hour before `moment`."""
    closing = set()
    for offset in _OFFSETS:
        local = moment.astimezone(UTC) + offset
        if local.hour == 0:
            closing.add(local.date() - timedelta(days=1))
    return sorted(closing)


def _requests(
    request: SyncRequest, days: Sequence[date], sources: Sequence[str], moment: datetime
) -> Iterator[dg.RunRequest]:
    """One run per day x source; the run key names the tick, so a tick never runs twice."""
    for day in days:
        for source in sources:
            yield dg.RunRequest(
                run_key=f"{request.strategy.value}|{day}|{source}|{moment.isoformat()}",
                partition_key=partition_key(day, source),
                tags=request.tags(),
            )


def catch_up_days(moment: datetime, oldest_sync: datetime | None, first_day: date) -> list[date]:
    """Today, and the days since the least advanced user's last sync (bounded)."""
    today = moment.astimezone(UTC).date()
    start = today if oldest_sync is None else oldest_sync.astimezone(UTC).date()
    start = max(start, today - timedelta(days=CATCH_UP_DAYS), first_day)
    return [start + timedelta(days=i) for i in range((today - start).days + 1)]


def incremental_requests(
    moment: datetime, oldest_sync: Mapping[str, datetime | None], first_day: date
) -> Iterator[dg.RunRequest]:
    moment = moment.astimezone(UTC)
    request = SyncRequest(
        SyncStrategy.INCREMENTAL,
        frequencies=frozenset({SyncFrequency.HOURLY, SyncFrequency.REALTIME}),
    )
    for source, oldest in oldest_sync.items():
        days = catch_up_days(moment, oldest, first_day)
        yield from _requests(request, days, [source], moment)


def close_requests(
    moment: datetime, sources: Sequence[str], first_day: date
) -> Iterator[dg.RunRequest]:
    moment = moment.astimezone(UTC)
    request = SyncRequest(SyncStrategy.CLOSE, close_at=moment)
    days = [d for d in days_closing_at(moment) if d >= first_day]
    yield from _requests(request, days, sources, moment)


def build_schedules(
    job: dg.JobDefinition, sources: Sequence[str] | Sharding, first_day: date
) -> list[dg.ScheduleDefinition]:
    sharding = sources if isinstance(sources, Sharding) else Sharding.unsharded(sources)
    keys = sharding.all_keys()

    @dg.schedule(
        job=job,
        cron_schedule="5 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour: incremental sync (from each user's last sync minus 5 minutes) "
        "of today's partition of every source for hourly and realtime users, then its "
        "aggregates and FHIR.",
    )
    def hourly_incremental_sync(context: dg.ScheduleEvaluationContext, store: RecordStoreResource):
        record_store = store.get_store()
        # Sync state is per provider: every shard of a provider catches up from its oldest.
        by_provider = {provider: record_store.oldest_sync(provider) for provider in sharding}
        oldest = {key: by_provider[sharding.shard(key).provider] for key in keys}
        yield from incremental_requests(context.scheduled_execution_time, oldest, first_day)

    @dg.schedule(
        job=job,
        cron_schedule="20 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour: for users whose local midnight just passed, sync the local day "
        "that ended in full and publish its final daily aggregates.",
    )
    def daily_close(context: dg.ScheduleEvaluationContext):
        yield from close_requests(context.scheduled_execution_time, keys, first_day)

    return [hourly_incremental_sync, daily_close]
