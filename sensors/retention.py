"""Daily retention: remove what is older than each person's retention period, everywhere it lives
(records, aggregates, coverage, inbox payloads, outbox rows, FHIR files:
ohx_dagster/privacy/retention.py), and audit log rows older than OHX_AUDIT_RETENTION.
The metadata counts only: Dagster keeps it forever and it must never name a person."""

from datetime import UTC, datetime

import dagster as dg

from ohx_dagster.config.privacy import audit_retention
from ohx_dagster.privacy.retention import apply_retention
from resources import FhirOutputResource, RecordStoreResource


@dg.op(
    description="Remove each person's data older than their retention_days: records, aggregates, "
    "coverage, webhook payloads, outbox rows, and their resources in the FHIR files of "
    "the day partitions past it; and audit log rows older than OHX_AUDIT_RETENTION."
)
def delete_expired_records(
    context: dg.OpExecutionContext, store: RecordStoreResource, output: FhirOutputResource
) -> dg.Output[dict[str, int]]:
    report = apply_retention(
        store.get_store(), datetime.now(UTC), output.get(), audit_retention=audit_retention()
    )
    counts = {
        "users": report.users,
        "people_trimmed": len(report.by_user),
        "records_deleted": report.records_deleted,
        "aggregates_deleted": report.aggregates_deleted,
        "inbox_deleted": report.inbox_deleted,
        "outbox_deleted": report.outbox_deleted,
        "outbox_emptied": report.outbox_emptied,
        "day_versions_deleted": report.day_versions_deleted,
        "fhir_partitions_rewritten": report.fhir_partitions_rewritten,
        "fhir_resources_removed": report.fhir_resources_removed,
        "fhir_files_removed": report.fhir_files_removed,
        "audit_rows_deleted": report.audit_rows_deleted,
    }
    context.log.info(
        f"retention: {report.records_deleted} records, {report.aggregates_deleted} aggregates, "
        f"{report.inbox_deleted} webhook events and {report.fhir_resources_removed} FHIR "
        f"resources in {report.fhir_partitions_rewritten} partitions removed for "
        f"{len(report.by_user)} of {report.users} people"
    )
    return dg.Output(counts, metadata=counts)


@dg.job(description="Apply every person's retention period to the record store and FHIR files.")
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
