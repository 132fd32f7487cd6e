"""webhook_sensor: turns provider webhooks in the durable inbox into push-sync runs.

Each tick reads at most BATCH_LIMIT events after its cursor (so a tick stays far below Dagster's
60 s limit even with 100k events waiting), decides per event which partition it belongs to or
why it is ignored, and asks for one run per partition, for just the people the events name: all
of a partition's events of a tick are coalesced into that one run. An event's partition is its
day x the shard key of its person (`oura-3`; `oura` when not sharded). The run reads its events
back from the inbox by its run key (tag `ohx/inbox`) and fetches what they announce, wherever it
falls (a Withings range over two days, an Oura night that began yesterday).
run_key = partition + last event id: a tick that is evaluated twice launches nothing twice.
The run names its people by their salted subjects (`ohx/subjects`), never by id; the reasons of
ignored events, which name people, are kept with the events in the inbox (`reason`), and the
tick's log line counts them per reason without naming anyone.
"""

from collections.abc import Sequence
from datetime import date

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import partition_key
from ohx_dagster.sync.dispatch import ignored_summary, plan_dispatch
from ohx_dagster.sync.inbox import Inbox, InboxEvent
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Sharding
from ohx_dagster.sync.strategies import SyncStrategy
from resources import RecordStoreResource

BATCH_LIMIT = 2_000


def run_request_for(day: date, source: str, events: Sequence[InboxEvent]) -> dg.RunRequest:
    run_key = f"webhook|{day.isoformat()}|{source}|{max(e.id for e in events)}"
    request = SyncRequest.for_people(
        SyncStrategy.PUSH, events[0].provider, {e.user_id for e in events}, inbox=run_key
    )
    return dg.RunRequest(
        run_key=run_key,
        partition_key=partition_key(day, source),
        tags={**request.tags(), "ohx/inbox-events": str(len(events))},
    )


def build_webhook_sensor(
    job: dg.JobDefinition | UnresolvedAssetJobDefinition,
    sources: Sequence[str] | Sharding,
    first_day: date,
) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Drains the webhook inbox ({BATCH_LIMIT} events a tick at most) into "
        "push-sync runs, one per day x source partition, for the users the events name.",
    )
    def webhook_sensor(
        context: dg.SensorEvaluationContext, store: RecordStoreResource
    ) -> dg.SensorResult:
        record_store = store.get_store()
        inbox = Inbox(record_store)
        cursor = int(context.cursor or 0)
        events = inbox.for_sensor(cursor, BATCH_LIMIT)
        if not events:
            return dg.SensorResult(skip_reason=f"no webhook events after id {cursor}")
        dispatch = plan_dispatch(events, record_store, sources, first_day)
        requests = []
        for (day, source), group in sorted(dispatch.groups.items()):
            request = run_request_for(day, source, group)
            requests.append(request)
            inbox.mark_dispatched([e.id for e in group], request.run_key or "")
        if dispatch.ignored:
            inbox.mark_ignored(dispatch.ignored)
            context.log.info(ignored_summary(dispatch.ignored))
        return dg.SensorResult(run_requests=requests, cursor=str(max(e.id for e in events)))

    return webhook_sensor
