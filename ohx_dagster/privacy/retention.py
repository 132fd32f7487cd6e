"""Retention: what is older than a person's retention period is removed everywhere it lives.

Per person, with cutoff = the end of their data - retention_days (retention_cutoff): the end of
their data is now for the sources that sync people as they live (provider APIs, the simulator),
and the end of their newest stored record for an export (FILE_SOURCES: fitabase, polar,
apple_health), whose records are dated when the export was made, not when it was imported, so a
2016 Fitbit export imported today keeps its last retention_days of data instead of being deleted
at the next run (erasure, ohx_dagster/privacy/erasure.py, removes an export's person whenever
asked):
- records before the cutoff (the hour that straddles it keeps its later samples), whole aggregate
  buckets that end before it, and coverage before it (store.delete_before);
- webhook inbox rows (their payloads) received before it;
- the FHIR output of every day partition whose whole content (its UTC day and the person's local
  day of that date) ended before it: their resources are dropped from their bucket's files the
  way erasure drops them (ohx_dagster/privacy/erasure.py: new files, the manifest rewritten under
  the partition's lock, the old files deleted after); then their outbox rows of those partitions
  lose their values (erasure.empty_outbox_rows: a row the server never saw goes; a delivered one
  keeps only the identifier the server finds it by, so that erasing the person later still
  deletes the server's copy), their fhir_changes rows of those partitions go (the FHIR API's
  record of when and where each stripped resource last changed), and their day_versions rows of
  those days go. The day_versions rows
  are the index of which partitions hold the person, so they go last: a run that stops half-way
  resumes where it stopped.

The audit log (ohx_dagster/privacy/audit.py) is not a person's data: its rows go by one period of
their own, OHX_AUDIT_RETENTION (ohx_dagster/config/settings.py), whoever they are about.

Only whole buckets go: an aggregate is deleted once its bucket ends before the cutoff, so a kept
aggregate never summarises records that are already gone. A partition's files are cleaned once
all of its content is older than the cutoff, so the files keep a day's data up to a day and a half
(the local day of the furthest zone) longer than the store does. The FHIR server keeps what it
received: what a clinical system holds is its record (erasure, not retention, deletes there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from ohx_dagster.core.models import HealthSyncConfig, require_aware
from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.erasure import Person, empty_outbox_rows, strip_partitions
from ohx_dagster.publish.partitions import final_at
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import day_versions, fhir_changes, fhir_outbox, webhook_inbox
from ohx_dagster.storage.store import RecordStore


@dataclass
class RetentionReport:
    users: int = 0
    records_deleted: int = 0
    aggregates_deleted: int = 0
    inbox_deleted: int = 0
    outbox_deleted: int = 0
    outbox_emptied: int = 0
    day_versions_deleted: int = 0
    fhir_changes_deleted: int = 0  # when and where their stripped resources last changed
    fhir_partitions_rewritten: int = 0
    fhir_resources_removed: int = 0
    fhir_files_removed: int = 0
    audit_rows_deleted: int = 0  # audit log rows older than OHX_AUDIT_RETENTION
    # Records deleted per "provider/user" (for callers; the Dagster op shows counts only).
    by_user: dict[str, int] = field(default_factory=dict)


def retention_cutoff(store: RecordStore, config: HealthSyncConfig, now: datetime) -> datetime:
    """What is older than this goes (module docstring): retention_days before now, or before the
    end of the person's newest stored record for an export, whichever is earlier."""
    from ohx_dagster.config.settings import FILE_SOURCES

    end = now
    if config.provider in FILE_SOURCES:
        stored = store.stored_until(config.provider, config.user_id)
        end = now if stored is None else min(now, stored)
    return end - timedelta(days=config.retention_days)


def last_expired_day(config: HealthSyncConfig, cutoff: datetime) -> date:
    """The latest day partition whose whole content, the UTC day and the person's local day of
    that date, ended at or before the cutoff."""
    day = cutoff.date()
    while final_at(day, config, timedelta(0)) > cutoff:
        day -= timedelta(days=1)
    return day


def _expire_output(
    store: RecordStore,
    output: FhirOutput | None,
    config: HealthSyncConfig,
    cutoff: datetime,
    report: RetentionReport,
) -> None:
    """Everything of the person outside the records tables that the cutoff expires."""
    provider, user_id = config.provider, config.user_id
    last = last_expired_day(config, cutoff)
    v, i, o = day_versions, webhook_inbox, fhir_outbox
    person = (v.c.provider == provider) & (v.c.user_id == user_id)
    with store.read() as conn:
        days = list(
            conn.execute(sa.select(v.c.day).where(person, v.c.day <= last.isoformat())).scalars()
        )
    if output is not None and days:
        stripped = strip_partitions(
            store, output, Person(provider, user_id), days=days, scan_output=False
        )
        report.fhir_partitions_rewritten += stripped.partitions
        report.fhir_resources_removed += stripped.resources
        report.fhir_files_removed += stripped.files_deleted
    first_kept = (last + timedelta(days=1)).isoformat()
    with store.write() as conn:
        db.lock(conn, "person", provider, user_id)
        report.inbox_deleted += int(
            conn.execute(
                i.delete().where(
                    i.c.provider == provider,
                    i.c.user_id == user_id,
                    i.c.received_at_us < to_us(cutoff),
                )
            ).rowcount
            or 0
        )
        deleted, emptied = empty_outbox_rows(
            conn,
            (o.c.provider == provider)
            & (o.c.user_id == user_id)
            & (o.c.partition_key < first_kept),  # "YYYY-MM-DD|key" sorts by its day
        )
        report.outbox_deleted += deleted
        report.outbox_emptied += emptied
        if output is not None:  # without the output its files are not cleaned: keep the index
            c = fhir_changes
            report.fhir_changes_deleted += int(
                conn.execute(
                    c.delete().where(
                        c.c.provider == provider,
                        c.c.user_id == user_id,
                        c.c.partition_key < first_kept,
                    )
                ).rowcount
                or 0
            )
            report.day_versions_deleted += int(
                conn.execute(v.delete().where(person, v.c.day <= last.isoformat())).rowcount or 0
            )


def apply_retention(
    store: RecordStore,
    now: datetime,
    output: FhirOutput | None = None,
    *,
    audit_retention: timedelta | None = None,
) -> RetentionReport:
    """Apply every person's retention period (module docstring); `output`: the FHIR bulk output
    to clean as well (None: the store only); `audit_retention`: delete audit log rows older than
    that (OHX_AUDIT_RETENTION; None: keep them)."""
    now = require_aware("now", now)
    report = RetentionReport()
    if audit_retention is not None:
        report.audit_rows_deleted = audit.expire(store, to_us(now - audit_retention))
    for config in store.all_users():
        cutoff = retention_cutoff(store, config, now)
        records, buckets = store.delete_before(config.provider, config.user_id, cutoff)
        _expire_output(store, output, config, cutoff, report)
        report.users += 1
        report.records_deleted += records
        report.aggregates_deleted += buckets
        if records:
            report.by_user[f"{config.provider}/{config.user_id}"] = records
    return report
