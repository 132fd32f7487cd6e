"""The world a fault scenario runs in: a record store, a FHIR output, one source, a clock, and the
product's own orchestration replayed step by step with the functions Dagster calls.

| Dagster piece | here |
|---|---|
| one run: raw_health_records, publish | `World.sync`: sync_partition, checks, publish_partition |
| RetryRequested after SyncFailed (transient) | `World.sync` retries MAX_RETRIES after Retry-After |
| hourly_incremental_sync schedule | `World.tick`: today + days_with_gaps (CATCH_UP_DAYS) |
| daily_close schedule | `World.tick`: days_closing_at, close strategy with close_at |
| republish_sensor | `World.tick`: days_to_republish -> refresh runs |
| new_user_sensor | `World.tick`: users_activated_since -> initial backfill, 7 days a run |
| webhook_sensor | `World.dispatch`: inbox -> plan_dispatch -> push runs |

The clock is the scenario's: every `now` the product takes (sync, publish, the provider sources'
token and budget clocks, the simulator) reads it, so an hour passes in a call.

What is compared (`World.measure`): the provider's samples in a window (the truth), the store's
records there, and per UTC day the samples the published NDJSON of the partition names (series
read back from their SampledData, measurements and ECGs by their identifiers). A sample is keyed
by (person, type, instant, device); `lost` counts held samples not stored or stored with another
value, `duplicated` stored rows beyond one per held sample (a second copy, or a record the
provider no longer holds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import sqlalchemy as sa

from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import from_us, to_us
from ohx_dagster.fhir.codes import PA_PANEL
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.series import read_series
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.publish import aggregate
from ohx_dagster.publish.partitions import PublishReport, partition_dir, publish_partition
from ohx_dagster.storage.schema import users
from ohx_dagster.storage.store import RecordStore, history_start
from ohx_dagster.sync.fetch import SyncFailed, SyncReport, run_checks, sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.shards import Shard
from ohx_dagster.sync.strategies import SyncStrategy, goal

REPO = Path(__file__).resolve().parents[1]
MAX_RETRIES = 3  # assets/health.py
RETRY_WAIT_S = 30.0
BACKFILL_DAYS = 7  # assets/partitions.py BACKFILL_POLICY

Key = tuple[str, str, int, str]  # person, type, instant (epoch us), device


class Clock:
    """The scenario's time; callable like the product's clocks."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now = self.now + delta


class Truth(Protocol):
    """What the provider holds, as the product would store it."""

    def held(self, start_us: int, end_us: int, at: datetime) -> dict[Key, Any]: ...


def record_value(kind: str, value: float, diastolic: float) -> Any:
    if kind == HealthDataType.ECG.value:
        return None
    if kind == HealthDataType.BLOOD_PRESSURE.value:
        return (round(float(value), 6), round(float(diastolic), 6))
    return round(float(value), 6)


def batch_keys(batch: pd.DataFrame) -> tuple[dict[Key, Any], int]:
    """{key: value} of a record batch, and how many rows repeat a key."""
    if batch.empty:
        return {}, 0
    ts = batch["ts"].dt.as_unit("us").astype("int64").to_numpy()
    found: dict[Key, Any] = {}
    repeated = 0
    columns = zip(
        batch["user_id"], batch["data_type"], ts, batch["device_id"], batch["value"],
        batch["diastolic"], strict=True,
    )  # fmt: skip
    for user, kind, stamp, device, value, diastolic in columns:
        key = (str(user), str(kind), int(stamp), str(device))
        if key in found:
            repeated += 1
        found[key] = record_value(kind, value, diastolic)
    return found, repeated


@dataclass
class Run:
    """One Dagster run as the harness replayed it."""

    label: str
    strategy: str
    days: tuple[date, ...]
    status: str  # green | failed | check failed
    detail: str = ""
    attempts: int = 1
    report: SyncReport | None = None
    green_loss: int = 0  # samples of its goal missing although the run was green

    @property
    def red(self) -> bool:
        return self.status != "green"


@dataclass
class Measure:
    held: int
    stored: int
    lost: int
    duplicated: int
    published: int
    published_ok: bool
    published_problems: list[str] = field(default_factory=list)
    aggregated: int = 0  # samples the days' stored daily aggregates count
    aggregated_ok: bool = True


