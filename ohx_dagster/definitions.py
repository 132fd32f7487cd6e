"""The composition root: the one Definitions object, assembled from the settings of the
environment (ohx_dagster/config), checked against the provider registry's sources (CATALOG).

Runs execute in process: a sync run is a short chain of four assets, and the multiprocess
executor's start-up (about 5 s a run) would dwarf the work of an hourly or webhook run.
"""

from __future__ import annotations

import gc
from datetime import timedelta

import dagster as dg

from assets.fhir_delivery import build_fhir_delivery_asset
from assets.health import build_health_assets
from assets.partitions import health_partitions
from assets.sync_status import build_sync_status_assets
from ohx_dagster.cli import dagster_errors as cli_errors
from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.providers.registry import CATALOG
from ohx_dagster.sync.shards import Sharding
from resources import FhirOutputResource, SourcesResource
from resources.fhir_server import fhir_server_from_env
from resources.store import store_resource
from sensors.erasure import erase_person_job
from sensors.exports import fhir_export_job, fhir_exports_sensor
from sensors.new_users import build_new_user_sensor
from sensors.republish import build_republish_sensor
from sensors.retention import apply_retention_job, retention_schedule
from sensors.schedules import build_schedules
from sensors.subscriptions import oura_subscriptions_job, oura_subscriptions_schedule
from sensors.sync_status import build_sync_status_schedule
from sensors.webhooks import build_webhook_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    # The source dimension lists every shard key of OHX_SOURCES (the provider's name when a
    # source is not sharded).
    sharding = Sharding(settings.source_counts)
    live = Sharding({source: sharding[source] for source in settings.live_sources})
    partitions = health_partitions(settings.partitions_start, settings.source_keys)
    health_assets = build_health_assets(partitions, sharding)
    sync_assets = [*health_assets, build_fhir_delivery_asset(partitions, sharding)]
    sync_job = dg.define_asset_job(
        "sync_partition",
        selection=dg.AssetSelection.assets(*sync_assets),
        partitions_def=partitions,
        description="Fetch, aggregate and publish one day x source partition.",
    )
    # Per-person sync status in the UI, one asset per source, recomputed every 15 minutes.
    status_assets = build_sync_status_assets(
        settings.sources,
        settings.live_sources,
        {name: timedelta(seconds=s) for name, s in settings.max_lag_overrides},
    )
    status_job, status_schedule = build_sync_status_schedule(status_assets)
    # Oura's webhook subscriptions belong to the app and expire: renewed daily when Oura is used.
    uses_oura = "oura" in settings.sources
    return dg.Definitions(
        assets=[*sync_assets, *status_assets],
        jobs=[
            sync_job,
            status_job,
            apply_retention_job,
            erase_person_job,
            fhir_export_job,
            *([oura_subscriptions_job] if uses_oura else []),
        ],
        schedules=[
            *build_schedules(sync_job, sharding, settings.partitions_start),
            retention_schedule,
            status_schedule,
            *([oura_subscriptions_schedule] if uses_oura else []),
        ],
        sensors=[
            # OHX_REALTIME=worker: the realtime worker (ohx-realtime) answers webhooks instead.
            *(
                [build_webhook_sensor(sync_job, live, settings.partitions_start)]
                if settings.realtime == "runs"
                else []
            ),
            build_republish_sensor(sync_job, sharding, settings.partitions_start),
            build_new_user_sensor(sync_assets, partitions, live, settings.partitions_start),
            # Bulk Data `$export` requests the FHIR API accepted (ohx fhir serve).
            fhir_exports_sensor,
        ],
        resources={
            "store": store_resource(settings),
            "output": FhirOutputResource(
                root=settings.fhir_dir, publish_ambiguous=settings.publish_ambiguous
            ),
            "sources": SourcesResource(
                simulated_users=settings.simulated_users,
                simulated_seed=settings.simulated_seed,
                simulated_hr_hz=settings.simulated_hr_hz,
                fitabase_dir=settings.fitabase_dir,
                fitabase_tz=settings.fitabase_tz,
                polar_csv=settings.polar_csv,
                polar_tz=settings.polar_tz,
                apple_health_export=settings.apple_health_export,
                apple_health_user=settings.apple_health_user,
                earliest_sample=settings.earliest_sample.isoformat(),
                resync_horizons_s=dict(settings.horizon_overrides),
            ),
            "fhir_server": fhir_server_from_env(),
        },
        executor=dg.in_process_executor,
    )


def _settings() -> Settings:
    try:
        return Settings.from_env(catalog=CATALOG)
    except ConfigError as exc:
        # Dagster prints the stack of a code location that fails to load: keep it to the line
        # that says which setting is wrong and how to fix it.
        raise ConfigError(f"{exc} (`ohx doctor` checks every setting)") from None


_loaded = _settings()
defs = build_definitions(_loaded)
# `dagster asset materialize --partition` and `dagster job execute -c` run in this process: a bad
# partition key or run config is one line saying what is expected, not a traceback.
cli_errors.install(health_partitions(_loaded.partitions_start, _loaded.source_keys))
# What the code location has loaded (Dagster, pandas, the definitions: about 250,000 objects) lives
# as long as the process. Moved out of the cyclic collector's sight, a full collection during a
# run walks the run's own objects only (it walked all of these: 0.1-0.2 CPU-s of a 10-person run).
gc.freeze()
