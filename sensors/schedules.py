"""Schedules per sync frequency.

Both request every source key: each shard of a sharded source (`oura-0` .. `oura-7`) is its own
partition, run for its own people.

- hourly_incremental_sync: every hour, today's partition of every source for people who sync
  hourly or in realtime (the sensor covers realtime; this is its safety net), which also re-reads
  the provider's trailing re-sync horizon for late uploads. Days before today are synced too when
  coverage says they have gaps (after an outage, a person's reconnection, a failed run, a daily
  person's failed close): the most recent CATCH_UP_DAYS of them a tick, for everyone with a gap
  in them, never a day that already has a run queued or running.
- daily_close: every hour, for the people whose local midnight has just passed, the whole local
  day that ended (daily-frequency people are synced only then).
"""

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import partition_key
from ohx_dagster.core.coverage import gaps, normalize
from ohx_dagster.core.models import HealthSyncConfig, SyncFrequency
from ohx_dagster.core.times import from_us, to_us
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.storage.store import ACTIVE, RecordStore, history_start
from ohx_dagster.sync import waiting
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Sharding
from ohx_dagster.sync.strategies import SyncStrategy
from resources import RecordStoreResource

CATCH_UP_DAYS = 7
# A person connected this recently has their history fetched by the new-user backfill.
NEW_PERSON = timedelta(hours=6)
SYNCED_BY_SCHEDULE = frozenset({SyncFrequency.HOURLY, SyncFrequency.REALTIME})

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


def in_flight_partitions(instance: dg.DagsterInstance, job_name: str) -> set[str]:
    """Partition keys of the job's runs that are queued or running."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=job_name,
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ],
        )
    )
    return {r.dagster_run.tags.get("dagster/partition", "") for r in records}


def synced_until(config: HealthSyncConfig, now: datetime) -> int:
    """Up to where a person's data should be covered by now, as far as catching up goes: the
    start of today (UTC) for hourly and realtime people; for daily people the start of their
    current local day (every local day before it has closed)."""
    start_of_today = to_us(datetime.combine(now.date(), time(), tzinfo=UTC))
    if config.sync_frequency in SYNCED_BY_SCHEDULE:
        return start_of_today
    local_midnight = datetime.combine(now.astimezone(config.zone).date(), time(), config.zone)
    return min(start_of_today, to_us(local_midnight))


def days_with_gaps(store: RecordStore, provider: str, now: datetime, first_day: date) -> list[date]:
    """UTC days before today on which an active person has a gap in a type the provider delivers
    (daily people: in a local day that has closed, e.g. after their close run failed), most
    recent first."""
    people = [
        p
        for p in store.people(provider)
        if p.connected and p.state == ACTIVE and now - from_us(p.connected_at_us) > NEW_PERSON
    ]
    coverage = store.coverage(provider, [p.config.user_id for p in people])
    # A window waiting for the provider whose backoff is not over is no reason for a run yet.
    waits = store.cursors(provider, waiting.WAITING, [p.config.user_id for p in people])
    for user_id, text in waits.items():
        for kind, spans in waiting.not_due(waiting.load(text), to_us(now)).items():
            coverage[(user_id, kind)] = normalize([*coverage.get((user_id, kind), []), *spans])
    supported = SUPPORTED_TYPES.get(provider, frozenset())
    days: set[date] = set()
    for person in people:
        config = person.config
        refused = store.refused_types(config)
        start = max(
            history_start(config, person.connected_at_us, now),
            datetime.combine(first_day, datetime.min.time(), tzinfo=UTC),
        )
        target = (to_us(start), synced_until(config, now))
        for kind in config.enabled_types & supported:
            if kind.value in refused:
                continue
            for gap_start, gap_end in gaps(target, coverage.get((config.user_id, kind.value), [])):
                day = from_us(gap_start).date()
                while day <= from_us(gap_end - 1).date():
                    days.add(day)
                    day += timedelta(days=1)
    return sorted(days, reverse=True)


def _requests(
    request: SyncRequest, days: Iterable[date], keys: Sequence[str], moment: datetime
) -> Iterator[dg.RunRequest]:
    """One run per day x source key; the run key names the tick, so a tick never runs twice."""
    for day in days:
        for key in keys:
            yield dg.RunRequest(
                run_key=f"{request.strategy.value}|{day}|{key}|{moment.isoformat()}",
                partition_key=partition_key(day, key),
                tags=request.tags(),
            )


def close_requests(
    moment: datetime, keys: Sequence[str], first_day: date
) -> Iterator[dg.RunRequest]:
    moment = moment.astimezone(UTC)
    request = SyncRequest(SyncStrategy.CLOSE, close_at=moment)
    days = [d for d in days_closing_at(moment) if d >= first_day]
    yield from _requests(request, days, keys, moment)


def build_schedules(
    job: dg.JobDefinition | UnresolvedAssetJobDefinition,
    sources: Sequence[str] | Sharding,
    first_day: date,
) -> list[dg.ScheduleDefinition]:
    sharding = sources if isinstance(sources, Sharding) else Sharding.unsharded(sources)
    keys = sharding.all_keys()

    @dg.schedule(
        job=job,
        cron_schedule="5 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour: incremental sync of today's partition of every source for "
        "hourly and realtime people (their gaps, and the provider's re-sync horizon for late "
        "uploads), plus the most recent days whose coverage has gaps; then statistics, FHIR "
        "and delivery of what changed.",
    )
    def hourly_incremental_sync(context: dg.ScheduleEvaluationContext, store: RecordStoreResource):
        moment = context.scheduled_execution_time.astimezone(UTC)
        record_store = store.get_store()
        busy = in_flight_partitions(context.instance, job.name)
        request = SyncRequest(SyncStrategy.INCREMENTAL, frequencies=SYNCED_BY_SCHEDULE)
        # Days behind are synced for everyone with a gap in them (daily people included): an
        # incremental run fetches gaps only, so the others cost nothing.
        catch_up = SyncRequest(SyncStrategy.INCREMENTAL)
        for provider in sharding:
            behind = days_with_gaps(record_store, provider, moment, first_day)[:CATCH_UP_DAYS]
            for key in sharding.keys_of(provider):
                if str(partition_key(moment.date(), key)) not in busy:
                    yield from _requests(request, [moment.date()], [key], moment)
                todo = [d for d in behind if str(partition_key(d, key)) not in busy]
                yield from _requests(catch_up, todo, [key], moment)

    @dg.schedule(
        job=job,
        cron_schedule="20 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour: for people whose local midnight just passed, sync the local day "
        "that ended (daily-frequency people are synced only then).",
    )
    def daily_close(context: dg.ScheduleEvaluationContext):
        yield from close_requests(context.scheduled_execution_time, keys, first_day)

    return [hourly_incremental_sync, daily_close]