class World:
    def __init__(
        self,
        url: str,
        root: Path,
        source: HealthSource,
        truth: Truth,
        clock: Clock,
        *,
        first_day: date,
        store: RecordStore | None = None,
        factory: Callable[[], HealthSource] | None = None,
    ) -> None:
        self.url = url
        self.root = root
        self.store = store or RecordStore(url, migrate_schema=True)
        self.output = FhirOutput(str(root / "fhir"))
        self.source = source
        # A run builds its source as a Dagster run process does (a fresh one per run).
        self.factory = factory or (lambda: source)
        self.truth = truth
        self.clock = clock
        self.first_day = first_day
        self.provider = source.name
        self.runs: list[Run] = []
        # Samples the provider received late: a run is not blamed for missing them.
        self.late: set[Key] = set()
        self.inbox_cursor = 0
        self.activation_cursor = 0
        self.publish_reports: list[PublishReport] = []

    @property
    def horizon(self) -> timedelta:
        return self.source.resync_horizon

    def close(self) -> None:
        self.store.dispose()

    # -- people -----------------------------------------------------------------------------------

    def backdate(self, connected: datetime) -> None:
        """The people connected at `connected` (their history is what their lookback reaches), and
        the new-user sensor has seen them already."""
        with self.store.write() as conn:
            conn.execute(
                users.update()
                .where(users.c.provider == self.provider)
                .values(connected_at_us=to_us(connected), state_at_us=to_us(connected))
            )
        self.activation_cursor = to_us(connected)

    def configs(self) -> dict[str, HealthSyncConfig]:
        return {p.config.user_id: p.config for p in self.store.people(self.provider)}

    # -- one run ----------------------------------------------------------------------------------

    def sync(
        self,
        strategy: SyncStrategy,
        days: Sequence[date],
        *,
        label: str = "",
        user_ids: Iterable[str] | None = None,
        request: SyncRequest | None = None,
        events: dict | None = None,
        publish: bool = True,
        retries: int = MAX_RETRIES,
    ) -> Run:
        """One run of the job: sync (with Dagster's retries), its checks, then publish its days."""
        request = request or SyncRequest(
            strategy, user_ids=None if user_ids is None else frozenset(user_ids)
        )
        days = tuple(days)
        run = Run(label or f"{strategy.value} {days[0]}", strategy.value, days, "green")
        self.runs.append(run)
        attempt = 0
        while True:
            attempt += 1
            now = self.clock.now
            try:
                report = sync_partition(
                    self.factory(),
                    self.store,
                    days,
                    strategy=request.strategy,
                    user_ids=request.user_ids,
                    select=request.selects,
                    events=events,
                    now=now,
                )
            except SyncFailed as failed:
                if failed.report.transient and attempt <= retries:
                    wait = failed.report.retry_after_s or RETRY_WAIT_S
                    self.clock.advance(timedelta(seconds=wait))
                    continue
                run.status, run.detail, run.report = "failed", str(failed)[:300], failed.report
                run.attempts = attempt
                return run
            except Exception as exc:  # a crash: the run fails, nothing retries it
                run.status, run.detail = "failed", f"{type(exc).__name__}: {exc}"[:300]
                run.attempts = attempt
                return run
            break
        run.attempts, run.report = attempt, report
        checks = run_checks(self.store, report, now)
        failing = {name: problems for name, problems in checks.items() if problems}
        if failing:
            run.status = "check failed"
            run.detail = "; ".join(f"{n}: {p[:3]}" for n, p in sorted(failing.items()))[:300]
        # day_covered is a blocking check: the run's publish step does not run after it fails
        # (the republish sensor publishes what was committed).
        if publish and not checks["day_covered"]:
            try:
                for day in days:
                    reports = self.publish(
                        day,
                        user_ids=request.user_ids,
                        force=request.strategy is SyncStrategy.PARTITION,
                    )
                    if reports.invalid_buckets or reports.duplicate_ids:
                        run.status = "check failed"
                        run.detail += f" publish {day}: invalid {reports.invalid_buckets}"
            except Exception as exc:
                run.status, run.detail = "failed", f"publish: {type(exc).__name__}: {exc}"[:300]
                return run
        if not run.red:
            run.green_loss = self._goal_loss(report, request.strategy, now)
        return run

    def publish(
        self, day: date, *, user_ids: Iterable[str] | None = None, force: bool = False
    ) -> PublishReport:
        report = publish_partition(
            self.store,
            self.output,
            provider=self.provider,
            key=self.provider,
            shard=Shard(self.provider),
            day=day,
            scope=None if user_ids is None else sorted(user_ids),
            now=self.clock.now,
            horizon=self.horizon,
            force=force,
            run_id=f"faults-{len(self.runs)}",
        )
        self.publish_reports.append(report)
        return report

    def refresh(self, day: date, user_ids: Iterable[str] | None, label: str = "") -> Run:
        """A republish_sensor refresh run: no fetch; statistics and FHIR of what changed."""
        request = SyncRequest(
            SyncStrategy.REFRESH, user_ids=None if user_ids is None else frozenset(user_ids)
        )
        label = label or f"refresh {day}"
        return self.sync(SyncStrategy.REFRESH, [day], request=request, label=label)

    def _goal_loss(self, report: SyncReport, strategy: SyncStrategy, now: datetime) -> int:
        """Samples the provider held (not late) inside the run's goal that the store lacks."""
        if strategy is SyncStrategy.REFRESH or not report.users_synced:
            return 0
        people = {p.config.user_id: p for p in self.store.people(self.provider)}
        missing = 0
        for user_id in report.users_synced:
            person = people[user_id]
            start = history_start(person.config, person.connected_at_us, now)
            refused = set(report.refused.get(user_id, {})) | set(
                self.store.refused_types(person.config)
            )
            kinds = {
                k.value for k in person.config.enabled_types & report.supported_types
            } - refused
            for day in report.days:
                target = goal(strategy, day, person.config, start, now)
                if target is None:
                    continue
                held = self.truth.held(*target, at=now)
                window = DateRange(from_us(target[0]), from_us(target[1]))
                stored, _ = batch_keys(
                    self.store.read_records(self.provider, window, user_ids=[user_id])
                )
                missing += sum(
                    1
                    for key, value in held.items()
                    if key[0] == user_id
                    and key[1] in kinds
                    and key not in self.late
                    and stored.get(key, _MISSING) != value
                )
        return missing

    # -- what Dagster's schedules and sensors would launch ---------------------------------------

    def tick(self) -> list[Run]:
        """One hour's automation at the clock's time: hourly incremental (today and the days with
        gaps), the local days closing now, the new-user backfills, and the republish sensor."""
        from sensors.new_users import lookback_days
        from sensors.republish import days_to_republish
        from sensors.schedules import (
            CATCH_UP_DAYS,
            SYNCED_BY_SCHEDULE,
            days_closing_at,
            days_with_gaps,
        )

        moment = self.clock.now
        runs = []
        hourly = SyncRequest(SyncStrategy.INCREMENTAL, frequencies=SYNCED_BY_SCHEDULE)
        catch_up = SyncRequest(SyncStrategy.INCREMENTAL)
        behind = days_with_gaps(self.store, self.provider, moment, self.first_day)[:CATCH_UP_DAYS]
        today = moment.date()
        runs.append(self.sync(SyncStrategy.INCREMENTAL, [today], request=hourly,
                              label=f"hourly {today}"))  # fmt: skip
        for day in behind:
            runs.append(self.sync(SyncStrategy.INCREMENTAL, [day], request=catch_up,
                                  label=f"hourly catch-up {day}"))  # fmt: skip
        for day in days_closing_at(moment):
            if day >= self.first_day:
                request = SyncRequest(SyncStrategy.CLOSE, close_at=moment)
                if any(request.selects(c, day) for c in self.configs().values()):
                    runs.append(self.sync(SyncStrategy.CLOSE, [day], request=request,
                                          label=f"close {day}"))  # fmt: skip
        activated = self.store.users_activated_since(self.activation_cursor)
        if activated:
            self.activation_cursor = max(at for at, _ in activated)
            configs = [c for _, c in activated if c.provider == self.provider]
            if configs:
                days = lookback_days(configs, moment.date(), self.first_day)
                request = SyncRequest(
                    SyncStrategy.INITIAL, user_ids=frozenset(c.user_id for c in configs)
                )
                for start in range(0, len(days), BACKFILL_DAYS):
                    chunk = days[start : start + BACKFILL_DAYS]
                    runs.append(self.sync(SyncStrategy.INITIAL, chunk, request=request,
                                          label=f"backfill {chunk[0]}..{chunk[-1]}"))  # fmt: skip
        due = days_to_republish(self.store, self.provider, self.horizon, moment)
        for day, people in sorted(due.items()):
            if self.first_day <= day <= moment.date():
                runs.append(self.refresh(day, people))
        return runs

    def settle(self, hours: int = 1, step: timedelta = timedelta(hours=1)) -> list[Run]:
        """Let `hours` hours of automation pass."""
        runs = []
        for _ in range(hours):
            self.clock.advance(step)
            runs += self.tick()
        return runs

    def dispatch(self) -> list[Run]:
        """The webhook sensor's tick, and the push runs it asks for."""
        from assets.health import events_of
        from ohx_dagster.sync.dispatch import plan_dispatch
        from sensors.webhooks import BATCH_LIMIT, run_request_for

        inbox = Inbox(self.store)
        events = inbox.for_sensor(self.inbox_cursor, BATCH_LIMIT)
        if not events:
            return []
        dispatch = plan_dispatch(events, self.store, [self.provider], self.first_day)
        runs = []
        for (day, key), group in sorted(dispatch.groups.items()):
            launched = run_request_for(day, key, group)
            inbox.mark_dispatched([e.id for e in group], launched.run_key or "")
            # The run resolves the people its tags name by subject through the store.
            request = SyncRequest.from_tags(launched.tags).resolve(self.store, self.provider)
            runs.append(
                self.sync(SyncStrategy.PUSH, [day], request=request,
                          events=events_of(self.store, request), label=f"push {day}")
            )  # fmt: skip
        if dispatch.ignored:
            inbox.mark_ignored(dispatch.ignored)
        self.inbox_cursor = max(e.id for e in events)
        return runs

    # -- what is where ----------------------------------------------------------------------------

    def stored(self, start: datetime, end: datetime) -> tuple[dict[Key, Any], int]:
        return batch_keys(self.store.read_records(self.provider, DateRange(start, end)))

    def resources(self, day: date) -> list[dict[str, Any]]:
        """Every resource the partition's manifest names."""
        return list(self.output.listed_resources(partition_dir(day, self.provider)))

    def published(self, day: date) -> tuple[Counter, list[str]]:
        """The samples the partition's manifest names (a Counter of keys), and problems."""
        directory = partition_dir(day, self.provider)
        manifest = self.output.manifest(directory)
        found: Counter = Counter()
        problems: list[str] = []
        if manifest is None:
            return found, problems
        for entry in manifest["output"]:
            name = entry["url"].rsplit("/", 1)[-1]
            if not self.output.exists(f"{directory}/{name}"):
                problems.append(f"{day}: manifest names missing file {name}")
                continue
            for resource in self.output.read_resources(f"{directory}/{name}"):
                if resource["resourceType"] != "Observation":
                    continue
                if resource.get("status") == "entered-in-error":
                    continue
                for key in _sample_keys(resource):
                    found[key] += 1
        return found, problems

    def measure(self, start: datetime, end: datetime) -> Measure:
        """Provider vs store over [start, end), and published vs store per day partition inside:
        a partition publishes each person's local day of its date."""
        held = self.truth.held(to_us(start), to_us(end), at=self.clock.now)
        stored, repeated = self.stored(start, end)
        lost = sum(1 for key, value in held.items() if stored.get(key, _MISSING) != value)
        extra = sum(1 for key in stored if key not in held)
        problems: list[str] = []
        published_total = 0
        # Every local day of a date lies within 14 h before and 36 h after its UTC midnight.
        first = datetime.combine(start.date(), time(), tzinfo=UTC)
        around, _ = self.stored(first - timedelta(hours=14), end + timedelta(hours=36))
        calendars = {u: Calendar.of(c) for u, c in self.configs().items()}
        by_day: dict[date, set[Key]] = {}
        for key in around:
            calendar = calendars.get(key[0], Calendar("UTC"))
            by_day.setdefault(calendar.day_of(key[2]), set()).add(key)
        day = start.date()
        while datetime.combine(day, time(), tzinfo=UTC) < end:
            in_day = by_day.get(day, set())
            published, missing_files = self.published(day)
            low, high = to_us(start), to_us(end)
            published_total += sum(n for k, n in published.items() if low <= k[2] < high)
            problems += missing_files
            twice = [k for k, n in published.items() if n > 1]
            if twice:
                problems.append(f"{day}: {len(twice)} samples published twice")
            only_stored = set(in_day) - set(published)
            only_published = set(published) - set(in_day)
            if only_stored or only_published:
                problems.append(
                    f"{day}: {len(only_stored)} stored not published, "
                    f"{len(only_published)} published not stored"
                )
            day += timedelta(days=1)
        aggregated, mismatched = self.daily_aggregates(start, end, calendars)
        return Measure(
            held=len(held),
            stored=len(stored),
            lost=lost,
            duplicated=repeated + extra,
            published=published_total,
            published_ok=not problems,
            published_problems=problems + mismatched,
            aggregated=aggregated,
            aggregated_ok=not mismatched,
        )

    def daily_aggregates(
        self, start: datetime, end: datetime, calendars: dict[str, Calendar]
    ) -> tuple[int, list[str]]:
        """The samples the stored daily aggregates of the days in [start, end) count, and where
        they differ from the statistics of the stored samples of each person's local day (a row
        of a zone the person no longer has, a day not re-derived, a sample counted twice)."""
        first = datetime.combine(start.date(), time(), tzinfo=UTC)
        records = self.store.read_records(
            self.provider, DateRange(first - timedelta(hours=14), end + timedelta(hours=36))
        )
        total, problems = 0, []
        day = start.date()
        while datetime.combine(day, time(), tzinfo=UTC) < end:
            midnight = datetime.combine(day, time(), tzinfo=UTC)
            # This date's daily rows in any zone, UTC+14 .. UTC-12 (the end included).
            any_zone = DateRange(midnight - timedelta(hours=14), midnight + timedelta(hours=12.01))
            rows = self.store.read_aggregates(self.provider, "daily", any_zone)
            got = Counter()
            for row in rows.itertuples():
                if (row.user_id, row.data_type) in got:
                    problems.append(f"{day}: two daily {row.data_type} rows of one person")
                got[(row.user_id, row.data_type)] += int(row.count)
            expected = aggregate.daily(records, calendars, day)
            want = Counter({(r.user_id, r.data_type): int(r.count) for r in expected.itertuples()})
            total += sum(got.values())
            if got != want:
                problems.append(
                    f"{day}: daily aggregates count {dict(got)}, the store {dict(want)}"
                )
            day += timedelta(days=1)
        return total, problems


