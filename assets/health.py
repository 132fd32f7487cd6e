"""The four partitioned assets of the sync path, built for one partitions definition.

raw_health_records -> hourly_aggregates -> daily_aggregates -> fhir_observations

Each returns MaterializeResult metadata a data engineer checks first (records, users, time span,
a preview) and carries checks that fail when the data is wrong.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.partitions import day_and_shard
from ohx_dagster import aggregate
from ohx_dagster.fhir.ndjson import write_ndjson
from ohx_dagster.fhir.publish import partition_resources, utc_day
from ohx_dagster.fhir.validate import validate_resources
from ohx_dagster.quality import (
    aggregate_inconsistencies,
    implausible_values,
    recordings_without_heart_rate,
)
from ohx_dagster.run_request import SyncRequest
from ohx_dagster.shards import Shard, Sharding
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import SyncFailed, sync_partition
from resources import RecordStoreResource, SourcesResource

PREVIEW_ROWS = 10
# Three-layer FHIR validation takes milliseconds a resource: the check validates a stratified
# sample (every resource type and profile) of large partitions.
VALIDATION_SAMPLE = 500
MAX_RETRIES = 3
RETRY_WAIT_S = 30.0


def _preview(frame: pd.DataFrame, columns: list[str]) -> dg.MetadataValue:
    if frame.empty:
        return dg.MetadataValue.md("(no rows)")
    return dg.MetadataValue.md(frame[columns].head(PREVIEW_ROWS).to_markdown(index=False))


def _span(first: object, last: object) -> dict[str, dg.MetadataValue]:
    if first is None or last is None:
        return {}
    return {
        "first_timestamp": dg.MetadataValue.text(pd.Timestamp(first).isoformat()),
        "last_timestamp": dg.MetadataValue.text(pd.Timestamp(last).isoformat()),
    }


def _consistency(stats: pd.DataFrame) -> dg.AssetCheckResult:
    """The statistics_consistent check of an aggregate asset."""
    inconsistent = aggregate_inconsistencies(stats)
    return dg.AssetCheckResult(
        check_name="statistics_consistent",
        passed=not inconsistent,
        metadata={"rows": dg.MetadataValue.json(inconsistent[:20]), "count": len(inconsistent)},
    )


def _users_in_scope(context: dg.AssetExecutionContext) -> frozenset[str] | None:
    """The users this run was asked to sync (a webhook's users), or None for all: a realtime
    run re-aggregates only what it could have changed."""
    return SyncRequest.from_tags(context.run.tags).user_ids


def _shard_users(store: RecordStore, shard: Shard) -> frozenset[str] | None:
    """The users of a shard partition, or None for all of the provider's (not sharded)."""
    if shard.whole:
        return None
    return shard.select(c.user_id for c in store.users(shard.provider, connected_only=False))


def _scope(
    context: dg.AssetExecutionContext, store: RecordStore, shard: Shard
) -> frozenset[str] | None:
    """The run's users (_users_in_scope) of the partition's shard; None for all."""
    run_users = _users_in_scope(context)
    shard_users = _shard_users(store, shard)
    if run_users is None or shard_users is None:
        return shard_users if run_users is None else run_users
    return run_users & shard_users


def _zones(store: RecordStore, source: str) -> dict:
    return {config.user_id: config.zone for config in store.users(source, connected_only=False)}


def build_health_assets(
    partitions: dg.MultiPartitionsDefinition, fhir_dir: Path, sharding: Sharding | None = None
) -> list[dg.AssetsDefinition]:
    """The assets; `sharding` maps shard source keys (`oura-3`) to providers and users."""

    @dg.asset(
        partitions_def=partitions,
        group_name="sync",
        kinds={"python", "sql"},
        owners=["team:data-engineering"],
        check_specs=[
            dg.AssetCheckSpec(
                "plausible_ranges",
                asset="raw_health_records",
                description="Every value lies in its type's physiologically plausible range.",
            ),
            dg.AssetCheckSpec(
                "linked_heart_rate_present",
                asset="raw_health_records",
                description="Every ECG recording and RR session has heart rate within a minute.",
            ),
        ],
    )
    def raw_health_records(
        context: dg.AssetExecutionContext, store: RecordStoreResource, sources: SourcesResource
    ) -> dg.MaterializeResult:
        """Records fetched from the partition's source for its UTC day, normalized to canonical
        units and upserted into the record store. Run tags (ohx_dagster/run_request.py) choose
        the window (`ohx/strategy`: partition, the default, = the whole day; incremental; push;
        initial; close) and the users (`ohx/users`, `ohx/frequencies`, `ohx/close-at`)."""
        day, shard = day_and_shard(context, sharding)
        source_name = shard.provider
        record_store = store.get_store()
        request = SyncRequest.from_tags(context.run.tags)
        try:
            report = sync_partition(
                sources.get(source_name, record_store),
                record_store,
                utc_day(day),
                strategy=request.strategy,
                user_ids=request.user_ids,
                select=request.selects,
                since=request.since,
                shard=None if shard.whole else shard,
                now=datetime.now(UTC),
            )
        except SyncFailed as failed:
            # The other users' records are committed; only a provider error is worth a retry,
            # after the provider's Retry-After when it gave one.
            if failed.report.transient:
                wait = failed.report.retry_after_s or RETRY_WAIT_S
                raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait) from failed
            raise
        stored = record_store.read_records(
            source_name, utc_day(day), user_ids=_scope(context, record_store, shard)
        )
        implausible = implausible_values(stored)
        unlinked = recordings_without_heart_rate(stored)
        context.log.info(
            f"{shard.key} {day}: {report.records} records fetched "
            f"for {len(report.users_synced)} users"
        )
        return dg.MaterializeResult(
            metadata={
                "strategy": request.strategy.value,
                "records_fetched": report.records,
                "records_in_partition": len(stored),
                "users": len(report.users_synced),
                "users_skipped": dg.MetadataValue.json(report.users_skipped),
                "records_by_type": dg.MetadataValue.json(report.records_by_type),
                **_span(report.first, report.last),
                "preview": _preview(
                    stored, ["user_id", "data_type", "ts", "value", "unit", "device_id"]
                ),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="plausible_ranges",
                    passed=not implausible,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"implausible_by_type": dg.MetadataValue.json(implausible)},
                ),
                dg.AssetCheckResult(
                    check_name="linked_heart_rate_present",
                    passed=not unlinked,
                    metadata={
                        "missing": dg.MetadataValue.json(unlinked[:20]),
                        "count": len(unlinked),
                    },
                ),
            ],
        )

    @dg.asset(
        partitions_def=partitions,
        deps=[raw_health_records],
        group_name="aggregates",
        kinds={"pandas", "sql"},
        owners=["team:data-engineering"],
        check_specs=[
            dg.AssetCheckSpec(
                "counts_match_records",
                asset="hourly_aggregates",
                description="Hourly counts add up to the partition's records, per user and type.",
            ),
            dg.AssetCheckSpec(
                "statistics_consistent",
                asset="hourly_aggregates",
                description="min <= mean <= max and count >= 1 in every bucket.",
            ),
        ],
    )
    def hourly_aggregates(
        context: dg.AssetExecutionContext, store: RecordStoreResource
    ) -> dg.MaterializeResult:
        """Count, min, max, mean and sum per user, type and UTC hour of the partition day
        (blood pressure: systolic and diastolic). ECG waveforms are not aggregated."""
        day, shard = day_and_shard(context, sharding)
        source_name = shard.provider
        record_store = store.get_store()
        scope = _scope(context, record_store, shard)
        records = record_store.read_records(source_name, utc_day(day), user_ids=scope)
        stats = aggregate.hourly(records, _zones(record_store, source_name))
        record_store.upsert_aggregates(stats)
        # Read back what the table now holds: stale or lost buckets show up as a mismatch.
        stored = record_store.read_aggregates(source_name, "hourly", utc_day(day), user_ids=scope)
        if scope is not None and not stored.empty:
            stored = stored[stored["user_id"].isin(scope)]
        counted = aggregate.aggregated_records(records)
        expected = counted.groupby(["user_id", "data_type"]).size()
        got = (
            stored.groupby(["user_id", "data_type"])["count"].sum()
            if not stored.empty
            else expected.iloc[:0]
        )
        mismatched = expected.sub(got, fill_value=0)
        mismatched = mismatched[mismatched != 0]
        return dg.MaterializeResult(
            metadata={
                "buckets": len(stats),
                "users": int(stats["user_id"].nunique()) if not stats.empty else 0,
                "records_aggregated": int(stats["count"].sum()) if not stats.empty else 0,
                "preview": _preview(
                    stats,
                    ["user_id", "data_type", "bucket_start_us", "count", "min", "max", "mean"],
                ),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="counts_match_records",
                    passed=mismatched.empty,
                    metadata={
                        "mismatched": dg.MetadataValue.json(
                            {f"{u} {t}": float(v) for (u, t), v in mismatched.items()}
                        )
                    },
                ),
                _consistency(stats),
            ],
        )

    @dg.asset(
        partitions_def=partitions,
        deps=[hourly_aggregates],
        group_name="aggregates",
        kinds={"pandas", "sql"},
        owners=["team:data-engineering"],
        check_specs=[
            dg.AssetCheckSpec(
                "statistics_consistent",
                asset="daily_aggregates",
                description="min <= mean <= max and count >= 1 for every local day.",
            ),
        ],
    )
    def daily_aggregates(
        context: dg.AssetExecutionContext, store: RecordStoreResource
    ) -> dg.MaterializeResult:
        """Statistics per user and type over the partition's date as a local calendar day in each
        user's time zone (reads the neighbouring UTC days from the store as zones require)."""
        day, shard = day_and_shard(context, sharding)
        source_name = shard.provider
        record_store = store.get_store()
        records = record_store.read_records(
            source_name,
            aggregate.records_window_for_local_day(day),
            user_ids=_scope(context, record_store, shard),
        )
        stats = aggregate.daily(records, _zones(record_store, source_name), day)
        record_store.upsert_aggregates(stats)
        return dg.MaterializeResult(
            metadata={
                "local_day": day.isoformat(),
                "rows": len(stats),
                "users": int(stats["user_id"].nunique()) if not stats.empty else 0,
                "preview": _preview(
                    stats, ["user_id", "data_type", "count", "min", "max", "mean", "sum"]
                ),
            },
            check_results=[
                _consistency(stats),
            ],
        )

    @dg.asset(
        partitions_def=partitions,
        deps=[daily_aggregates],
        group_name="fhir",
        kinds={"fhir", "json"},
        owners=["team:clinical-integration"],
        check_specs=[
            dg.AssetCheckSpec(
                "valid_r5",
                asset="fhir_observations",
                description="Every emitted resource validates against FHIR R5.",
            ),
            dg.AssetCheckSpec(
                "unique_ids",
                asset="fhir_observations",
                description="No two emitted resources share an id.",
            ),
        ],
    )
    def fhir_observations(
        context: dg.AssetExecutionContext, store: RecordStoreResource
    ) -> dg.MaterializeResult:
        """FHIR R5 Observations for the partition, per each user's aggregation preference, as
        NDJSON at <OHX_FHIR_DIR>/<day>/<source key>/<ResourceType>.ndjson (per shard of a
        sharded source: its users only), byte-identical on re-runs."""
        day, shard = day_and_shard(context, sharding)
        record_store = store.get_store()
        resources = partition_resources(
            record_store, shard.provider, day, user_ids=_shard_users(record_store, shard)
        )
        directory = fhir_dir / day.isoformat() / shard.key
        counts = write_ndjson(directory, resources)
        problems = validate_resources(resources, limit=VALIDATION_SAMPLE)
        ids = pd.Series([r["id"] for r in resources], dtype="object")
        duplicates = ids[ids.duplicated()].tolist()
        return dg.MaterializeResult(
            metadata={
                "directory": dg.MetadataValue.path(str(directory)),
                "resources": len(resources),
                "resources_by_type": dg.MetadataValue.json(counts),
                "patients": len({r["subject"]["reference"] for r in resources if "subject" in r}),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="valid_r5",
                    passed=not problems,
                    metadata={
                        "problems": dg.MetadataValue.json([str(p) for p in problems[:20]]),
                        "count": len(problems),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="unique_ids",
                    passed=not duplicates,
                    metadata={"duplicates": dg.MetadataValue.json(duplicates[:20])},
                ),
            ],
        )

    return [raw_health_records, hourly_aggregates, daily_aggregates, fhir_observations]
