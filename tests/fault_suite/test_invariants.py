"""The sync's invariants, attacked with inputs hypothesis varies (faults/: the same harness as
`scripts/faults`, the simulated provider with late uploads and deletions, a real SQLite store).

Each property replays the product's orchestration (runs of every strategy, Dagster's retries, the
hourly schedule, the republish sensor) and states one promise:

- no sample the provider holds is ever lost or counted twice, whatever the order of runs and
  whatever arrives late or is deleted within the re-sync horizon;
- the published FHIR names exactly what the store holds;
- coverage never claims a window the provider did not answer;
- a crash at any write point loses nothing once the next hour's automation has run.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faults.backends import SQLite
from faults.harness import Clock, World, utc_midnight
from faults.providers import MutableSimulated
from faults.scenarios import InjectedCrash, crash_at
from ohx_dagster.core import coverage as cov
from ohx_dagster.core.errors import RateLimited
from ohx_dagster.core.models import HealthDataType, SyncFrequency
from ohx_dagster.core.times import to_us
from ohx_dagster.providers.base import Event, FetchResult, Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.sync.strategies import SyncStrategy

HR_HZ = 1 / 120
START = datetime.combine(datetime.now(UTC).date() - timedelta(days=3), time(10, 5), tzinfo=UTC)
TODAY = START.date()
FIRST_DAY = TODAY - timedelta(days=2)
PEOPLE = ("sim-001", "sim-002")
TYPES = (HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.SPO2,
         HealthDataType.WEIGHT)  # fmt: skip
CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def limits(examples: int) -> settings:
    """Bounded: the file runs in about a minute (a failure shrinks for longer)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=CHECKS)


def world_of(
    root: Path, *, horizon: timedelta, source_wrapper=None, url: str | None = None
) -> World:
    """Two hourly people of the simulated provider (four types each), connected well before the
    days the property plays with; `source_wrapper` wraps each run's source; `url`: a store that
    holds them already."""
    clock = Clock(START)
    reader = MutableSimulated(2, seed=7, clock=clock, hr_hz=HR_HZ)
    reader.chosen = [
        dataclasses.replace(c, sync_frequency=SyncFrequency.HOURLY, enabled_types=frozenset(TYPES))
        for c in reader.chosen
    ]
    source = Windowed(reader, SUPPORTED_TYPES["simulated"], horizon)
    factory = (lambda: source) if source_wrapper is None else (lambda: source_wrapper(source))
    connected = utc_midnight(FIRST_DAY) - timedelta(days=10)
    if url is not None:
        world = World(url, root, source, reader, clock, first_day=FIRST_DAY, factory=factory)
        world.activation_cursor = to_us(connected)
        return world
    url = SQLite().url(root, "ohx")
    world = World(url, root, source, reader, clock, first_day=FIRST_DAY, factory=factory)
    world.store.add_users(reader.chosen)
    world.backdate(connected)
    return world


STRATEGIES = [SyncStrategy.INCREMENTAL, SyncStrategy.PARTITION, SyncStrategy.PUSH,
              SyncStrategy.CLOSE, SyncStrategy.INITIAL]  # fmt: skip
run_op = st.tuples(st.just("run"), st.sampled_from(STRATEGIES), st.integers(0, 2))
late_op = st.tuples(st.just("late"), st.sampled_from(PEOPLE), st.integers(-48, -1),
                    st.integers(1, 6), st.integers(1, 20))  # fmt: skip
delete_op = st.tuples(st.just("delete"), st.sampled_from(PEOPLE), st.sampled_from(TYPES),
                      st.integers(-48, -1), st.integers(1, 6))  # fmt: skip
advance_op = st.tuples(st.just("advance"), st.integers(1, 5))
operations = st.lists(st.one_of(run_op, run_op, late_op, delete_op, advance_op), min_size=3,
                      max_size=7)  # fmt: skip


def apply(world: World, op: tuple[Any, ...]) -> None:
    reader: MutableSimulated = world.truth  # type: ignore[assignment]
    now = world.clock.now
    if op[0] == "run":
        _, strategy, back = op
        day = now.date() - timedelta(days=back)
        events = None
        if strategy is SyncStrategy.PUSH:
            events = {p: [Event(None, now, now, {})] for p in PEOPLE}
        world.sync(strategy, [day], events=events)
    elif op[0] == "late":
        # Hours of a person's data (hours ago) that reach the provider `delay` hours from now.
        _, person, hours_ago, length, delay = op
        start = now + timedelta(hours=hours_ago)
        end = min(start + timedelta(hours=length), now)
        uploaded = now + timedelta(hours=delay)
        reader.late.append((person, to_us(start), to_us(end), uploaded))
        world.late |= {k for k in reader.held(to_us(start), to_us(end), uploaded) if k[0] == person}
    elif op[0] == "delete":
        _, person, kind, hours_ago, length = op
        start = now + timedelta(hours=hours_ago)
        reader.deleted.append(
            (person, kind.value, to_us(start), to_us(start + timedelta(hours=length)))
        )
    else:
        world.clock.advance(timedelta(hours=op[1]))


