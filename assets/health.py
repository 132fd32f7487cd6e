"""The partitioned assets of the sync path, built for one partitions definition.

raw_health_records -> hourly_aggregates -> daily_aggregates -> fhir_observations (-> fhir_delivery)

`raw_health_records` fetches and commits; the three downstream assets are one step
(`publish_partition`): each bucket of people whose day changed is read from the store once, its
statistics and FHIR computed from that read, and the step reports each asset with its own checks.
Every asset returns the numbers a data engineer checks first, and checks that stop bad output.
People are named by their salted subject in the run's tags, metadata, check results, log lines
and failures, never by id (assets/pseudonyms.py): Dagster's storage holds nothing erasure must
chase for runs made since issue 19.
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime

import dagster as dg
import pandas as pd

from assets.metadata import hourly_charts, hourly_plot, span, type_table
from assets.partitions import BACKFILL_POLICY, days_and_shard
from assets.pseudonyms import Hider, run_request
from ohx_dagster.privacy.subjects import short
from ohx_dagster.providers.base import Event
from ohx_dagster.publish import aggregate
from ohx_dagster.publish.partitions import partition_dir, publish_partition, validate_sample
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import SyncFailed, SyncReport, run_checks, sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.quality import aggregate_inconsistencies
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Sharding
from ohx_dagster.sync.strategies import SyncStrategy
from resources import FhirOutputResource, RecordStoreResource, SourcesResource

MAX_RETRIES = 3
RETRY_WAIT_S = 30.0


def events_of(store: RecordStore, request: SyncRequest) -> dict[str, list[Event]]:
    """The notifications a push run answers, per person (read from the inbox by run key)."""
    if request.inbox is None:
        return {}
    found: dict[str, list[Event]] = {}
    for event in Inbox(store).dispatched_to(request.inbox):
        found.setdefault(event.user_id, []).append(
            Event(event.data_type, event.occurred_at, event.received_at, event.payload)
        )
    return found


def people_of(report: SyncReport, request: SyncRequest) -> set[str]:
    """Everyone a sync run's report can name (their ids are hidden from what it tells Dagster)."""
    return (
        set(report.users_synced)
        | set(report.users_skipped)
        | set(report.failures)
        | set(report.refused)
        | set(report.deferred)
        | set(request.user_ids or ())
    )


