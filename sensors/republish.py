"""republish_sensor: what changed outside a run's own partition gets published by itself.

A run writes what it fetches where it belongs: the re-sync horizon re-reads yesterday, a Withings
notification names two days, an Oura night began before midnight, a provider deleted a record.
The store marks every day partition whose data changed (store.day_versions); this sensor asks, per
such day and source key, for a `refresh` run for the people whose day changed (no fetch:
statistics, FHIR and delivery only). It also asks for one when a person's day, published as
preliminary, has become final (their local day is covered, and it and the re-sync horizon are
over).

Partitions with a run queued or running are left for a later tick. The run key names the tick's
hour, so a refresh that failed is asked for again an hour later, never lost. The runs name their
people by salted subject (`ohx/subjects`), never by id.
"""

import hashlib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import partition_key
from ohx_dagster.privacy.subjects import erasure_salt
from ohx_dagster.publish.partitions import finality
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Sharding
from ohx_dagster.sync.strategies import SyncStrategy
from resources import RecordStoreResource, SourcesResource
from sensors.schedules import in_flight_partitions

# How far back preliminary days are looked at: longer than any re-sync horizon.
FINAL_LOOKBACK = timedelta(days=10)


def days_to_republish(
    store: RecordStore, provider: str, horizon: timedelta, now: datetime
) -> dict[date, set[str]]:
    """Per day, the people whose day changed since it was published or has become final."""
    due: dict[date, set[str]] = defaultdict(set)
    for day, people in store.unpublished_days(provider).items():
        due[day] |= people
    configs = {c.user_id: c for c in store.users(provider, connected_only=False)}
    for day, people in store.preliminary_days(provider, (now - FINAL_LOOKBACK).date()).items():
        known = {u: configs[u] for u in people if u in configs}
        final = finality(store, provider, day, known, now=now, horizon=horizon)
        due[day] |= {u for u, is_final in final.items() if is_final}
    return dict(due)


def build_republish_sensor(
    job: dg.JobDefinition | UnresolvedAssetJobDefinition, sharding: Sharding, first_day: date
) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Publishes day partitions whose data changed outside their own runs (late "
        "uploads, notifications naming other days, deletions) and days that became final.",
    )
    def republish_sensor(
        context: dg.SensorEvaluationContext, store: RecordStoreResource, sources: SourcesResource
    ) -> dg.SensorResult:
        now = datetime.now(UTC)
        record_store = store.get_store()
        busy = in_flight_partitions(context.instance, job.name)
        salt = erasure_salt()
        requests = []
        skipped = 0
        for provider in sharding:
            due = days_to_republish(record_store, provider, sources.horizon(provider), now)
            for day, people in sorted(due.items()):
                if day < first_day or day > now.date():
                    skipped += 1
                    continue
                by_key: dict[str, set[str]] = defaultdict(set)
                for user_id in people:
                    by_key[sharding.key_of(provider, user_id)].add(user_id)
                for key, users in sorted(by_key.items()):
                    partition = partition_key(day, key)
                    if str(partition) in busy:
                        continue
                    request = SyncRequest.for_people(
                        SyncStrategy.REFRESH, provider, users, salt=salt
                    )
                    # The people by subject: the run key names no one, the same in every process.
                    subjects = ",".join(sorted(request.subjects or ()))
                    digest = hashlib.sha256(subjects.encode()).hexdigest()[:16]
                    requests.append(
                        dg.RunRequest(
                            run_key=f"refresh|{partition}|{now:%Y-%m-%dT%H}|{digest}",
                            partition_key=partition,
                            tags=request.tags(),
                        )
                    )
        if skipped:
            context.log.info(
                f"{skipped} changed days lie outside the partitions and stay as they are"
            )
        if not requests:
            return dg.SensorResult(skip_reason="nothing changed outside its own run")
        return dg.SensorResult(run_requests=requests)

    return republish_sensor
