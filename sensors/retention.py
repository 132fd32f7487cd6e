"""Daily retention: delete records and aggregates older than each user's retention period."""

from datetime import UTC, datetime

import dagster as dg

from ohx_dagster.retention import apply_retention
from resources import RecordStoreResource


@dg.op(description="Delete each user's records and aggregates older than their retention_days.")
def delete_expired_records(
    context: dg.OpExecutionContext, store: RecordStoreResource
) -> dg.Output[dict[str, int]]:
    report = apply_retention(store.get_store(), datetime.now(UTC))
    context.log.info(
        f"retention: {report.records_deleted} records and {report.aggregates_deleted} "
        f"aggregates deleted for {len(report.by_user)} of {report.users} users"
    )
    return dg.Output(
        report.by_user,
        metadata={
            "users": report.users,
            "records_deleted": report.records_deleted,
            "aggregates_deleted": report.aggregates_deleted,
            "by_user": dg.MetadataValue.json(report.by_user),
        },
    )


@dg.job(description="Apply every user's retention period to the record store.")
def apply_retention_job() -> None:
    delete_expired_records()


retention_schedule = dg.ScheduleDefinition(
    name="daily_retention",
    job=apply_retention_job,
    cron_schedule="45 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 03:45 UTC: delete what is older than each user's retention period.",
)
