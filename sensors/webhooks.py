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

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.partitions import partition_key
from ohx_dagster.storage.store import ACTIVE, PersonRow, RecordStore
from ohx_dagster.sync.inbox import Inbox, InboxEvent
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Sharding
from ohx_dagster.sync.strategies import SyncStrategy
from resources import RecordStoreResource

BATCH_LIMIT = 2_000


@dataclass
class Dispatch:
    """One tick's decisions: events grouped per partition, and events ignored with a reason."""

    groups: dict[tuple[date, str], list[InboxEvent]] = field(default_factory=dict)
    ignored: dict[int, str] = field(default_factory=dict)


def plan_dispatch(
    events: Sequence[InboxEvent],
    store: RecordStore,
    sources: Sequence[str] | Sharding,
    first_day: date,
) -> Dispatch:
    """Group events by (UTC day of the data, source key of the user's shard); ignore what no run
    could sync. `sources`: the live sources, with their shard counts when sharded."""
    if not isinstance(sources, Sharding):
        sources = Sharding.unsharded(sources)
    dispatch = Dispatch()
    groups: dict[tuple[date, str], list[InboxEvent]] = defaultdict(list)
    connected: dict[str, dict[str, PersonRow]] = {}
    for event in events:
        source = event.provider
        if source not in sources:
            dispatch.ignored[event.id] = f"no source {source!r} is configured (OHX_SOURCES)"
            continue
        if source not in connected:
            connected[source] = {p.config.user_id: p for p in store.people(source) if p.connected}
        person = connected[source].get(event.user_id)
        if person is None:
            dispatch.ignored[event.id] = f"user {event.user_id!r} is not connected to {source}"
            continue
        if person.state != ACTIVE:
            dispatch.ignored[event.id] = (
                f"user {event.user_id!r} {person.state.replace('_', ' ')}: connect the account "
                "again (the gap is fetched then)"
            )
            continue
        config = person.config
        if event.data_type is not None and event.data_type not in config.enabled_types:
            dispatch.ignored[event.id] = f"{event.data_type} is not enabled for {event.user_id!r}"
            continue
        # A provider clock ahead of ours does not open tomorrow's partition.
        moment = min(event.occurred_at or event.received_at, event.received_at)
        if moment.date() < first_day:
            dispatch.ignored[event.id] = f"{moment.date()} is before OHX_PARTITIONS_START"
            continue
        groups[(moment.date(), sources.key_of(source, event.user_id))].append(event)
    dispatch.groups = dict(groups)
    return dispatch


def ignored_summary(ignored: dict[int, str]) -> str:
    """One log line for the ignored events: how many per kind of reason, quoted names left out
    (the reasons name people: each is kept with its event, `webhook_inbox.reason`)."""
    kinds: dict[str, int] = defaultdict(int)
    for reason in ignored.values():
        kinds[re.sub(r"'[^']*'|\"[^\"]*\"", "<...>", reason)] += 1
    listed = "; ".join(f"{n} x {kind}" for kind, n in sorted(kinds.items()))
    return f"ignored {len(ignored)} events (reasons in webhook_inbox): {listed}"


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
