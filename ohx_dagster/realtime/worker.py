"""The realtime worker's loop: the webhook inbox answered in batches, without a run per event.

A push run launched by the webhook sensor pays Dagster's fixed cost (a process, the code location,
the event log: about 4 CPU-s) for every partition of every tick. The worker is one long-lived
process that does the same work on the same code path and pays that cost once:

1. read the pending events in id order (at most `batch` of them);
2. decide each one's partition as the sensor does (ohx_dagster/sync/dispatch.py), and mark the
   ignored ones with their reasons;
3. per partition (day x shard key), one `sync_partition` push for all the people its events name,
   then `publish_partition` of every day that sync changed, scoped to those people;
4. mark the partition's events dispatched (`run_key` `worker|day|key|last id`).

At least once, never lost: an event is marked only after its data is committed and published, so a
worker that dies between two steps answers it again when it starts (upserts and coverage make the
second answer change nothing). A provider that rate-limits (429) leaves its deferred people's
events pending and is not called again before its Retry-After. A person's provider or data error
is reported (people counted, never named) and their events are marked: the push uncovered what
they announced, so the hourly incremental run fetches it (docs/sync.md).

Free of Dagster: the process (ohx_dagster/realtime/process.py) reports what each step published to
Dagster as materializations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Final

from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.base import Event, HealthSource
from ohx_dagster.publish.partitions import Validate, publish_partition
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.dispatch import plan_dispatch
from ohx_dagster.sync.fetch import SyncFailed, sync_partition
from ohx_dagster.sync.inbox import Inbox, InboxEvent
from ohx_dagster.sync.shards import Shard, Sharding
from ohx_dagster.sync.strategies import SyncStrategy

# Events read per step: a step's partitions then hold many people each (one sync and one publish
# per bucket for all of them), and a step still ends within seconds.
BATCH: Final = 5_000
# A rate-limited provider without a Retry-After is asked again after this long.
DEFAULT_BACKOFF: Final = timedelta(seconds=60)


@dataclass
class Handled:
    """One partition's share of a step: what Dagster is told, and each event's latency."""

    day: date
    key: str
    events: int = 0
    people: int = 0
    records: int = 0
    records_by_type: dict[str, int] = field(default_factory=dict)
    # Days published (the partition's own, and the days its new data fell in) -> resources.
    published: dict[date, int] = field(default_factory=dict)
    # People whose sync failed (counted: the failure text names people).
    failed: int = 0
    deferred: int = 0
    # Seconds from the receiver's commit of each answered event to its publication.
    latencies_s: list[float] = field(default_factory=list)


@dataclass
class Step:
    """What one step did."""

    handled: list[Handled] = field(default_factory=list)
    ignored: int = 0
    left_pending: int = 0

    @property
    def events(self) -> int:
        return sum(h.events for h in self.handled) + self.ignored


class RealtimeWorker:
    """Answers the inbox's pending events in batches (module docstring)."""

    def __init__(
        self,
        store: RecordStore,
        output: FhirOutput,
        *,
        sharding: Sharding,
        first_day: date,
        source_of: Callable[[str], HealthSource],
        horizon_of: Callable[[str], timedelta],
        validate: Validate | None,
        publish_ambiguous: bool = False,
        batch: int = BATCH,
        actor: str = "realtime worker",
    ) -> None:
        self.store = store
        self.output = output
        self.inbox = Inbox(store)
        self.sharding = sharding
        self.first_day = first_day
        self.source_of = source_of
        self.horizon_of = horizon_of
        self.validate = validate
        self.publish_ambiguous = publish_ambiguous
        self.batch = batch
        self.actor = actor
        # Pending events below the cursor were read and left pending (a rate-limited provider):
        # read again from the start once a pause ends.
        self._cursor = 0
        self._paused: dict[str, float] = {}

    def step(self, now: datetime) -> Step:
        """Answer at most `batch` pending events; an empty Step when there are none."""
        step = Step()
        self._resume()
        events = [e for e in self.inbox.after(self._cursor, self.batch) if not self._held(e)]
        if not events:
            return step
        dispatch = plan_dispatch(events, self.store, self.sharding, self.first_day)
        if dispatch.ignored:
            self.inbox.mark_ignored(dispatch.ignored)
            step.ignored = len(dispatch.ignored)
        for (day, key), group in sorted(dispatch.groups.items()):
            if self._held(group[0]):  # the provider rate-limited an earlier partition
                step.left_pending += len(group)
                continue
            handled, answered = self._answer(day, key, group, now)
            step.handled.append(handled)
            step.left_pending += len(group) - len(answered)
            if answered:
                self.inbox.mark_dispatched(
                    [e.id for e in answered], f"worker|{day.isoformat()}|{key}|{answered[-1].id}"
                )
        self._cursor = max(e.id for e in events)
        return step

    def _answer(
        self, day: date, key: str, group: list[InboxEvent], now: datetime
    ) -> tuple[Handled, list[InboxEvent]]:
        """Sync and publish one partition's events; the events answered (the others wait)."""
        shard = self.sharding.shard(key)
        provider = shard.provider
        people = {e.user_id for e in group}
        handled = Handled(day, key, people=len(people))
        notifications: dict[str, list[Event]] = {}
        for e in group:
            notifications.setdefault(e.user_id, []).append(
                Event(e.data_type, e.occurred_at, e.received_at, e.payload)
            )
        try:
            report = sync_partition(
                self.source_of(provider),
                self.store,
                day,
                strategy=SyncStrategy.PUSH,
                user_ids=people,
                events=notifications,
                shard=None if shard.whole else shard,
                now=now,
            )
        except SyncFailed as failed:
            report = failed.report
            handled.failed = len(report.failures)
            if report.deferred:
                wait = report.retry_after_s or DEFAULT_BACKOFF.total_seconds()
                self._paused[provider] = time.monotonic() + wait
        deferred = set(report.deferred)
        handled.deferred = len(deferred)
        answered = [e for e in group if e.user_id not in deferred]
        handled.events = len(answered)
        handled.records = report.records
        handled.records_by_type = dict(report.records_by_type)
        synced = sorted(people - deferred)
        for changed in sorted(report.days_changed | {day}):
            if changed < self.first_day or not synced:
                continue
            published = self._publish(key, shard, changed, synced, now)
            handled.published[changed] = published
        done = time.time()
        handled.latencies_s = [done - e.received_at.timestamp() for e in answered]
        return handled, answered

    def _publish(self, key: str, shard: Shard, day: date, people: list[str], now: datetime) -> int:
        """Publish the people's `day` in the partition of `key`; how many resources."""
        published = publish_partition(
            self.store,
            self.output,
            provider=shard.provider,
            key=key,
            shard=shard,
            day=day,
            scope=people,
            now=now,
            horizon=self.horizon_of(shard.provider),
            validate=self.validate,
            publish_ambiguous=self.publish_ambiguous,
            actor=self.actor,
        )
        return published.resources

    def _held(self, event: InboxEvent) -> bool:
        return event.provider in self._paused

    def _resume(self) -> None:
        """Providers whose Retry-After has passed are called again; their events are re-read."""
        over = [p for p, until in self._paused.items() if until <= time.monotonic()]
        for provider in over:
            del self._paused[provider]
        if over:
            self._cursor = 0
