"""The realtime worker's loop (ohx_dagster/realtime/worker.py) on a real SQLite store and output.

Invariants attacked:
- every pending event is answered exactly once, or ignored with its reason, or left pending
  while its provider rate-limits: never lost;
- a worker that dies between publishing and marking answers the events again, and the second
  answer changes no record and counts no sample twice;
- whatever the batch size, the records stored equal the provider's for the window the events
  announced, and every published resource id is unique.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohx_dagster.core.errors import RateLimited
from ohx_dagster.core.models import DateRange, HealthDataType
from ohx_dagster.core.times import utc_day
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.publish.partitions import partition_dir, validate_sample
from ohx_dagster.realtime.worker import RealtimeWorker
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.shards import Sharding

DAY = date(2026, 11, 30)
SYNCED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # everyone synced up to here
NOW = SYNCED + timedelta(minutes=20)
FIRST = date(2026, 11, 1)
HR = HealthDataType.HEART_RATE


class World:
    """A store and output in `folder`, three simulated people synced to SYNCED."""

    def __init__(self, folder: Path, shards: int = 1) -> None:
        self.store = RecordStore(f"sqlite:///{folder / 'ohx.db'}")
        self.output = FhirOutput(str(folder / "fhir"))
        self.clock = [SYNCED]
        self.simulator = SimulatedSource(3, hr_hz=0.2, clock=lambda: self.clock[0])
        self.source = Windowed(self.simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
        self.people = [u.user_id for u in self.simulator.discover_users()]
        self.store.add_users(self.simulator.discover_users())
        sync_partition(self.source, self.store, DAY, now=SYNCED)
        self.sharding = Sharding({"simulated": shards})
        self.inbox = Inbox(self.store)

    def worker(self, batch: int = 5_000, source=None) -> RealtimeWorker:
        return RealtimeWorker(
            self.store,
            self.output,
            sharding=self.sharding,
            first_day=FIRST,
            source_of=lambda provider: source or self.source,
            horizon_of=lambda provider: timedelta(hours=1),
            validate=validate_sample,
            batch=batch,
        )

    def notify(self, user: str, minute: int, key: str | None = None) -> None:
        when = SYNCED + timedelta(minutes=minute)
        self.inbox.add(
            [NewEvent("simulated", key or f"{user}-{minute}", user, "heart_rate", when, {})]
        )

    def heart_rate(self, user: str) -> list[int]:
        window = DateRange(utc_day(DAY).start, NOW)
        found = self.store.read_records("simulated", window, user_ids=[user])
        found = found[found["data_type"] == HR.value]
        return sorted(int(t.value) for t in found["ts"])

    def truth(self, user: str) -> list[int]:
        config = next(c for c in self.simulator.discover_users() if c.user_id == user)
        window = DateRange(utc_day(DAY).start, NOW)
        frame = self.simulator.fetch(config, [HR], window)
        return sorted(int(t.value) for t in frame["ts"])

    def published_ids(self, key: str = "simulated") -> Counter:
        manifest = self.output.manifest(partition_dir(DAY, key))
        assert manifest is not None
        ids: Counter = Counter()
        for entry in manifest["output"]:
            name = entry["url"].rsplit("/", 1)[-1]
            for resource in self.output.read_resources(f"{partition_dir(DAY, key)}/{name}"):
                ids[(resource["resourceType"], resource["id"])] += 1
        return ids


def drain(worker: RealtimeWorker, now: datetime, steps: int = 50) -> int:
    answered = 0
    for _ in range(steps):
        step = worker.step(now)
        if not step.events:
            return answered
        answered += step.events
    raise AssertionError("the worker did not drain the inbox")


def test_one_step_answers_every_partitions_people_at_once(tmp_path) -> None:
    world = World(tmp_path)
    a, b, c = world.people
    world.clock[0] = NOW
    world.notify(a, 5)
    world.notify(b, 10)
    world.inbox.add([NewEvent("simulated", "x", "nobody", "heart_rate", NOW, {})])
    step = world.worker().step(NOW)
    assert step.ignored == 1 and step.left_pending == 0
    (handled,) = step.handled
    assert (handled.day, handled.key, handled.events, handled.people) == (DAY, "simulated", 2, 2)
    assert handled.records > 0 and handled.published[DAY] > 0
    assert len(handled.latencies_s) == 2 and all(x >= 0 for x in handled.latencies_s)
    counts = world.inbox.counts()
    assert (counts["pending"], counts["dispatched"], counts["ignored"]) == (0, 2, 1)
    # The notified people's data up to NOW is stored; the third person's stays at SYNCED.
    assert world.heart_rate(a) == world.truth(a)
    assert world.heart_rate(b) == world.truth(b)
    assert max(world.heart_rate(c)) < int(SYNCED.timestamp() * 1e9)
    # Nothing waits: the next step finds no work.
    assert world.worker().step(NOW).events == 0


def test_a_worker_that_dies_before_marking_answers_again_and_counts_nothing_twice(
    tmp_path, monkeypatch
) -> None:
    world = World(tmp_path)
    a = world.people[0]
    world.clock[0] = NOW
    world.notify(a, 15)

    def die(*args, **kwargs):
        raise SystemExit("killed between publishing and marking")

    monkeypatch.setattr(Inbox, "mark_dispatched", die)
    with pytest.raises(SystemExit):
        world.worker().step(NOW)
    stored = world.heart_rate(a)
    first_ids = world.published_ids()
    monkeypatch.undo()
    assert world.inbox.counts()["pending"] == 1
    step = world.worker().step(NOW)  # a new worker process
    assert step.events == 1 and world.inbox.counts()["dispatched"] == 1
    assert world.heart_rate(a) == stored == world.truth(a)
    again = world.published_ids()
    assert set(again) == set(first_ids) and max(again.values()) == 1


class RateLimitedOnce:
    """The simulated source behind a provider that answers 429 to its first call."""

    def __init__(self, source: Windowed) -> None:
        self.source = source
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def fetch_windows(self, user, windows):
        self.calls += 1
        if self.calls == 1:
            raise RateLimited("simulated", retry_after_s=30.0)
        return self.source.fetch_windows(user, windows)


def test_a_rate_limited_provider_leaves_its_events_pending_until_its_retry_after(
    tmp_path, monkeypatch
) -> None:
    world = World(tmp_path)
    a, b, _ = world.people
    world.clock[0] = NOW
    world.notify(a, 5)
    world.notify(b, 6)
    limited = RateLimitedOnce(world.source)
    worker = world.worker(source=limited)
    step = worker.step(NOW)
    (handled,) = step.handled
    assert handled.deferred == 2 and handled.events == 0 and step.left_pending == 2
    assert world.inbox.counts()["pending"] == 2
    # Within the Retry-After the provider is not called again.
    assert worker.step(NOW).events == 0 and limited.calls == 1
    clock = __import__("time").monotonic() + 31
    monkeypatch.setattr("ohx_dagster.realtime.worker.time.monotonic", lambda: clock)
    assert drain(worker, NOW) == 2
    assert world.inbox.counts()["pending"] == 0
    assert world.heart_rate(a) == world.truth(a) and world.heart_rate(b) == world.truth(b)


@given(
    notes=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 20)), min_size=1, max_size=12),
    batch=st.integers(1, 6),
    shards=st.sampled_from([1, 2]),
)
@settings(
    max_examples=examples(12),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_batching_stores_every_sample_once_and_answers_every_event(notes, batch, shards):
    with tempfile.TemporaryDirectory() as folder:
        world = World(Path(folder), shards=shards)
        world.clock[0] = NOW
        for position, (who, minute) in enumerate(notes):
            world.notify(world.people[who], minute, key=f"e{position}")
        events = world.inbox.counts()["pending"]
        assert drain(world.worker(batch=batch), NOW) == events
        assert world.inbox.counts()["pending"] == 0
        for who in {w for w, _ in notes}:
            person = world.people[who]
            assert world.heart_rate(person) == world.truth(person)
        for key in world.sharding.all_keys():
            if world.output.manifest(partition_dir(DAY, key)) is not None:
                assert max(world.published_ids(key).values()) == 1
        world.store.dispose()
