"""sync_status_schedule: the sync_status/<source> assets recomputed every 15 minutes, so the UI's
per-person table and its freshness check stay current without anyone pressing Materialize."""

from collections.abc import Sequence
from typing import Any

import dagster as dg

SYNC_STATUS_CRON = "*/15 * * * *"


def build_sync_status_schedule(
    assets: Sequence[dg.AssetsDefinition],
) -> tuple[Any, dg.ScheduleDefinition]:
    """The job over the status assets (an unresolved asset job) and its schedule."""
    job = dg.define_asset_job(
        "sync_status_job",
        selection=dg.AssetSelection.assets(*assets),
        description="Recompute the sync status of every source (the sync_status assets).",
    )
    schedule = dg.ScheduleDefinition(
        name="sync_status_schedule",
        job=job,
        cron_schedule=SYNC_STATUS_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 15 minutes: the per-person sync status of every source, with its "
        "freshness check (fails when a connected person falls behind).",
    )
    return job, schedule
