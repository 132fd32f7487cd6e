"""The scenarios of issue 8. Each builds a world, injects its fault, lets the product recover by
itself (retries, the next scheduled runs, the sensors) and measures. A scenario returns a `Row`.

Time: a scenario's clock starts three days before the wall clock (10:05 UTC), so that anything a
provider says happened lies before the moment the receiver takes a notification in (the inbox
stamps real time).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time as walltime
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
from cryptography.fernet import Fernet
from provider_api_server import answer, documented, fake_api

from faults.backends import Backend
from faults.harness import REPO, Clock, Run, World, batch_keys, count_statements, utc_midnight
from faults.providers import HR, SPO2, STEPS, OuraModel, SimulatedTruth, WithingsModel, utc
from ohx_dagster.config.receiver import OuraSecrets, WebhookSecrets
from ohx_dagster.core.datatypes import DATA_TYPES
from ohx_dagster.core.models import AggregationLevel, DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.models import SyncFrequency as Frequency
from ohx_dagster.core.times import from_us, to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.oura.webhook import signature
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.strategies import SyncStrategy, local_day

SEED = 7
HR_HZ = 1 / 60  # one heart-rate sample a minute: a day is 1,440 of them a person
OURA_SECRET = "faults-oura-client-secret-0123456789"
OURA_VERIFICATION = "faults-oura-verification-0123456789"
WITHINGS_TOKEN = "faults-withings-callback-0123456789"
INCREMENTAL = SyncStrategy.INCREMENTAL


@dataclass
class Row:
    scenario: str
    backend: str
    held: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    published: int = 0
    published_ok: bool = True
    aggregated: int = 0
    aggregated_ok: bool = True
    runs: int = 0
    red: int = 0
    green_loss: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.published_ok
            and self.aggregated_ok
            and self.green_loss == 0
            and not self.problems
        )

    def take(self, world: World, start: datetime, end: datetime) -> Row:
        """The world's figures over [start, end), and its runs."""
        measure = world.measure(start, end)
        self.held += measure.held
        self.stored += measure.stored
        self.lost += measure.lost
        self.duplicated += measure.duplicated
        self.published += measure.published
        self.published_ok &= measure.published_ok
        self.aggregated += measure.aggregated
        self.aggregated_ok &= measure.aggregated_ok
        self.problems += measure.published_problems
        self.count_runs(world.runs)
        return self

    def count_runs(self, runs: list[Run]) -> None:
        self.runs += len(runs)
        self.red += sum(r.red for r in runs)
        self.green_loss += sum(r.green_loss for r in runs)

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


def anchor() -> datetime:
    real = datetime.now(UTC)
    return datetime.combine(real.date() - timedelta(days=3), time(10, 5), tzinfo=UTC)


# -- worlds ---------------------------------------------------------------------------------------


class Chosen(SimulatedSource):
    """The simulated provider, discovering only the scenario's people, with its settings."""

    chosen: list[HealthSyncConfig]

    def discover_users(self) -> list[HealthSyncConfig]:
        return list(self.chosen)


def token_key() -> None:
    """Provider tokens are encrypted at rest: a key for this process when none is set."""
    if not os.environ.get("OHX_TOKEN_KEY"):
        os.environ["OHX_TOKEN_KEY"] = Fernet.generate_key().decode()


def simulated_world(
    backend: Backend,
    root: Path,
    label: str,
    *,
    start: datetime,
    first_day: date,
    people: int = 2,
    only: set[str] | None = None,
    frequency: Frequency = Frequency.HOURLY,
    horizon: timedelta = timedelta(hours=1),
    url: str | None = None,
) -> World:
    """The simulated provider's people (all hourly unless said), connected ten days before
    `first_day` with their history synced up to `first_day` (the schedules' catch-up starts
    there)."""
    clock = Clock(start)
    reader = Chosen(people, seed=SEED, clock=clock, hr_hz=HR_HZ)
    reader.chosen = [
        dataclasses.replace(c, sync_frequency=frequency)
        for c in SimulatedSource.discover_users(reader)
        if only is None or c.user_id in only
    ]
    configs = reader.discover_users()
    source = Windowed(reader, SUPPORTED_TYPES["simulated"], horizon)
    truth = SimulatedTruth(people, SEED, HR_HZ, [c.user_id for c in configs])
    fresh = url is None
    url = url or backend.url(root, label)
    world = World(url, root / label, source, truth, clock, first_day=first_day)
    if fresh:
        world.store.add_users(configs)
        world.backdate(utc_midnight(first_day) - timedelta(days=10))
    else:
        world.activation_cursor = to_us(utc_midnight(first_day) - timedelta(days=10))
    return world


@contextmanager
def oura_world(
    backend: Backend,
    root: Path,
    label: str,
    *,
    start: datetime,
    first_day: date,
    people: dict[str, HealthSyncConfig],
) -> Iterator[tuple[World, OuraModel]]:
    token_key()
    with fake_api() as api:
        clock = Clock(start)
        model = OuraModel(api, clock)
        url = backend.url(root, label)
        store = RecordStore(url, migrate_schema=True)
        for config in people.values():
            model.connect(store, config)
        world = World(url, root / label, model.source(store), model, clock, first_day=first_day,
                      store=store, factory=lambda: model.source(store))  # fmt: skip
        world.backdate(utc_midnight(first_day) - timedelta(days=10))
        try:
            yield world, model
        finally:
            world.close()


def oura_person(user_id: str, frequency: Frequency = Frequency.HOURLY) -> HealthSyncConfig:
    return HealthSyncConfig(
        user_id=user_id,
        provider="oura",
        timezone="Europe/Berlin",
        enabled_types=frozenset({HealthDataType.HEART_RATE, HealthDataType.STEPS,
                                 HealthDataType.SPO2}),
        sync_frequency=frequency,
        aggregation=AggregationLevel.DAILY,
    )  # fmt: skip


