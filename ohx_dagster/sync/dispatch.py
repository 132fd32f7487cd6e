"""Which partition each webhook event belongs to, or why no sync could answer it.

The webhook sensor (sensors/webhooks.py) and the realtime worker (ohx_dagster/realtime/) read the
same inbox and decide the same way: an event's partition is the day of its data x the shard key of
its person (`oura-3`; `oura` when not sharded); an event of a source that is not configured, of a
person not connected or not active, of a type they do not sync, or before the first partition is
ignored with its reason (kept with the event in the inbox: reasons name people).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from ohx_dagster.storage.store import ACTIVE, PersonRow, RecordStore
from ohx_dagster.sync.inbox import InboxEvent
from ohx_dagster.sync.shards import Sharding


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
