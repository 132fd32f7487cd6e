"""New people's history through real Dagster runs: `users` people x `days` days at 1 Hz.

What the new-user sensor asks for (sensors/new_users.py): the lookback days of the people, the
initial strategy for just them, split into runs of BACKFILL_POLICY's days each
(assets/partitions.py: a week). Each run here is the `sync_partition` job executed for its
partition range against a DagsterInstance on disk (its event log, asset checks and run storage
written as the daemon's runs write them), one after the other, in one process. Reported: the wall
and CPU seconds of the whole history and of each run, and the overhead of a run with no work (the
first range again: all covered and published, it fetches and publishes nothing) against a run's.

The people are registered with a lookback that reaches the first day, as a connection does; the
days are the last `days` whole UTC days before today (the initial strategy fetches nothing before
a person's history start).

    .venv/bin/python -m bench.history [--users 10] [--days 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import REPO, timed


def _ranges(days: list, per_run: int) -> list[tuple]:
    return [(days[i], days[min(i + per_run, len(days)) - 1]) for i in range(0, len(days), per_run)]


def _as_subprocess(home: Path, env: dict[str, str], tags: dict[str, str], span: tuple) -> float:
    """Wall seconds of the run with no work as its own process (`dagster job execute`): what the
    daemon's default run launcher adds to each run (a Python process, the code location load)."""
    first, last = span
    tags = {
        **tags,
        "dagster/asset_partition_range_start": f"{first.isoformat()}|simulated",
        "dagster/asset_partition_range_end": f"{last.isoformat()}|simulated",
    }
    command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "ohx_dagster.definitions",
               "-j", "sync_partition", "--tags", json.dumps(tags)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, env={**os.environ, **env, "DAGSTER_HOME": str(home / "dagster")},
                   cwd=REPO, check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def run(users: int = 10, days: int = 30, hz: float = 1.0) -> dict[str, Any]:
    import dagster as dg

    from assets.partitions import BACKFILL_POLICY
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.definitions import build_definitions
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.run_request import SyncRequest
    from ohx_dagster.sync.strategies import SyncStrategy

    today = datetime.now(UTC).date()
    history = [today - timedelta(days=days - i) for i in range(days)]
    per_run = BACKFILL_POLICY.max_partitions_per_run or 1
    with tempfile.TemporaryDirectory(prefix="ohx-bench-history-") as tmp:
        home = Path(tmp)
        (home / "dagster").mkdir()
        (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        env = {
            "OHX_HOME": str(home),
            "OHX_DATABASE_URL": f"sqlite:///{home / 'ohx.db'}",
            "OHX_PARTITIONS_START": history[0].isoformat(),
            "OHX_SIMULATED_USERS": str(users),
            "OHX_SIMULATED_HR_HZ": str(hz),
            # Runs name people by salted subject: this process and the subprocess hash alike.
            "OHX_ERASURE_SALT": os.environ.get("OHX_ERASURE_SALT") or "bench-history-0123456789",
        }
        os.environ["OHX_ERASURE_SALT"] = env["OHX_ERASURE_SALT"]
        defs = build_definitions(Settings.from_env(env))
        job = defs.resolve_job_def("sync_partition")
        store = RecordStore(env["OHX_DATABASE_URL"])
        people = [
            dataclasses.replace(c, lookback_days=days + 1)
            for c in SimulatedSource(users).discover_users()
        ]
        store.add_users(people)
        request = SyncRequest.for_people(
            SyncStrategy.INITIAL, "simulated", [c.user_id for c in people]
        )

        def execute(first: Any, last: Any) -> dict[str, float]:
            tags = {
                **request.tags(),
                "ohx/backfill": "bench-history",
                "dagster/asset_partition_range_start": f"{first.isoformat()}|simulated",
                "dagster/asset_partition_range_end": f"{last.isoformat()}|simulated",
            }
            with timed() as timing:
                result = job.execute_in_process(instance=instance, tags=tags)
            assert result.success
            return {"wall_s": timing.wall_s, "cpu_s": timing.cpu_s}

        ranges = _ranges(history, per_run)
        with timed() as total:
            runs = [execute(first, last) for first, last in ranges]
        samples = store.count_records("simulated")
        idle = execute(*ranges[0])  # the same range again: nothing to fetch or publish
        launched = _as_subprocess(home, env, request.tags(), ranges[0])
        store.dispose()
        instance.dispose()
    work = [r["wall_s"] for r in runs]
    return {
        "users": users,
        "days": days,
        "hz": hz,
        "samples": samples,
        "runs": len(runs),
        "days_per_run": per_run,
        "wall_s": total.wall_s,
        "cpu_s": total.cpu_s,
        "run_wall_s": work,
        "idle_run": idle,
        "idle_run_subprocess_wall_s": launched,
        "overhead_vs_work": idle["wall_s"] / max(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--hz", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(run(args.users, args.days, args.hz), indent=2))


if __name__ == "__main__":
    main()
