"""A push run for one person: its cost in a partition holding many people against one holding one.

The partition: today's day partition of the simulator at 1 Hz, synced and published for every
person up to 23:00 (the simulator's clock). Then, `rounds` times, five minutes pass and one
person's webhook arrives; the run the webhook sensor would start answers it on the real code path:
`sync_partition` with strategy "push", the person as `user_ids` and the notification as `events`
(today's push re-reads the provider's re-sync horizon and what the notification names), then
`publish_partition` with the person as `scope`, validated as the asset validates. Its CPU seconds
(median of the rounds) in a partition of `many` people are compared with the same in a partition
of one.

Also the hourly incremental row (issue 21): one person's day synced and published to 23:00 as the
day's first run does, then the hourly schedule's incremental run at 23:55 (the gaps and the
re-sync horizon, an hour) with its publish; its CPU against the first run's.

    .venv/bin/python -m bench.push [--many 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import DAY, day_start, median, timed
from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.base import Event, Windowed
from ohx_dagster.providers.registry import RESYNC_HORIZON, SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import publish_partition, validate_sample
from ohx_dagster.storage.schema import users
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard
from ohx_dagster.sync.strategies import SyncStrategy

PERSON = "sim-001"
HORIZON = RESYNC_HORIZON["simulated"]


def partition(home: Path, people: int, rounds: int) -> dict[str, Any]:
    """Set up a partition of `people` and time `rounds` push runs for PERSON in it."""
    folder = Path(tempfile.mkdtemp(dir=home))
    store = RecordStore(f"sqlite:///{folder / 'ohx.db'}")
    output = FhirOutput(str(folder / "fhir"))
    clock = [day_start(DAY) + timedelta(hours=23)]
    simulator = SimulatedSource(people, hr_hz=1, clock=lambda: clock[0])
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], HORIZON)
    shard = Shard("simulated")

    def publish(now: datetime, scope: set[str] | None, day: date = DAY) -> Any:
        return publish_partition(
            store,
            output,
            provider="simulated",
            key="simulated",
            shard=shard,
            day=day,
            scope=scope,
            now=now,
            horizon=HORIZON,
            force=scope is None,
            validate=validate_sample,
        )

    with timed() as setup:
        sync_partition(source, store, DAY, now=clock[0])
        publish(clock[0], None)
    runs, resources = [], 0
    for _ in range(rounds):
        clock[0] += timedelta(minutes=5)
        event = Event("heart_rate", clock[0] - timedelta(minutes=1), clock[0], {})
        with timed() as run:
            pushed = sync_partition(
                source,
                store,
                DAY,
                strategy=SyncStrategy.PUSH,
                user_ids={PERSON},
                events={PERSON: [event]},
                now=clock[0],
            )
            # The person's local day the new minutes belong to (past 23:00 UTC it is the next
            # day east of UTC): what the chain and the republish sensor publish.
            for day in sorted(pushed.days_changed):
                report = publish(clock[0], {PERSON}, day)
        assert report.users and PERSON in report.users, "the push published nothing"
        runs.append(run.cpu_s)
        resources = report.resources
    store.dispose()
    return {
        "people": people,
        "setup_cpu_s": setup.cpu_s,
        "push_cpu_s": median(runs),
        "rounds_cpu_s": runs,
        "people_republished": len(report.users),
        "resources_rewritten": resources,
    }


def _incremental_round(home: Path) -> tuple[float, float]:
    """(CPU-s of the day's first run to 23:00, of the incremental run at 23:55), one person."""
    folder = Path(tempfile.mkdtemp(dir=home))
    store = RecordStore(f"sqlite:///{folder / 'ohx.db'}")
    output = FhirOutput(str(folder / "fhir"))
    clock = [day_start(DAY) + timedelta(hours=23)]
    simulator = SimulatedSource(1, hr_hz=1, clock=lambda: clock[0])
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], HORIZON)
    store.add_users(simulator.discover_users())
    with store.write() as conn:  # connected at the day's start: the day is in their history
        conn.execute(users.update().values(connected_at_us=to_us(day_start(DAY))))

    def chain(strategy: SyncStrategy) -> None:
        synced = sync_partition(source, store, DAY, strategy=strategy, now=clock[0])
        for day in sorted(synced.days_changed | {DAY}):
            publish_partition(
                store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
                day=day, scope=None, now=clock[0], horizon=HORIZON, validate=validate_sample,
            )  # fmt: skip

    with timed() as first:
        chain(SyncStrategy.PARTITION)
    clock[0] += timedelta(minutes=55)  # the hourly schedule's run, the day not over
    with timed() as hour:
        chain(SyncStrategy.INCREMENTAL)
    store.dispose()
    return first.cpu_s, hour.cpu_s


def incremental(home: Path, rounds: int = 3) -> dict[str, Any]:
    """The day's first run for one person to 23:00 against the incremental run an hour later."""
    pairs = [_incremental_round(home) for _ in range(rounds)]
    first, hour = median([p[0] for p in pairs]), median([p[1] for p in pairs])
    return {"first_cpu_s": first, "hour_cpu_s": hour, "ratio": hour / first}


def run(many: int = 50, rounds: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ohx-bench-push-") as tmp:
        home = Path(tmp)
        partition(home, 1, 1)  # warm-up: imports, the validator's packages
        one = partition(home, 1, rounds)
        crowd = partition(home, many, rounds)
        hourly = incremental(home)
    return {
        "one": one,
        "many": crowd,
        "ratio": crowd["push_cpu_s"] / one["push_cpu_s"],
        "incremental": hourly,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--many", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.many, args.rounds), indent=2))


if __name__ == "__main__":
    main()
