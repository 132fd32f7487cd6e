"""The composition root: the one Definitions object, assembled from settings in the environment.

Runs execute in process: a sync run is a short chain of four assets, and the multiprocess
executor's start-up (about 5 s a run) would dwarf the work of an hourly or webhook run.
"""

from __future__ import annotations

import dagster as dg

from assets.health import build_health_assets
from assets.partitions import health_partitions
from ohx_dagster.settings import Settings
from resources import RecordStoreResource, SourcesResource
from sensors.schedules import build_incremental_schedule


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions = health_partitions(settings.partitions_start, settings.sources)
    health_assets = build_health_assets(partitions, settings.fhir_dir)
    sync_job = dg.define_asset_job(
        "sync_partition",
        selection=dg.AssetSelection.assets(*health_assets),
        partitions_def=partitions,
        description="Fetch, aggregate and publish one day x source partition.",
    )
    return dg.Definitions(
        assets=health_assets,
        jobs=[sync_job],
        schedules=[build_incremental_schedule(sync_job, settings.sources)],
        resources={
            "store": RecordStoreResource(database_url=settings.database_url),
            "sources": SourcesResource(
                simulated_users=settings.simulated_users,
                simulated_seed=settings.simulated_seed,
                fitabase_dir=settings.fitabase_dir,
                fitabase_tz=settings.fitabase_tz,
            ),
        },
        executor=dg.in_process_executor,
    )


defs = build_definitions(Settings.from_env())