def hold_days(model: OuraModel, person: str, days: list[date]) -> None:
    """A person's ring data of whole UTC days: heart rate every 5 minutes, steps, SpO2."""
    for day in days:
        model.heart_rate(person, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        model.day_summary(person, day)


@contextmanager
def receiver(store: RecordStore) -> Iterator[str]:
    """The real webhook receiver (Oura and Withings routes) on a local port."""
    secrets = WebhookSecrets(
        oura=OuraSecrets(OURA_SECRET, OURA_VERIFICATION), withings_token=WITHINGS_TOKEN
    )
    app = create_app(store, secrets, group_commit=False)
    with serve_in_thread(app) as base_url:
        yield base_url


def post_oura(base_url: str, body: dict[str, Any]) -> int:
    raw = orjson.dumps(body)
    stamp = str(int(walltime.time()))
    headers = {
        "x-oura-timestamp": stamp,
        "x-oura-signature": signature(OURA_SECRET, stamp, raw),
        "content-type": "application/json",
    }
    return httpx.post(f"{base_url}/webhooks/oura", content=raw, headers=headers).status_code


def oura_event(user: str, event: str, kind: str, object_id: str, at: datetime) -> dict[str, Any]:
    return {**documented("oura", "notification"), "event_type": event, "data_type": kind,
            "object_id": object_id, "event_time": at.isoformat(), "user_id": user}  # fmt: skip


def notify_oura(world: World, person: str, event: str, object_id: str) -> int:
    """Oura's notification of a person's sleep document, posted now to the real receiver."""
    with receiver(world.store) as base_url:
        return post_oura(base_url, oura_event(person, event, "sleep", object_id, world.clock.now))


def hold_day_after_night(model: OuraModel, person: str, day: date, summary_days: int) -> None:
    """A person's ring data of `day` from 08:00 UTC on (the night comes later), and the daily
    summaries (steps, SpO2) of `summary_days` days from it."""
    model.heart_rate(person, utc(day, 8), utc_midnight(day + timedelta(days=1)))
    for n in range(summary_days):
        model.day_summary(person, day + timedelta(days=n))


def upload_night(world: World, model: OuraModel, person: str, day: date, sleep_id: str) -> list:
    """The ring uploads the night of `day` (00:00-08:00 UTC) now: its heart rate, held as late
    data, and its sleep document; the night's sample keys."""
    night = model.heart_rate(person, utc(day, 0), utc(day, 8), visible_at=world.clock.now)
    model.sleep(person, sleep_id, utc(day, 0), utc(day, 8))
    world.late |= set(night)
    return night


# -- simulated provider ---------------------------------------------------------------------------


def out_of_order(backend: Backend, root: Path) -> Row:
    """Catch-up after an outage: incremental runs of three past days, the latest first."""
    row = Row("incremental runs out of order (latest day first)", backend.name)
    start = anchor()
    days = [start.date() - timedelta(days=n) for n in (3, 2, 1)]
    world = simulated_world(backend, root, "order", start=start, first_day=days[0])
    for day in reversed(days):
        world.sync(INCREMENTAL, [day])
    world.settle(1)
    row.take(world, utc_midnight(days[0]), utc_midnight(days[-1] + timedelta(days=1)))
    world.close()
    return row


def concurrent_threads(backend: Backend, root: Path) -> Row:
    """Two runs of one partition at once in one process (two run workers' threads)."""
    row = Row("two runs of one partition at once (threads)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    world = simulated_world(backend, root, "threads", start=start, first_day=day, people=3)
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        world.sync(INCREMENTAL, [day], label="concurrent")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row.expect(
        all(not r.red for r in world.runs),
        "a concurrent run failed: " + "; ".join(r.detail for r in world.runs if r.red),
    )
    world.settle(1)
    row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
    world.close()
    return row


def _worker(world: World, days: list[date], strategy: SyncStrategy, label: str) -> subprocess.Popen:
    job = {
        "url": world.url,
        "fhir": str(world.root / "fhir"),
        "days": [d.isoformat() for d in days],
        "strategy": strategy.value,
        "now": world.clock.now.isoformat(),
        "people": len(world.truth.user_ids),  # type: ignore[attr-defined]
        "seed": SEED,
        "hr_hz": HR_HZ,
        "horizon_s": world.horizon.total_seconds(),
        "label": label,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "faults.worker", orjson.dumps(job).decode()],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def concurrent_processes(backend: Backend, root: Path) -> Row:
    """Two runs of one partition at once, each in its own process (two Dagster run workers)."""
    row = Row("two runs of one partition at once (processes)", backend.name)
    start = anchor()
    days = [start.date() - timedelta(days=2), start.date() - timedelta(days=1)]
    world = simulated_world(backend, root, "processes", start=start, first_day=days[0], people=3)
    world.store.dispose()
    workers = [_worker(world, days, INCREMENTAL, f"p{i}") for i in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        row.expect(worker.returncode == 0 and "done" in out, f"worker failed: {err[-400:]}")
    row.notes.append("both processes succeeded" if not row.problems else "a process failed")
    world.settle(1)
    row.take(world, utc_midnight(days[0]), utc_midnight(days[-1] + timedelta(days=1)))
    world.close()
    return row


class InjectedCrash(RuntimeError):
    """The process died here."""


WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP")


@contextmanager
def crash_at(world: World, point: int | None, seen: list[str]) -> Iterator[None]:
    """Raise InjectedCrash at the `point`-th write of the store or the FHIR output: every
    INSERT/UPDATE/DELETE statement, every transaction's commit, every file written. `seen` gets
    the name of each write point passed."""
    import sqlalchemy as sa

    def hit(what: str) -> None:
        seen.append(what)
        if point is not None and len(seen) == point:
            raise InjectedCrash(f"crash at write point {point}: {what}")

    def on_statement(statement: str) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            hit(statement.split("(")[0].strip()[:60])

    def on_commit(conn: Any) -> None:
        if conn.get_execution_options().get("ohx_write"):  # a write transaction's commit
            hit("COMMIT")

    remove = count_statements(world.store.engine, on_statement)
    sa.event.listen(world.store.engine, "commit", on_commit)
    original = FhirOutput.write

    def write(self: FhirOutput, relative: str, body: bytes) -> None:
        hit(f"file {relative.rsplit('/', 1)[-1][:40]}")
        original(self, relative, body)

    FhirOutput.write = write  # type: ignore[method-assign]
    try:
        yield
    finally:
        FhirOutput.write = original  # type: ignore[method-assign]
        sa.event.remove(world.store.engine, "commit", on_commit)
        remove()


def crash_points(backend: Backend, root: Path, points: list[int] | None = None) -> Row:
    """A crash between any two writes of a run (sync commit, errors, publish files, manifest,
    published versions): for each write point, a fresh store, a run that dies there, then the
    next hour's automation."""
    start = anchor()
    day = start.date() - timedelta(days=1)
    template = simulated_world(backend, root / "crash", "template", start=start, first_day=day)
    template.close()
    probe = simulated_world(backend, root / "crash", "probe", start=start, first_day=day,
                            url=backend.copy(template.url, root / "crash", "probe"))  # fmt: skip
    seen: list[str] = []
    with crash_at(probe, None, seen):
        probe.sync(INCREMENTAL, [day])
    probe.close()
    total = len(seen)
    chosen = points if points is not None else list(range(1, total + 1))
    row = Row(f"crash at each write point ({len(chosen)} of {total})", backend.name)
    for point in chosen:
        label = f"crash{point}"
        url = backend.copy(template.url, root / "crash", label)
        world = simulated_world(backend, root / "crash", label, start=start, first_day=day,
                                url=url)  # fmt: skip
        passed: list[str] = []
        with crash_at(world, point, passed):
            crashed = world.sync(INCREMENTAL, [day])
        row.expect(crashed.red, f"point {point} ({seen[point - 1]}): the crashed run was green")
        world.settle(1)
        before = len(row.problems)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        if len(row.problems) > before or row.lost or row.duplicated:
            row.notes.append(f"point {point}: {seen[point - 1]}")
        world.close()
    row.held //= max(1, len(chosen))
    row.stored //= max(1, len(chosen))
    row.published //= max(1, len(chosen))
    row.notes.insert(0, f"write points: {', '.join(sorted(set(seen)))[:200]}")
    return row


def kill_mid_run(backend: Backend, root: Path, delays: tuple[float, ...] = (0.3, 1.0, 2.5)) -> Row:
    """kill -9 of the run's process in the middle of its work, then the next hour's automation."""
    row = Row(f"kill -9 mid-run ({len(delays)} moments)", backend.name)
    start = anchor()
    days = [start.date() - timedelta(days=2), start.date() - timedelta(days=1)]
    killed = 0
    for n, delay in enumerate(delays):
        attempt = 0
        while True:  # a run that finished before its kill is tried again, killed sooner
            label = f"kill{n}-{attempt}"
            world = simulated_world(backend, root / "kill", label, start=start, first_day=days[0],
                                    people=3)  # fmt: skip
            world.store.dispose()
            worker = _worker(world, days, INCREMENTAL, label)
            assert worker.stdout is not None
            worker.stdout.readline()  # "ready"
            walltime.sleep(delay)
            landed = worker.poll() is None
            if landed:
                worker.kill()  # SIGKILL
                killed += 1
            worker.wait()
            if landed or delay < 0.05:
                break
            world.close()
            delay, attempt = delay / 2, attempt + 1
        world.settle(1)
        row.take(world, utc_midnight(days[0]), utc_midnight(days[-1] + timedelta(days=1)))
        world.close()
    row.held //= len(delays)
    row.stored //= len(delays)
    row.published //= len(delays)
    row.expect(killed > 0, "every run process had finished before its kill")
    row.red += killed
    row.runs += len(delays)
    row.notes.append(f"{killed} of {len(delays)} processes killed mid-run (SIGKILL)")
    return row


def last_transition(zone: ZoneInfo, before: date) -> date:
    """The latest local day before `before` whose length is not 24 hours."""
    day = before
    while True:
        day -= timedelta(days=1)
        start, end = local_day(day, HealthSyncConfig("x", "simulated", timezone=str(zone)))
        if end - start != 24 * 3_600_000_000:
            return day


def dst_day(backend: Backend, root: Path) -> Row:
    """A local day of 23 or 25 hours (America/New_York): the daily close syncs it whole, its
    daily aggregate counts every sample of it, and it turns final after the horizon."""
    zone = ZoneInfo("America/New_York")
    day = last_transition(zone, datetime.now(UTC).date() - timedelta(days=3))
    config = HealthSyncConfig("sim-002", "simulated", timezone=str(zone))
    local_start, local_end = local_day(day, config)
    hours = (local_end - local_start) // 3_600_000_000
    row = Row(f"DST day ({day}, {hours} h local day, daily person)", backend.name)
    start = from_us(local_start) - timedelta(hours=2)
    world = simulated_world(backend, root, "dst", start=start, first_day=day - timedelta(days=1),
                            only={"sim-002"}, frequency=Frequency.DAILY)  # fmt: skip
    # The clock passes the local midnight that closes the day, then the day's horizon.
    world.clock.now = from_us(local_end) + timedelta(minutes=20)
    world.tick()
    world.clock.now = from_us(local_end) + timedelta(hours=26, minutes=20)
    world.tick()
    world.settle(1)
    window = DateRange(from_us(local_start), from_us(local_end))
    held = world.truth.held(local_start, local_end, at=world.clock.now)
    stored, _ = batch_keys(world.store.read_records("simulated", window))
    daily = world.store.read_aggregates("simulated", AggregationLevel.DAILY.value, window)
    daily = daily[daily["bucket_start_us"] == local_start]
    counted = {r.data_type: int(r["count"]) for _, r in daily.iterrows()} if len(daily) else {}
    by_type: dict[str, int] = {}
    for _, kind, _, _ in stored:
        by_type[kind] = by_type.get(kind, 0) + 1
    # ECG recordings, nights and workouts are published as they are, never aggregated.
    aggregated = {k: v for k, v in by_type.items() if DATA_TYPES[HealthDataType(k)].aggregated}
    row.expect(counted == aggregated, f"daily aggregate counts {counted} != records {aggregated}")
    lengths = set((daily["bucket_end_us"] - daily["bucket_start_us"]) // 3_600_000_000)
    row.expect(lengths <= {hours}, f"daily buckets of {lengths} h, the local day has {hours}")
    row.expect(len(held) > 0 and len(stored) > 0, "nothing held or stored on the local day")
    row.notes.append(
        f"daily aggregate counts {sum(counted.values())} samples over {hours} h (ECG, sleep and "
        "workouts aside)"
    )
    row.take(world, from_us(local_start), from_us(local_end))
    final = world.store.preliminary_days("simulated", day - timedelta(days=1))
    row.expect(day not in final, f"{day} still published preliminary after its horizon")
    world.close()
    return row


# -- Oura (a local server answering Oura's documented shapes) -------------------------------------


def late_upload(backend: Backend, root: Path) -> Row:
    """The ring uploads an evening's heart rate the next morning, after that day was synced."""
    row = Row("data uploaded a day late (hourly person)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = "oura-late"
    with oura_world(backend, root, "late", start=start, first_day=day,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        model.heart_rate(person, utc_midnight(day), utc(day, 18))
        model.day_summary(person, day)
        model.day_summary(person, day + timedelta(days=1))
        world.tick()  # the day is synced: evening not uploaded yet
        evening = model.heart_rate(person, utc(day, 18), utc_midnight(day + timedelta(days=1)),
                                   visible_at=start + timedelta(hours=3))  # fmt: skip
        world.late |= set(evening)
        world.settle(4)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        row.notes.append(f"{len(evening)} evening samples uploaded 3 h after the day was synced")
    return row


def late_upload_daily(backend: Backend, root: Path) -> Row:
    """A daily-sync person's watch uploads the evening of a local day after that day was closed."""
    row = Row("data uploaded after the local day closed (daily person)", backend.name)
    start = anchor()
    day = start.date()
    person = "oura-daily"
    config = oura_person(person, Frequency.DAILY)
    local_start, local_end = local_day(day, config)
    with oura_world(backend, root, "late-daily", start=start, first_day=day - timedelta(days=1),
                    people={person: config}) as (world, model):  # fmt: skip
        evening_start = from_us(local_end) - timedelta(hours=4)
        model.heart_rate(person, from_us(local_start), evening_start)
        model.day_summary(person, day)
        model.day_summary(person, day + timedelta(days=1))
        late = model.heart_rate(person, evening_start, from_us(local_end),
                                visible_at=from_us(local_end) + timedelta(hours=9))  # fmt: skip
        world.late |= set(late)
        world.clock.now = from_us(local_end) + timedelta(minutes=20)
        world.tick()  # the local day closes: the evening is not uploaded yet
        world.clock.now = from_us(local_end) + timedelta(hours=24, minutes=20)
        world.tick()  # the next local day closes
        world.settle(1)
        row.take(world, from_us(local_start), from_us(local_end))
        row.notes.append(f"{len(late)} evening samples uploaded 9 h after the local day closed")
    return row


def refused_type(backend: Backend, root: Path) -> Row:
    """403 on daily_spo2 (a scope the person did not grant): heart rate and steps keep syncing,
    the refusal shows, and once the person reconnects granting it, its history arrives."""
    row = Row("403 for one type (SpO2 scope not granted)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = "oura-403"
    config = oura_person(person)
    with oura_world(backend, root, "refused", start=start, first_day=day,
                    people={person: config}) as (world, model):  # fmt: skip
        hold_days(model, person, [day, start.date()])
        model.refused["daily_spo2"] = "Missing required scopes: spo2Daily"
        world.sync(INCREMENTAL, [day])
        world.settle(1)
        refused_runs = [r for r in world.runs if r.report and r.report.users_synced]
        row.expect(all(r.status == "check failed" for r in refused_runs),
                   "a run that skipped the refused type was green")  # fmt: skip
        window = (to_us(utc_midnight(day)), to_us(utc_midnight(day + timedelta(days=1))))
        held = {k for k in model.held(*window, at=world.clock.now) if k[1] != SPO2}
        stored, _ = world.stored(*(from_us(w) for w in window))
        row.expect(held <= set(stored), "heart rate or steps lost beside the refused type")
        calls = len(model.api.calls_to("/v2/usercollection/daily_spo2"))
        world.settle(2)
        row.expect(len(model.api.calls_to("/v2/usercollection/daily_spo2")) == calls,
                   "the refused type was asked for again")  # fmt: skip
        gaps = [r.label for r in world.runs if "day_covered" in r.detail]
        row.expect(not gaps, f"a type refused earlier counted as a gap (day_covered): {gaps}")
        # The person reconnects, granting SpO2 this time.
        del model.refused["daily_spo2"]
        model.connect(world.store, config)
        world.settle(1)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        row.notes.append("heart rate and steps complete while SpO2 was refused; reconnected")
    return row


def rate_limited(backend: Backend, root: Path, retry_after: str | None) -> Row:
    """429 from Oura for the first person: the run stops calling Oura for everyone, fails, and is
    retried after Retry-After (or the budget's default wait)."""
    label = f"Retry-After: {retry_after}" if retry_after else "no Retry-After"
    row = Row(f"429 rate limit ({label})", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    people = {p: oura_person(p) for p in ("oura-a", "oura-b", "oura-c")}
    with oura_world(backend, root, f"limit{bool(retry_after)}", start=start, first_day=day,
                    people=people) as (world, model):  # fmt: skip
        for person in people:
            hold_days(model, person, [day])
        headers = {"Retry-After": retry_after} if retry_after else {}
        model.fail("heartrate", answer(429, {"detail": "Too Many Requests"}, **headers))
        before = walltime.monotonic()
        run = world.sync(INCREMENTAL, [day])
        row.expect(run.attempts == 2, f"expected one retry, got {run.attempts} attempts")
        row.expect(not run.red, f"the retried run failed: {run.detail}")
        row.expect(walltime.monotonic() - before < 60, "the run slept through the rate limit")
        row.notes.append(f"1st attempt failed (deferred), retried; {run.attempts} attempts")
        row.red += 1  # the first attempt: a failed step that Dagster retries
        world.settle(1)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
    return row


def server_errors(backend: Backend, root: Path) -> Row:
    """5xx: a short outage is retried inside the request; a longer one fails the type, the run
    is retried, and the next hour's run finds the gap."""
    row = Row("5xx (short outage, then a long one)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = "oura-5xx"
    with oura_world(backend, root, "5xx", start=start, first_day=day,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_days(model, person, [day, start.date()])
        model.fail("heartrate", answer(503, b"unavailable"), answer(502, b"bad gateway"))
        short = world.sync(INCREMENTAL, [day], label="short outage")
        row.expect(not short.red and short.attempts == 1, "a short outage failed the run")
        long_outage = [answer(500, b"internal error")] * 16  # 4 attempts x (1 + 3 retries)
        model.fail("daily_activity", *long_outage)
        long = world.sync(INCREMENTAL, [start.date()], label="long outage")
        row.expect(long.red, "a run that could not read steps was green")
        row.notes.append(f"long outage: run {long.status} after {long.attempts} attempts")
        world.settle(1)
        row.take(world, utc_midnight(day), world.clock.now)
    return row


def unexpected_body(backend: Backend, root: Path) -> Row:
    """A body Oura's documentation does not describe (a renamed field): that type fails, the
    others are stored, the run is red; once the provider answers properly the gap is fetched."""
    row = Row("body not as documented (bpm renamed)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = "oura-body"
    with oura_world(backend, root, "body", start=start, first_day=day,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_days(model, person, [day, day + timedelta(days=1)])
        model.renamed["heartrate"] = ("bpm", "heart_rate", 12)  # 3 pages x 4 attempts
        run = world.sync(INCREMENTAL, [day])
        row.expect(run.red, "a run that could not read heart rate was green")
        stored, _ = world.stored(utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        kinds = {k[1] for k in stored}
        row.expect(kinds == {STEPS, SPO2}, f"other types not stored beside the failure: {kinds}")
        row.notes.append(f"run {run.status} after {run.attempts} attempts: {run.detail[:80]}")
        world.settle(1)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
    return row


def token_expiry(backend: Backend, root: Path) -> Row:
    """The access token expires in the middle of a run: 401, one refresh (Oura rotates the
    refresh token, stored at once), the request repeated; the run goes on."""
    row = Row("token expiry mid-run", backend.name)
    start = anchor()
    days = [start.date() - timedelta(days=2), start.date() - timedelta(days=1)]
    person = "oura-expiry"
    with oura_world(backend, root, "expiry", start=start, first_day=days[0],
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_days(model, person, days)
        model.revoke_after[person] = 2
        run = world.sync(INCREMENTAL, days, label="backfill 2 days")
        row.expect(not run.red, f"the run failed: {run.detail}")
        refreshes = len(model.api.calls_to("/oauth/token"))
        row.expect(refreshes == 1, f"{refreshes} token refreshes, expected 1")
        row.notes.append(f"{refreshes} refresh mid-run; run {run.status}")
        world.settle(1)
        row.take(world, utc_midnight(days[0]), utc_midnight(days[-1] + timedelta(days=1)))
    return row


def token_lost(backend: Backend, root: Path) -> Row:
    """The answer to a refresh is lost in transit after Oura rotated the token: the old refresh
    token is spent (invalid_grant), the person needs reauthorization (visible, skipped, the run's
    check red), and when they reconnect their gap is backfilled."""
    row = Row("refresh answer lost in transit (invalid_grant)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = "oura-grant"
    config = oura_person(person)
    with oura_world(backend, root, "grant", start=start, first_day=day,
                    people={person: config}) as (world, model):  # fmt: skip
        hold_days(model, person, [day, start.date()])
        model.revoke_after[person] = 1
        model.lose_next_token_answer = True
        run = world.sync(INCREMENTAL, [day])
        row.expect(run.red, "the run that lost the person's grant was green")
        state = world.store.person("oura", person).state  # type: ignore[union-attr]
        row.expect(state == "needs_reauthorization", f"person state {state}")
        world.settle(2)
        row.expect(all(r.red for r in world.runs if r.label.startswith("hourly")),
                   "an hourly run was green while the person needs reauthorization")  # fmt: skip
        model.connect(world.store, config)  # the person connects again
        world.settle(1)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        row.notes.append(f"run {run.status}: {run.detail[:60]}; reconnected, gap backfilled")
    return row


def deletion(backend: Backend, root: Path) -> Row:
    """Oura deletes a night (a `delete` sleep event): the records go, the changed hours are
    published again and what no longer exists is published as entered-in-error."""
    row = Row("deletion at the provider (Oura delete event)", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = "oura-delete"
    with oura_world(backend, root, "delete", start=start, first_day=day,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_days(model, person, [day, start.date()])
        world.tick()
        night = (utc(day, 0), utc(day, 6))
        model.sleep(person, "night-1", *night)
        gone = model.delete(lambda k: k[1] == HR and to_us(night[0]) <= k[2] < to_us(night[1]))
        model.forget("night-1")
        world.clock.advance(timedelta(minutes=10))
        status = notify_oura(world, person, "delete", "night-1")
        row.expect(status == 200, f"receiver answered {status}")
        pushed = world.dispatch()
        row.expect(len(pushed) == 1 and not pushed[0].red, "the push run failed")
        world.settle(1)
        withdrawn = sum(r.withdrawn for r in world.publish_reports)
        row.expect(withdrawn > 0, "nothing was published as entered-in-error")
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        row.notes.append(f"{gone} samples deleted; {withdrawn} resources entered-in-error")
    return row


def webhook_final_day(backend: Backend, root: Path) -> Row:
    """A sleep notification for a night four days back, published final long ago (the ring was
    not synced for days): the push run reads the night the document names; the day is
    republished with the same ids, what changed says `amended`, its daily aggregate counts it."""
    row = Row("late night after final (webhook; amended)", backend.name)
    start = anchor()
    old = start.date() - timedelta(days=4)
    person = "oura-final"
    with oura_world(backend, root, "final", start=start, first_day=old,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_day_after_night(model, person, old, summary_days=5)
        world.tick()
        published = world.store.preliminary_days("oura", old)
        row.expect(old not in published, f"{old} should be published final")
        night = upload_night(world, model, person, old, "night-old")
        status = notify_oura(world, person, "create", "night-old")
        row.expect(status == 200, f"receiver answered {status}")
        pushed = world.dispatch()
        row.expect(len(pushed) == 1 and not pushed[0].red, "the push run failed")
        world.settle(1)
        statuses = Counter(
            r["status"] for r in world.resources(old) if r["resourceType"] == "Observation"
        )
        row.expect(statuses["amended"] > 0, f"nothing amended: {dict(statuses)}")
        row.expect(statuses["preliminary"] == 0, f"a final day went back: {dict(statuses)}")
        row.take(world, utc_midnight(old), utc_midnight(old + timedelta(days=1)))
        row.notes.append(f"{len(night)} night samples of {old} arrived by notification; "
                         f"statuses {dict(statuses)}")  # fmt: skip
    return row


def webhook_outage(backend: Backend, root: Path) -> Row:
    """A notification names a night four days back (beyond the re-sync horizon); Oura fails the
    push run and all its retries: the run is red, and the night is fetched by the hours after it
    once Oura answers again (the notification left the night uncovered)."""
    row = Row("webhook for an old night, provider down during its push run", backend.name)
    start = anchor()
    old = start.date() - timedelta(days=4)
    person = "oura-push-outage"
    with oura_world(backend, root, "push-outage", start=start, first_day=old,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_day_after_night(model, person, old, summary_days=5)
        world.tick()
        upload_night(world, model, person, old, "night-outage")
        model.fail("heartrate", *[answer(503, b"unavailable")] * 16)  # 4 attempts x 4 tries
        notify_oura(world, person, "create", "night-outage")
        pushed = world.dispatch()
        row.expect(len(pushed) == 1 and pushed[0].red, "the push run that failed was green")
        model.script.clear()
        world.settle(2)
        row.take(world, utc_midnight(old), utc_midnight(old + timedelta(days=1)))
        row.notes.append(f"push run {pushed[0].status if pushed else '-'}; night fetched after")
    return row


def webhook_early(backend: Backend, root: Path, days_early: int) -> Row:
    """Oura notifies a night before it has the night's heart rate (the ring syncs it days
    later): the push run gets an empty answer, which covers nothing; the window waits for the
    provider, is asked again with backoff, and the night arrives `days_early` days later."""
    row = Row(f"webhook {days_early} d before the provider has the night", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    person = f"oura-early-{days_early}"
    with oura_world(backend, root, f"early-{days_early}", start=start, first_day=day,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_day_after_night(model, person, day, summary_days=2)
        world.tick()
        arrives = world.clock.now + timedelta(days=days_early)
        # The night ends before the day's data begins (08:00): only the night is late.
        wake = utc(day, 7) + timedelta(minutes=55)
        night = model.heart_rate(person, utc(day, 0), wake, visible_at=arrives)
        model.sleep(person, "night-early", utc(day, 0), wake)
        world.late |= set(night)
        status = notify_oura(world, person, "create", "night-early")
        row.expect(status == 200, f"receiver answered {status}")
        pushed = world.dispatch()
        row.expect(len(pushed) == 1 and not pushed[0].red, "the push run failed")
        waiting = pushed[0].report.waiting_for_provider if pushed and pushed[0].report else 0
        row.expect(waiting == 1, f"{waiting} windows waiting for the provider after the push")
        world.settle(days_early * 12 + 6, step=timedelta(hours=2))
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
        row.notes.append(f"{len(night)} night samples arrived {days_early} d after the webhook")
    return row


def zone_change(backend: Backend, root: Path) -> Row:
    """A person moves from New York to Berlin (their setting changes, from a day on): the days
    from then are cut again in the new zone, the day of the move is shorter, the old zone's
    daily rows go, and every sample is in one day's aggregate and one partition."""
    row = Row("zone change (New York to Berlin, mid-history)", backend.name)
    start = anchor()
    first = start.date() - timedelta(days=3)
    world = simulated_world(backend, root, "zone", start=start, first_day=first,
                            only={"sim-002"})  # fmt: skip
    config = world.configs()["sim-002"]
    row.expect(config.timezone == "America/New_York", f"sim-002 lives in {config.timezone}")
    for day in (first, first + timedelta(days=1), first + timedelta(days=2)):
        world.sync(SyncStrategy.PARTITION, [day])
    world.settle(1)
    moved = first + timedelta(days=1)
    days = world.store.set_zone("simulated", "sim-002", "Europe/Berlin", moved)
    row.expect(moved in days, f"the day of the move was not re-derived: {days}")
    world.settle(2)
    row.take(world, utc_midnight(first), utc_midnight(first + timedelta(days=3)))
    row.notes.append(f"re-derived {len(days)} days after the move")
    world.close()
    return row


def close_outage(backend: Backend, root: Path) -> Row:
    """The provider is down for the whole of a daily-sync person's close run (and its retries):
    the run is red, and the hours after it catch the closed day up once the provider is back."""
    row = Row("outage during a daily person's close run", backend.name)
    start = anchor()
    day = start.date()
    person = "oura-close"
    config = oura_person(person, Frequency.DAILY)
    local_start, local_end = local_day(day, config)
    with oura_world(backend, root, "close-outage", start=start, first_day=day - timedelta(days=1),
                    people={person: config}) as (world, model):  # fmt: skip
        hold_days(model, person, [day - timedelta(days=1), day, day + timedelta(days=1)])
        outage = [answer(500, b"internal error")] * 4 * 4  # 4 attempts of each of 4 runs
        for endpoint in ("heartrate", "daily_activity", "daily_spo2"):
            model.fail(endpoint, *outage)
        world.clock.now = from_us(local_end) + timedelta(minutes=20)
        closing = world.tick()
        row.expect(any(r.red for r in closing), "every run was green while the provider was down")
        model.script.clear()  # the provider is back
        world.settle(3)
        row.take(world, from_us(local_start), from_us(local_end))
    return row


def implausible_value(backend: Backend, root: Path) -> Row:
    """One person's heart rate holds a rare value (240 bpm: inside the hard limits, outside the
    plausible range): a warning for that person, and the next people are synced as usual."""
    row = Row("a rare value for one person, others synced after", backend.name)
    start = anchor()
    day = start.date() - timedelta(days=1)
    people = {p: oura_person(p) for p in ("oura-p1", "oura-p2")}
    with oura_world(backend, root, "implausible", start=start, first_day=day,
                    people=people) as (world, model):  # fmt: skip
        for person in people:
            hold_days(model, person, [day])
        model.hold(("oura-p1", HR, to_us(utc(day, 12, 2)), "oura-ring"), 240.0, source="workout")
        run = world.sync(INCREMENTAL, [day])
        row.expect(not run.red, f"the run failed: {run.detail[:160]}")
        row.expect(run.report is not None and run.report.implausible.get(HR) == 1,
                   f"the rare value was not reported: {run.detail[:120]}")  # fmt: skip
        world.settle(1)
        row.take(world, utc_midnight(day), utc_midnight(day + timedelta(days=1)))
    return row


class Paused:
    """A source whose fetches wait for `release` once they have the provider's answer: the run
    commits that (by then older) answer after another run committed a newer one."""

    def __init__(self, source: Any, fetched: threading.Event, release: threading.Event) -> None:
        self.source, self.fetched, self.release = source, fetched, release

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def fetch_windows(self, user: HealthSyncConfig, windows: Any) -> Any:
        result = self.source.fetch_windows(user, windows)
        self.fetched.set()
        self.release.wait(60)
        return result


def stale_answer(backend: Backend, root: Path) -> Row:
    """Two runs of a day outside the re-sync horizon overlap: a catch-up run reads the day, then
    the ring uploads a night of it and the notification's push run stores the night; the catch-up
    run commits its older answer last. Nothing re-reads that day again by itself."""
    row = Row("an older answer committed after a newer one", backend.name)
    start = anchor()
    old = start.date() - timedelta(days=4)
    person = "oura-race"
    with oura_world(backend, root, "race", start=start, first_day=old,
                    people={person: oura_person(person)}) as (world, model):  # fmt: skip
        hold_day_after_night(model, person, old, summary_days=0)
        fetched, release = threading.Event(), threading.Event()
        plain = world.factory
        world.factory = lambda: Paused(plain(), fetched, release)
        catch_up = threading.Thread(target=lambda: world.sync(INCREMENTAL, [old], label="catch-up"))
        catch_up.start()
        fetched.wait(60)
        world.factory = plain
        night = upload_night(world, model, person, old, "night-race")
        notify_oura(world, person, "create", "night-race")
        world.dispatch()
        release.set()
        catch_up.join()
        world.settle(2)
        row.take(world, utc_midnight(old), utc_midnight(old + timedelta(days=1)))
        row.notes.append(f"{len(night)} night samples stored by the push run in between")
    return row


# -- Withings -------------------------------------------------------------------------------------


@contextmanager
def withings_world(
    backend: Backend, root: Path, label: str, *, start: datetime, first_day: date, person: str
) -> Iterator[tuple[World, WithingsModel]]:
    token_key()
    with fake_api() as api:
        clock = Clock(start)
        model = WithingsModel(api, clock)
        url = backend.url(root, label)
        store = RecordStore(url, migrate_schema=True)
        config = HealthSyncConfig(user_id=person, provider="withings", timezone="Europe/Paris",
                                  enabled_types=frozenset({HealthDataType.WEIGHT}))  # fmt: skip
        model.connect(store, config)
        world = World(url, root / label, model.source(store), model, clock, first_day=first_day,
                      store=store, factory=lambda: model.source(store))  # fmt: skip
        world.backdate(utc_midnight(first_day) - timedelta(days=10))
        try:
            yield world, model
        finally:
            world.close()


def withings_range(backend: Backend, root: Path) -> Row:
    """A Withings notification naming 34 hours (as in Withings' own example): both weighings of
    the range are read, with one getmeas for the person."""
    row = Row("Withings notification spanning 34 h", backend.name)
    start = anchor()
    person = "12345"
    first_day = start.date() - timedelta(days=3)
    with withings_world(backend, root, "wrange", start=start, first_day=first_day,
                        person=person) as (world, model):  # fmt: skip
        world.tick()
        range_start = start - timedelta(hours=36)
        range_end = range_start + timedelta(hours=34)
        first = model.weighing(person, range_start + timedelta(minutes=10), 71.2)
        second = model.weighing(person, range_end - timedelta(minutes=30), 70.9)
        world.late |= {first, second}
        world.clock.advance(timedelta(minutes=5))
        form = {**documented("withings", "notification"), "userid": person, "appli": "1",
                "startdate": str(int(range_start.timestamp())),
                "enddate": str(int(range_end.timestamp()))}  # fmt: skip
        calls = len(model.getmeas_calls)
        with receiver(world.store) as base_url:
            status = httpx.post(f"{base_url}/webhooks/withings?token={WITHINGS_TOKEN}",
                                data=form).status_code  # fmt: skip
        row.expect(status == 200, f"receiver answered {status}")
        pushed = world.dispatch()
        asked = len(model.getmeas_calls) - calls
        row.expect(len(pushed) == 1 and not pushed[0].red, "the push run failed")
        row.expect(asked <= 2, f"{asked} getmeas calls for one person in one run")
        stored, _ = world.stored(range_start, range_end + timedelta(seconds=1))
        row.expect({first, second} <= set(stored), "the push run did not store both weighings")
        row.notes.append(f"push run: {asked} getmeas call(s), both weighings stored")
        world.settle(1)
        row.take(world, utc_midnight(range_start.date()), world.clock.now)
    return row


def withings_lastupdate(backend: Backend, root: Path) -> Row:
    """A weighing dated four days back reaches Withings now (a scale offline for days) and its
    notification is lost: the hourly run's getmeas lastupdate finds it."""
    row = Row("upload older than the horizon, notification lost", backend.name)
    start = anchor()
    person = "67890"
    first_day = start.date() - timedelta(days=5)
    with withings_world(backend, root, "wlast", start=start, first_day=first_day,
                        person=person) as (world, model):  # fmt: skip
        model.weighing(person, start - timedelta(days=1, hours=2), 80.1)
        world.tick()
        old = model.weighing(person, start - timedelta(days=4, hours=3), 80.6,
                             uploaded=start + timedelta(minutes=30))  # fmt: skip
        world.late.add(old)
        world.settle(2)
        row.take(world, utc_midnight(first_day), world.clock.now)
        row.notes.append("found by getmeas lastupdate (the stored cursor)")
    return row


@contextmanager
def database(url: str) -> Iterator[None]:
    """OHX_DATABASE_URL for the code location built in this process (and its children)."""
    before = os.environ.get("OHX_DATABASE_URL")
    os.environ["OHX_DATABASE_URL"] = url
    try:
        yield
    finally:
        if before is None:
            del os.environ["OHX_DATABASE_URL"]
        else:
            os.environ["OHX_DATABASE_URL"] = before


def dagster_acceptance(backend: Backend, root: Path) -> Row:
    """Issue 8's acceptance through Dagster: two day partitions with ohx/strategy=incremental,
    the later day first (one store), and both at once in two run processes (another store), then
    the republish sensor's refresh runs; each publishes the same NDJSON as one `partition` run of
    the two days on a fresh store (Provenance aside: it names its run)."""
    from faults import acceptance

    row = Row("Dagster: later day first, and two at once == one partition run", backend.name)
    today = datetime.now(UTC).date()
    first, last = today - timedelta(days=3), today - timedelta(days=2)
    homes = {name: root / name for name in ("one-run", "later-first", "at-once")}
    urls = {}
    for name in homes:
        urls[name] = backend.url(root, name.replace("-", ""))
        RecordStore(urls[name], migrate_schema=True).dispose()  # `ohx db upgrade`
    with database(urls["one-run"]):
        ok = acceptance.run(homes["one-run"], first, last, "partition", root / "i1")
    row.expect(ok, "the partition run failed")
    with database(urls["later-first"]):
        for day in (last, first):
            row.expect(acceptance.run(homes["later-first"], day, day, "incremental",
                                      root / f"i2-{day}"), f"incremental {day} failed")  # fmt: skip
        row.runs += 3 + acceptance.republish(homes["later-first"], first, root / "i2-republish")
    workers = [
        acceptance.run_in_process(homes["at-once"], day, "incremental", f"p{n}", urls["at-once"])
        for n, day in enumerate((first, last))
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        row.expect(worker.returncode == 0, f"a run process failed: {err[-300:]}")
    with database(urls["at-once"]):
        refreshed = acceptance.republish(homes["at-once"], first, root / "i3-republish")
    row.runs += 2 + refreshed
    row.notes.append(f"{refreshed} refresh run(s) after the two at once")
    for name in ("later-first", "at-once"):
        problems = acceptance.compare(homes["one-run"], homes[name], [first, last])
        row.expect(not problems, f"{name}: NDJSON differs from one partition run: {problems}")
    files = acceptance.published_files(homes["one-run"], first)
    row.notes.append(f"{len(files)} NDJSON files of {first} compared (Provenance aside)")
    source = SimulatedSource(int(acceptance.USERS), seed=SEED, hr_hz=float(acceptance.HR_HZ))
    truth = SimulatedTruth(int(acceptance.USERS), SEED, float(acceptance.HR_HZ),
                           [c.user_id for c in source.discover_users()])  # fmt: skip
    for name, home in homes.items():
        world = World(urls[name], home, Windowed(source, SUPPORTED_TYPES["simulated"]), truth,
                      Clock(datetime.now(UTC)), first_day=first,
                      store=RecordStore(urls[name]))  # fmt: skip
        row.take(world, utc_midnight(first), utc_midnight(last + timedelta(days=1)))
        world.close()
    row.held //= 3
    row.stored //= 3
    row.published //= 3
    return row


SCENARIOS: dict[str, Callable[[Backend, Path], Row]] = {
    "order": out_of_order,
    "threads": concurrent_threads,
    "processes": concurrent_processes,
    "crash": crash_points,
    "kill": kill_mid_run,
    "late": late_upload,
    "late-daily": late_upload_daily,
    "403": refused_type,
    "429": lambda backend, root: rate_limited(backend, root, "30"),
    "429-bare": lambda backend, root: rate_limited(backend, root, None),
    "5xx": server_errors,
    "body": unexpected_body,
    "token": token_expiry,
    "grant": token_lost,
    "delete": deletion,
    "final": webhook_final_day,
    "withings-range": withings_range,
    "withings-late": withings_lastupdate,
    "dst": dst_day,
    "final-outage": webhook_outage,
    "close-outage": close_outage,
    "implausible": implausible_value,
    "stale-answer": stale_answer,
    "early-1": lambda backend, root: webhook_early(backend, root, 1),
    "early-2": lambda backend, root: webhook_early(backend, root, 2),
    "early-3": lambda backend, root: webhook_early(backend, root, 3),
    "zone": zone_change,
    "dagster": dagster_acceptance,
}


def run_scenario(name: str, backend: Backend, root: Path) -> Row:
    started = walltime.monotonic()
    try:
        row = SCENARIOS[name](backend, root / backend.name / name)
    except Exception as exc:  # a scenario that breaks is a row that says so
        row = Row(name, backend.name, problems=[f"scenario raised {type(exc).__name__}: {exc}"])
    row.seconds = walltime.monotonic() - started
    return row
