"""Realtime path figures: webhook -> inbox -> webhook_sensor -> sync run -> records committed.

    .venv/bin/python bench/realtime.py [--rounds 5] [--pending 100000]

Prints, in one run on this machine:
- one sensor tick's time with `--pending` events waiting (Dagster stops a tick at 60 s);
- per round, the time from posting a signed webhook until its user's records are committed, with
  the run executed in process (the work itself) and, for comparison, as a `dagster job execute`
  subprocess (what the daemon's run launcher adds: a fresh Python process and code load);
- the ratio of run overhead to work, which is what sizes partitions and batches.
Everything runs on loopback against a real uvicorn receiver and a SQLite store in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ohx_dagster.config.receiver import WebhookSecrets  # noqa: E402
from ohx_dagster.config.settings import Settings  # noqa: E402
from ohx_dagster.core.models import DateRange  # noqa: E402
from ohx_dagster.definitions import build_definitions  # noqa: E402
from ohx_dagster.providers.simulated import SimulatedSource  # noqa: E402
from ohx_dagster.providers.webhook.events import NewEvent  # noqa: E402
from ohx_dagster.receiver.app import create_app  # noqa: E402
from ohx_dagster.receiver.serve import serve_in_thread  # noqa: E402
from ohx_dagster.receiver.simulator import send_event  # noqa: E402
from ohx_dagster.storage.store import RecordStore  # noqa: E402
from ohx_dagster.sync.inbox import Inbox  # noqa: E402
from resources import RecordStoreResource  # noqa: E402

SECRET = "bench-simulated-secret"  # the development route is mounted only with a secret
_INSTANCE: dg.DagsterInstance | None = None


def tick(defs: dg.Definitions, database_url: str, cursor: str | None) -> dg.SensorResult:
    # One ephemeral instance for every tick, as the daemon has one instance (a new one a tick
    # left dozens of SQLite connections to be collected from other threads).
    global _INSTANCE
    _INSTANCE = _INSTANCE or dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=_INSTANCE,
        cursor=cursor,
        resources={"store": RecordStoreResource(database_url=database_url)},
    )
    return defs.get_sensor_def("webhook_sensor")(context)


def bench_tick_with_backlog(home: Path, pending: int) -> None:
    database_url = f"sqlite:///{home / 'backlog.db'}"
    store = RecordStore(database_url)
    users = SimulatedSource(50).discover_users()
    store.add_users(users)
    now = datetime.now(UTC)
    inbox = Inbox(store)
    for start in range(0, pending, 10_000):
        inbox.add(
            [
                NewEvent("simulated", f"e{i}", users[i % len(users)].user_id, "heart_rate", now)
                for i in range(start, min(start + 10_000, pending))
            ]
        )
    settings = Settings.from_env(
        {"OHX_HOME": str(home), "OHX_DATABASE_URL": database_url,
         "OHX_PARTITIONS_START": (now.date() - timedelta(days=3)).isoformat()}
    )  # fmt: skip
    defs = build_definitions(settings)
    started = time.perf_counter()
    result = tick(defs, database_url, None)
    first = time.perf_counter() - started
    ticks, cursor = 1, result.cursor
    started = time.perf_counter()
    while True:
        result = tick(defs, database_url, cursor)
        if not result.run_requests:
            break
        ticks, cursor = ticks + 1, result.cursor
    rest = time.perf_counter() - started
    per_tick = rest / max(ticks - 1, 1)
    print(f"sensor tick with {pending:,} pending events: first tick {first:.2f} s (limit 60 s); "
          f"drained in {ticks} ticks, {per_tick:.2f} s per tick")  # fmt: skip


def bench_webhook_to_records(home: Path, rounds: int) -> None:
    database_url = f"sqlite:///{home / 'ohx.db'}"
    now = datetime.now(UTC)
    env = {
        "OHX_HOME": str(home),
        "OHX_DATABASE_URL": database_url,
        "OHX_PARTITIONS_START": (now.date() - timedelta(days=3)).isoformat(),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    (home / "dagster").mkdir(exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    settings = Settings.from_env(env)
    store = RecordStore(database_url)
    users = SimulatedSource(3).discover_users()
    store.add_users(users)
    defs = build_definitions(settings)
    job = defs.resolve_job_def("sync_partition")
    instance = dg.DagsterInstance.ephemeral()
    cursor = None
    in_process, subprocess_runs, work = [], [], []
    with serve_in_thread(create_app(store, WebhookSecrets(simulated_secret=SECRET))) as url:
        for round_no in range(rounds):
            user = users[round_no % len(users)]
            posted = time.perf_counter()
            answer = send_event(url, SECRET, user.user_id, "heart_rate",
                                datetime.now(UTC))  # fmt: skip
            assert answer.status_code == 200, answer.text
            result = tick(defs, database_url, cursor)
            cursor = result.cursor
            (request,) = result.run_requests
            if round_no % 2 == 0:
                run = job.execute_in_process(
                    partition_key=request.partition_key, tags=request.tags, instance=instance
                )
                assert run.success
                in_process.append(time.perf_counter() - posted)
                work.append(_step_seconds(instance.all_logs(run.run_id)))
            else:
                tags = {**request.tags, "dagster/partition": request.partition_key}
                subprocess.run(
                    [sys.executable, "-m", "dagster", "job", "execute", "-m",
                     "ohx_dagster.definitions", "-j", "sync_partition",
                     "--tags", orjson.dumps(tags).decode()],
                    env={**os.environ, **env}, cwd=REPO, check=True, capture_output=True,
                )  # fmt: skip
                subprocess_runs.append(time.perf_counter() - posted)
            recent = DateRange(datetime.now(UTC) - timedelta(minutes=16), datetime.now(UTC))
            committed = store.read_records("simulated", recent, user_ids=[user.user_id])
            assert not committed.empty, "the run committed no records"
    print(f"webhook -> records committed, run in process: median "
          f"{statistics.median(in_process):.2f} s over {len(in_process)} rounds; the four steps' "
          f"own work: median {statistics.median(work):.2f} s")  # fmt: skip
    if subprocess_runs:
        median = statistics.median(subprocess_runs)
        print(f"webhook -> records committed, run as a subprocess (what the run launcher adds): "
              f"median {median:.2f} s, {len(subprocess_runs)} rounds")  # fmt: skip
        ratio = statistics.median(subprocess_runs) / statistics.median(work)
        print(f"run overhead vs work: subprocess run / step work = {ratio:.1f}x")
    print("add the sensor interval (10 s) and the run queue's poll for the daemon's end-to-end")


def _step_seconds(entries) -> float:
    """Time spent inside the steps (asset code), from the run's event log."""
    starts, total = {}, 0.0
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and event.step_key in starts:
            total += entry.timestamp - starts[event.step_key]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pending", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        bench_tick_with_backlog(home, args.pending)
        bench_webhook_to_records(home, args.rounds)


if __name__ == "__main__":
    main()
