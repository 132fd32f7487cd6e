"""new_user_sensor: a newly connected person's history arrives by itself, as a Dagster backfill.

For every source key (the people's shard of a sharded source) with people connected since the
cursor, or reconnected after their provider refused the old grant, one backfill over the day
partitions of their lookback window (30 days by default), with the initial strategy for just those
people (it fetches only what coverage says is missing, so a reconnection fetches its gap), at the
lowest priority (realtime runs go first) and visible in the UI's Backfills page. The backfill runs
a week of partitions per run (assets.partitions.BACKFILL_POLICY). A backfill launched by hand from
the UI or CLI with the same tags behaves the same way.
"""

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import dagster as dg

# RunRequest.for_asset_graph_subset is how a sensor asks the daemon for a backfill (the same call
# Dagster's own automation uses); it takes this not-yet-public subset type.
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

from assets.partitions import partition_key
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Sharding
from ohx_dagster.sync.strategies import SyncStrategy
from resources import RecordStoreResource

# Users per backfill: bounds the ohx/subjects tag and lets each provider's history arrive in turns.
USERS_PER_BACKFILL = 200


def lookback_days(configs: Sequence[HealthSyncConfig], today: date, first_day: date) -> list[date]:
    """Days of the longest lookback among the users, today included, not before first_day."""
    longest = max(c.lookback_days for c in configs)
    start = max(today - timedelta(days=longest), first_day)
    return [start + timedelta(days=i) for i in range((today - start).days + 1)]


def backfill_request(
    assets: Sequence[dg.AssetsDefinition],
    partitions: dg.MultiPartitionsDefinition,
    source: str,
    configs: Sequence[HealthSyncConfig],
    today: date,
    first_day: date,
) -> dg.RunRequest:
    keys = [partition_key(day, source) for day in lookback_days(configs, today, first_day)]
    subset = partitions.empty_subset().with_partition_keys(keys)
    # Dagster's NamedTuple sets `__hash__ = None` in its body, which mypy takes for a third
    # field without a default.
    graph_subset = AssetGraphSubset(  # type: ignore[call-arg]
        partitions_subsets_by_asset_key={key: subset for asset in assets for key in asset.keys},
        non_partitioned_asset_keys=set(),
    )
    # The backfill and its runs name the people by subject (ohx/subjects), never by id.
    request = SyncRequest.for_people(
        SyncStrategy.INITIAL, configs[0].provider, [c.user_id for c in configs]
    )
    return dg.RunRequest.for_asset_graph_subset(
        graph_subset, tags={**request.tags(), "ohx/backfill": f"initial-sync|{source}"}
    )


def build_new_user_sensor(
    assets: Sequence[dg.AssetsDefinition],
    partitions: dg.MultiPartitionsDefinition,
    sources: Sequence[str] | Sharding,
    first_day: date,
) -> dg.SensorDefinition:
    sharding = sources if isinstance(sources, Sharding) else Sharding.unsharded(sources)

    @dg.sensor(
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches a backfill of each newly connected (or reconnected) person's "
        "lookback window (initial strategy: what coverage lacks, low priority), one backfill per "
        "source key and batch of people.",
        asset_selection=dg.AssetSelection.assets(*assets),
    )
    def new_user_sensor(
        context: dg.SensorEvaluationContext, store: RecordStoreResource
    ) -> dg.SensorResult:
        cursor = int(context.cursor or 0)
        connected = store.get_store().users_activated_since(cursor)
        if not connected:
            return dg.SensorResult(skip_reason="no newly connected users")
        by_source: dict[str, list[HealthSyncConfig]] = defaultdict(list)
        for _, config in connected:
            if config.provider in sharding:
                by_source[sharding.key_of(config.provider, config.user_id)].append(config)
        today = datetime.now(UTC).date()
        requests = [
            backfill_request(
                assets, partitions, source, configs[i : i + USERS_PER_BACKFILL], today, first_day
            )
            for source, configs in sorted(by_source.items())
            for i in range(0, len(configs), USERS_PER_BACKFILL)
        ]
        newest = max(at for at, _ in connected)
        context.log.info(f"initial sync for {sum(map(len, by_source.values()))} new users")
        return dg.SensorResult(run_requests=requests, cursor=str(newest))

    return new_user_sensor