_MISSING = object()


def _sample_keys(resource: dict[str, Any]) -> list[Key]:
    """The samples an Observation publishes, by the content key in its identifier."""
    values = [i["value"] for i in resource.get("identifier", [])]
    value = next((v for v in values if v.startswith("Observation|")), None)
    if value is None:
        return []
    parts = value.split("|")
    if len(parts) >= 7 and parts[4] == "series":
        stamps, _ = read_series(resource)
        return [(parts[2], parts[3], int(t), parts[6]) for t in stamps]
    if len(parts) >= 7 and parts[3] == HealthDataType.WORKOUT.value:
        # A workout is its panel; the members repeat its key with the measure they state.
        panel = resource["code"]["coding"][0]["code"] == PA_PANEL.code
        return [(parts[2], parts[3], int(parts[5]), parts[6])] if panel else []
    if len(parts) >= 7 and parts[4] == "individual":
        return [(parts[2], parts[3], int(parts[5]), parts[6])]
    if len(parts) >= 7 and parts[3] == HealthDataType.ECG.value and parts[-1] == "waveform":
        return [(parts[2], parts[3], int(parts[4]), parts[5])]
    return []


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def count_statements(engine: sa.Engine, on: Callable[[str], None]) -> Callable[[], None]:
    """Call `on(statement)` before every statement the engine sends; returns the remover."""

    def before(conn, cursor, statement, parameters, context, executemany):
        on(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    return lambda: sa.event.remove(engine, "before_cursor_execute", before)
