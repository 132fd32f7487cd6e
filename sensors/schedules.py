"""Schedules: incremental sync of today's partitions every hour, for every source."""

from collections.abc import Sequence
from datetime import UTC

import dagster as dg

from assets.partitions import STRATEGY_TAG, partition_key
from ohx_dagster.strategies import PRIORITY, SyncStrategy


def build_incremental_schedule(
    job: dg.JobDefinition, sources: Sequence[str]
) -> dg.ScheduleDefinition:
    @dg.schedule(
        job=job,
        cron_schedule="5 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour: incremental sync (from each user's last sync minus 5 minutes) "
        "of today's partition of every source, then its aggregates and FHIR.",
    )
    def hourly_incremental_sync(context: dg.ScheduleEvaluationContext):
        moment = context.scheduled_execution_time.astimezone(UTC)
        for source in sources:
            yield dg.RunRequest(
                run_key=f"incremental|{source}|{moment.isoformat()}",
                partition_key=partition_key(moment.date(), source),
                tags={
                    STRATEGY_TAG: SyncStrategy.INCREMENTAL.value,
                    "dagster/priority": str(PRIORITY[SyncStrategy.INCREMENTAL]),
                },
            )

    return hourly_incremental_sync
