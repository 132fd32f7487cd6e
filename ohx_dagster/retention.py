"""Retention: each user's records and aggregates are kept for their retention period, no longer.

Only whole buckets go: an aggregate is deleted once its bucket ends before the cutoff, so a kept
aggregate never summarises records that are already gone. Published FHIR files are not touched:
what a clinical system has received is its record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ohx_dagster.models import require_aware
from ohx_dagster.store import RecordStore


@dataclass
class RetentionReport:
    users: int = 0
    records_deleted: int = 0
    aggregates_deleted: int = 0
    by_user: dict[str, int] = field(default_factory=dict)


def apply_retention(store: RecordStore, now: datetime) -> RetentionReport:
    now = require_aware("now", now)
    report = RetentionReport()
    for config in store.all_users():
        cutoff = now - timedelta(days=config.retention_days)
        records, buckets = store.delete_before(config.provider, config.user_id, cutoff)
        report.users += 1
        report.records_deleted += records
        report.aggregates_deleted += buckets
        if records:
            report.by_user[f"{config.provider}/{config.user_id}"] = records
    return report