@given(ops=operations)
@limits(10)
def test_no_sample_the_provider_holds_is_ever_lost_or_counted_twice(tmp_path_factory, ops):
    """No sample the provider holds is ever lost or counted twice, and the published FHIR names
    exactly what the store holds: runs of every strategy over three days in any order, with
    uploads arriving late and deletions at the provider (inside the re-sync horizon), end, once
    the hourly automation has run, with the store equal to the provider and every partition's
    NDJSON equal to the store. No run is green while its goal lacks a sample the provider held
    (samples that arrived late aside: the horizon's re-reading is what brings them), and, as
    nothing here is a fault, every run completes (none is red)."""
    world = world_of(tmp_path_factory.mktemp("order"), horizon=timedelta(days=5))
    for op in ops:
        apply(world, op)
    world.settle(2)
    measure = world.measure(utc_midnight(FIRST_DAY), world.clock.now)
    greens_with_loss = [(r.label, r.green_loss) for r in world.runs if r.green_loss]
    red = [(r.label, r.detail) for r in world.runs if r.red]
    world.close()
    assert (measure.lost, measure.duplicated) == (0, 0), (ops, measure)
    assert measure.published_ok, measure.published_problems
    assert greens_with_loss == []
    # Nothing failed here (late data and deletions are not faults): every run completes.
    assert red == [], ops


class Flaky:
    """A source failing as providers do, per call: a refused type (403), a failed type, a rate
    limit, a network error; every window it answered is logged."""

    def __init__(self, source: Windowed, faults: list[str], answered: dict) -> None:
        self.source, self.faults, self.answered = source, faults, answered

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def fetch_windows(self, user, windows) -> FetchResult:
        fault = self.faults.pop(0) if self.faults else "none"
        if fault == "rate-limit":
            raise RateLimited("simulated", 5.0)
        if fault == "network":
            raise ConnectionResetError("connection reset by peer")
        kinds = sorted(windows, key=lambda k: k.value)
        kept = dict(windows)
        refused, failed = {}, {}
        if fault == "refuse" and kinds:
            del kept[kinds[0]]
            refused[kinds[0].value] = "HTTP 403: scope not granted"
        if fault == "fail" and kinds:
            del kept[kinds[-1]]
            failed[kinds[-1].value] = "ProviderError: HTTP 500"
        result = self.source.fetch_windows(user, kept)
        result.refused |= refused
        result.failed |= failed
        for kind, intervals in result.covered.items():
            self.answered.setdefault((user.user_id, kind), []).extend(intervals)
        return result


@given(
    faults=st.lists(st.sampled_from(["none", "refuse", "fail", "rate-limit", "network"]),
                    min_size=4, max_size=12),
    runs=st.lists(st.tuples(st.sampled_from(STRATEGIES), st.integers(0, 2)), min_size=2,
                  max_size=4),
)  # fmt: skip
@limits(12)
def test_coverage_never_claims_a_window_the_provider_did_not_answer(tmp_path_factory, faults, runs):
    """Coverage never claims a window the provider did not answer: whatever fails (a refused
    type, a failed type, a rate limit, a network error), every covered instant of a person's type
    lies in a window the provider answered for that type, and every sample the provider holds
    inside the coverage is stored."""
    answered: dict = {}
    pending = list(faults)
    world = world_of(tmp_path_factory.mktemp("coverage"), horizon=timedelta(hours=1),
                     source_wrapper=lambda source: Flaky(source, pending, answered))  # fmt: skip
    for strategy, back in runs:
        world.sync(strategy, [world.clock.now.date() - timedelta(days=back)], retries=1)
        world.clock.advance(timedelta(hours=1))
    coverage = world.store.coverage("simulated")
    for (user, kind), intervals in coverage.items():
        claimed = cov.normalize(intervals)
        proven = cov.normalize(answered.get((user, kind), []))
        assert cov.intersect(claimed, proven) == claimed, (user, kind, faults)
        for start, end in claimed:
            held = {
                k for k in world.truth.held(start, end, world.clock.now) if k[:2] == (user, kind)
            }
            stored, _ = world.stored(*(datetime.fromtimestamp(t / 1e6, UTC) for t in (start, end)))
            assert held <= set(stored), (user, kind, faults)
    world.close()


@pytest.fixture(scope="module")
def crash_template(tmp_path_factory) -> tuple[str, int, list[str]]:
    """A store ready for a run, and the write points of that run."""
    root = tmp_path_factory.mktemp("crash-template")
    world = world_of(root, horizon=timedelta(hours=1))
    world.close()
    probe = world_of(tmp_path_factory.mktemp("crash-probe"), horizon=timedelta(hours=1))
    seen: list[str] = []
    with crash_at(probe, None, seen):
        probe.sync(SyncStrategy.INCREMENTAL, [TODAY - timedelta(days=1)])
    probe.close()
    return world.url, len(seen), seen


@given(data=st.data())
@limits(12)
def test_a_crash_at_any_write_point_loses_nothing(tmp_path_factory, crash_template, data):
    """A crash between any two writes (every INSERT/UPDATE/DELETE, every commit, every NDJSON
    file and manifest) fails the run (red), and the next hour's automation leaves the store equal
    to the provider and the output equal to the store."""
    url, total, seen = crash_template
    point = data.draw(st.integers(1, total), label="write point")
    root = tmp_path_factory.mktemp("crash")
    world = world_of(root, horizon=timedelta(hours=1), url=SQLite().copy(url, root, "crashed"))
    passed: list[str] = []
    with crash_at(world, point, passed):
        crashed = world.sync(SyncStrategy.INCREMENTAL, [TODAY - timedelta(days=1)])
    assert crashed.red and InjectedCrash.__name__ in crashed.detail, (point, seen[point - 1])
    world.settle(1)
    day = TODAY - timedelta(days=1)
    measure = world.measure(utc_midnight(day), utc_midnight(day + timedelta(days=1)))
    world.close()
    assert (measure.lost, measure.duplicated) == (0, 0), (point, seen[point - 1], measure)
    assert measure.published_ok, (point, seen[point - 1], measure.published_problems)