def build_health_assets(
    partitions: dg.MultiPartitionsDefinition, sharding: Sharding
) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=partitions,
        backfill_policy=BACKFILL_POLICY,
        group_name="sync",
        kinds={"python", "sql"},
        owners=["team:data-engineering"],
        check_specs=[
            dg.AssetCheckSpec(
                "day_covered",
                asset="raw_health_records",
                blocking=True,
                description="Every person the run synced has the day covered, for every type "
                "the source delivers and the provider did not refuse (no gap left behind).",
            ),
            dg.AssetCheckSpec(
                "nothing_skipped",
                asset="raw_health_records",
                description="Every person the run was asked to sync was reached and served every "
                "enabled type: a type the provider refuses (403, with its reason) and a person "
                "whose grant it no longer accepts (needs reauthorization) are named here until "
                "the person reconnects or their settings change (a warning: no retry helps).",
            ),
            dg.AssetCheckSpec(
                "plausible_ranges",
                asset="raw_health_records",
                description="Every fetched value lies in its type's physiologically plausible "
                "range (a warning: rare values are real too).",
            ),
            dg.AssetCheckSpec(
                "linked_heart_rate_present",
                asset="raw_health_records",
                description="Every ECG recording and RR session has heart rate within a minute "
                "(not blocking: a recording without it is still right, its report only lacks "
                "the heart-rate link).",
            ),
        ],
    )
    def raw_health_records(
        context: dg.AssetExecutionContext,
        store: RecordStoreResource,
        sources: SourcesResource,
    ) -> dg.MaterializeResult:
        """Records fetched from the partition's source and committed to the record store with
        the coverage they prove. Run tags (ohx_dagster/sync/run_request.py) choose the windows
        (`ohx/strategy`: partition, the default, = the whole day; incremental; push; initial;
        close; refresh) and the people (`ohx/subjects`, or `ohx/users` typed by an operator;
        `ohx/frequencies`, `ohx/close-at`)."""
        days, shard = days_and_shard(context, sharding)
        record_store = store.get_store()
        request, hide = run_request(context, context.run.tags, record_store, shard.provider)
        source = sources.get(shard.provider, record_store)
        now = datetime.now(UTC)
        try:
            report = sync_partition(
                source,
                record_store,
                days,
                strategy=request.strategy,
                user_ids=request.user_ids,
                select=request.selects,
                events=events_of(record_store, request),
                shard=None if shard.whole else shard,
                now=now,
            )
        except SyncFailed as failed:
            # The other people's records are committed; only a provider error or a rate limit
            # is worth a retry, after the provider's Retry-After when it gave one. The message
            # names people by subject; the error that named them by id is not chained.
            message = hide(str(failed), people_of(failed.report, request))
            if failed.report.transient:
                wait = failed.report.retry_after_s or RETRY_WAIT_S
                context.log.warning(message)
                raise dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait) from None
            raise dg.Failure(description=message) from None
        people = people_of(report, request)
        checks = hide(run_checks(record_store, report, now), people)
        uncovered, skipped = checks["day_covered"], checks["nothing_skipped"]
        users_skipped = hide(report.users_skipped, people)
        # Subjects of the run's tags that name nobody of the provider: asked for, not synced
        # (erased, not connected, or hashed with another salt: OHX_ERASURE_SALT must be the
        # same in every process).
        nobody = "names no person of the source (erased, or another OHX_ERASURE_SALT?)"
        users_skipped |= {short(s): nobody for s in sorted(request.unmatched)}
        skipped = skipped + [f"subject {short(s)}: {nobody}" for s in sorted(request.unmatched)]
        context.log.info(
            f"{shard.key} {_span_text(days)}: {report.records} records fetched for "
            f"{len(report.users_synced)} people, {len(report.days_changed)} day partitions changed"
            + (
                f"; {report.erased_left_out} erased people left out"
                if report.erased_left_out
                else ""
            )
        )
        return dg.MaterializeResult(
            metadata={
                "strategy": request.strategy.value,
                "records_fetched": report.records,
                "people": len(report.users_synced),
                "people_skipped": dg.MetadataValue.json(users_skipped),
                # Offered by the source but erased (tombstones): a count, never who.
                "erased_people_left_out": report.erased_left_out,
                "types_refused": dg.MetadataValue.json(hide(report.refused, people)),
                "records_by_type": dg.MetadataValue.json(report.records_by_type),
                "days_changed": dg.MetadataValue.json(
                    sorted(d.isoformat() for d in report.days_changed)
                ),
                **span(report.first, report.last),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="day_covered",
                    passed=not uncovered,
                    metadata={"uncovered": dg.MetadataValue.json(uncovered[:20])},
                ),
                dg.AssetCheckResult(
                    check_name="nothing_skipped",
                    passed=not skipped,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"skipped": dg.MetadataValue.json(skipped[:20])},
                ),
                dg.AssetCheckResult(
                    check_name="plausible_ranges",
                    passed=not report.implausible,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"implausible_by_type": dg.MetadataValue.json(report.implausible)},
                ),
                dg.AssetCheckResult(
                    check_name="linked_heart_rate_present",
                    passed=not report.unlinked,
                    metadata={
                        "missing": dg.MetadataValue.json(hide(report.unlinked[:20], people)),
                        "count": len(report.unlinked),
                    },
                ),
            ],
        )

    @dg.multi_asset(
        partitions_def=partitions,
        backfill_policy=BACKFILL_POLICY,
        specs=[
            dg.AssetSpec(
                "hourly_aggregates",
                deps=[raw_health_records],
                group_name="aggregates",
                kinds={"pandas", "sql"},
                owners=["team:data-engineering"],
                description="Count, min, max, mean and sum per person, type and UTC hour of the "
                "partition day (blood pressure: systolic and diastolic), with the devices "
                "counted. ECG waveforms are published as recordings, not statistics.",
            ),
            dg.AssetSpec(
                "daily_aggregates",
                deps=["hourly_aggregates"],
                group_name="aggregates",
                kinds={"pandas", "sql"},
                owners=["team:data-engineering"],
                description="The same statistics over the partition's date as a local calendar "
                "day in each person's time zone (23 or 25 hours across a clock change).",
            ),
            dg.AssetSpec(
                "fhir_observations",
                deps=["daily_aggregates"],
                group_name="fhir",
                kinds={"fhir", "json"},
                owners=["team:clinical-integration"],
                description="FHIR R5 bulk output of the partition: NDJSON per resource type and "
                "bucket of people under `OHX_FHIR_DIR/<day>/<source key>/` with a Bulk Data "
                "manifest.json naming exactly the files of one version; series, measurements, "
                "aggregates per each person's preference, ECG reports and Devices.",
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "counts_match_records",
                asset="hourly_aggregates",
                blocking=True,
                description="Hourly counts add up to the partition's records, per person and type.",
            ),
            dg.AssetCheckSpec(
                "statistics_consistent",
                asset="hourly_aggregates",
                blocking=True,
                description="min <= mean <= max and count >= 1 in every bucket.",
            ),
            dg.AssetCheckSpec(
                "statistics_consistent",
                asset="daily_aggregates",
                blocking=True,
                description="min <= mean <= max and count >= 1 for every local day.",
            ),
            dg.AssetCheckSpec(
                "valid_r5",
                asset="fhir_observations",
                blocking=True,
                description="Every published bucket validated against FHIR R5 (a bucket that "
                "does not is not published; the previous version stays).",
            ),
            dg.AssetCheckSpec(
                "unique_ids",
                asset="fhir_observations",
                blocking=True,
                description="No two published resources share an id.",
            ),
        ],
        can_subset=False,
    )
    def publish(
        context: dg.AssetExecutionContext,
        store: RecordStoreResource,
        sources: SourcesResource,
        output: FhirOutputResource,
    ):
        """Statistics and FHIR for the people whose day changed, one bucket read at a time."""
        days, shard = days_and_shard(context, sharding)
        record_store = store.get_store()
        request, hide = run_request(context, context.run.tags, record_store, shard.provider)
        reports = [
            publish_partition(
                record_store,
                output.get(),
                provider=shard.provider,
                key=shard.key,
                shard=shard,
                day=day,
                scope=request.user_ids,
                now=datetime.now(UTC),
                horizon=sources.horizon(shard.provider),
                force=request.strategy is SyncStrategy.PARTITION,
                run_id=context.run_id,
                publish_ambiguous=output.publish_ambiguous,
                validate=validate_sample,
            )
            for day in days
        ]
        hourly = _frames([f for r in reports for f in r.hourly_frames])
        daily = _frames([f for r in reports for f in r.daily_frames])
        # Everyone the step's reports can name: hidden behind their subjects.
        everyone = {u for r in reports for u in (*r.users, *r.preliminary_users)}
        everyone |= set(request.user_ids or ())
        for frame in (hourly, daily):
            if not frame.empty:
                everyone |= set(frame["user_id"].unique())
        mismatched = hide([m for r in reports for m in r.count_mismatches], everyone)
        problems = hide(
            [f"{r.day} bucket {b}: {p}" for r in reports for b, ps in r.invalid_buckets.items()
             for p in ps],
            everyone,
        )  # fmt: skip
        duplicates = hide([i for r in reports for i in r.duplicate_ids], everyone)
        by_type: dict[str, int] = {}
        for r in reports:
            for kind, count in r.resources_by_type.items():
                by_type[kind] = by_type.get(kind, 0) + count
        buckets = sum(len(r.buckets) for r in reports)
        people = sum(len(r.users) for r in reports)
        context.log.info(
            f"{shard.key} {_span_text(days)}: published {buckets} bucket(s) of {people} "
            f"people, {sum(by_type.values())} resources"
        )
        yield dg.MaterializeResult(
            asset_key="hourly_aggregates",
            metadata={
                "buckets": len(hourly),
                "people": int(hourly["user_id"].nunique()) if not hourly.empty else 0,
                "records_aggregated": int(hourly["count"].sum()) if not hourly.empty else 0,
                "records_per_hour": hourly_plot(hourly),
                **hourly_charts(hourly),
            },
            check_results=[
                dg.AssetCheckResult(
                    asset_key="hourly_aggregates",
                    check_name="counts_match_records",
                    passed=not mismatched,
                    metadata={"mismatched": dg.MetadataValue.json(mismatched[:20])},
                ),
                _consistency("hourly_aggregates", hourly, hide, everyone),
            ],
        )
        yield dg.MaterializeResult(
            asset_key="daily_aggregates",
            metadata={
                "local_days": _span_text(days),
                "rows": len(daily),
                "people": int(daily["user_id"].nunique()) if not daily.empty else 0,
                "by_type": type_table(daily),
            },
            check_results=[_consistency("daily_aggregates", daily, hide, everyone)],
        )
        yield dg.MaterializeResult(
            asset_key="fhir_observations",
            metadata={
                "directory": dg.MetadataValue.url(
                    output.get().url(partition_dir(days[-1], shard.key))
                ),
                "buckets_published": buckets,
                "people_published": people,
                "preliminary_people": sum(len(r.preliminary_users) for r in reports),
                "resources": sum(by_type.values()),
                "resources_by_type": dg.MetadataValue.json(by_type),
                "withdrawn_entered_in_error": sum(r.withdrawn for r in reports),
            },
            check_results=[
                dg.AssetCheckResult(
                    asset_key="fhir_observations",
                    check_name="valid_r5",
                    passed=not problems,
                    metadata={
                        "problems": dg.MetadataValue.json(problems[:20]),
                        "count": len(problems),
                    },
                ),
                dg.AssetCheckResult(
                    asset_key="fhir_observations",
                    check_name="unique_ids",
                    passed=not duplicates,
                    metadata={"duplicates": dg.MetadataValue.json(duplicates[:20])},
                ),
            ],
        )

    return [raw_health_records, publish]


def _span_text(days: Sequence[date]) -> str:
    return days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"


def _frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    parts = [f for f in frames if not f.empty]
    return pd.concat(parts, ignore_index=True) if parts else aggregate.empty_aggregates()


def _consistency(
    asset: str, stats: pd.DataFrame, hide: Hider, people: set[str]
) -> dg.AssetCheckResult:
    inconsistent = hide(aggregate_inconsistencies(stats), people)
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="statistics_consistent",
        passed=not inconsistent,
        metadata={"rows": dg.MetadataValue.json(inconsistent[:20]), "count": len(inconsistent)},
    )
