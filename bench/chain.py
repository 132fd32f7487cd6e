"""The whole chain through a real Dagster run: fetch, commit, statistics, FHIR, validation, files.

One worker process per partition size: it builds the product's Definitions from settings (SQLite
store, local FHIR output, the simulator with OHX_SIMULATED_USERS people at OHX_SIMULATED_HR_HZ) and
executes the `sync_partition` job for one day against a DagsterInstance on disk, as a person's
click on "Materialize" does. It first runs the job for three people in another store (which warms
the process: imports, the validator's packages and tables, loaded once per process), then on a
partition with no people (the run's fixed cost), then the partition with people.
CPU seconds are this process's (every thread); the worker's peak RSS is reported by the parent
from RUSAGE_CHILDREN.

The baseline (in its own process, on the samples the chain stored): those samples as rows upserted
into a plain SQLite table with `executemany` (bench/common.py).

    .venv/bin/python -m bench.chain [--users 10] [--hz 1]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import DAY, REPO, batch_rows, sqlite_bulk_load, timed


def _definitions(home: Path, users: int, hz: float) -> Any:
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.definitions import build_definitions

    env = {
        "OHX_HOME": str(home),
        "OHX_DATABASE_URL": f"sqlite:///{home / 'ohx.db'}",
        "OHX_PARTITIONS_START": (DAY - timedelta(days=1)).isoformat(),
        "OHX_SIMULATED_USERS": str(users),
        "OHX_SIMULATED_HR_HZ": str(hz),
    }
    return build_definitions(Settings.from_env(env))


def _run(defs: Any, instance: Any) -> dict[str, float]:
    job = defs.resolve_job_def("sync_partition")
    with timed() as timing:
        result = job.execute_in_process(
            partition_key=f"{DAY.isoformat()}|simulated", instance=instance
        )
    assert result.success
    return {"wall_s": timing.wall_s, "cpu_s": timing.cpu_s}


class _Meter:
    """CPU seconds spent inside one function during the measured run (instrumentation only: the
    function is called exactly as before, and the meter reads the process clock around it)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.cpu_s = owner, name, 0.0
        self.original = getattr(owner, name)

    def __enter__(self) -> _Meter:
        original = self.original

        def metered(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu_s += time.process_time() - started

        setattr(self.owner, self.name, metered)
        return self

    def __exit__(self, *_: object) -> None:
        setattr(self.owner, self.name, self.original)


def worker(users: int, hz: float, keep: Path | None, profile: Path | None = None) -> dict[str, Any]:
    """In this process: the warm-up and empty runs, then the partition with `users` people."""
    import dagster as dg

    import ohx_dagster.publish.partitions
    from ohx_dagster.fhir.validation import forget_remembered
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.storage.store import RecordStore

    with tempfile.TemporaryDirectory(prefix="ohx-bench-chain-") as tmp:
        root = Path(tmp)
        (root / "dagster").mkdir()
        (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = dg.DagsterInstance.from_config(str(root / "dagster"))
        # Warm-up: a run with a few people loads what a process loads once (imports, the FHIR
        # validator's packages, terminology and UCUM tables: the validated sample differs from
        # run to run, so one person's run may leave some of it unloaded); then the fixed cost of
        # a run with no one.
        _run(_definitions(root / "warm", 3, hz), instance)
        # The fixed cost is the median of three empty runs: one moves by a quarter with the load.
        empty = _definitions(root / "empty", 0, hz)
        fixed = sorted((_run(empty, instance) for _ in range(3)), key=lambda r: r["cpu_s"])[1]
        home = keep or root / "full"
        defs = _definitions(home, users, hz)
        # Each production run is a process of its own: the validator starts with no invariant
        # outcomes or valid values remembered from the runs before.
        forget_remembered()
        # Where the run's CPU goes, beside the total: the FHIR validation of each published
        # bucket's sample (the asset's call) and the simulated provider answering the fetches.
        with (
            _Meter(ohx_dagster.publish.partitions, "validate_resources") as validation,
            _Meter(SimulatedSource, "fetch") as provider,
        ):
            if profile is None:
                work = _run(defs, instance)
            else:
                profiler = cProfile.Profile()
                work = profiler.runcall(_run, defs, instance)
                profiler.dump_stats(profile)
        store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
        samples = store.count_records("simulated")
        store.dispose()
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        instance.dispose()
    return {
        "users": users,
        "hz": hz,
        "samples": samples,
        "fixed": fixed,
        "run": work,
        "validation_cpu_s": validation.cpu_s,
        "provider_cpu_s": provider.cpu_s,
        "self_maxrss_kib": rss_kib,
    }


def baseline(home: Path, loads: int = 3) -> dict[str, Any]:
    """The chain's stored samples of the day, as rows upserted into plain SQLite: the median of
    `loads` loads into fresh files (the chain's figure is a median too)."""
    from ohx_dagster.core.models import DateRange
    from ohx_dagster.core.times import utc_day
    from ohx_dagster.storage.store import RecordStore

    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    window = utc_day(DAY)
    records = store.read_records("simulated", DateRange(window.start, window.end))
    store.dispose()
    rows = batch_rows(records)
    timings = sorted(
        (sqlite_bulk_load(home / f"plain-{n}.db", rows) for n in range(loads)),
        key=lambda t: t.cpu_s,
    )
    median = timings[len(timings) // 2]
    return {
        "rows": len(rows),
        "cpu_s": median.cpu_s,
        "wall_s": median.wall_s,
        "cpu_s_repeats": [round(t.cpu_s, 3) for t in timings],
    }


def in_child(args: list[str]) -> tuple[dict[str, Any], int]:
    """Run this module in a child process; (its result, peak RSS of children so far in KiB)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.chain", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--hz", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, help="keep the partition's store in this folder")
    parser.add_argument("--baseline", type=Path, help="bulk-load the samples stored in this folder")
    parser.add_argument(
        "--loads", type=int, default=3, help="with --baseline: loads to take the median of"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the partition's run into this file")
    args = parser.parse_args()
    if args.baseline:
        print(json.dumps(baseline(args.baseline, args.loads)))
    else:
        print(json.dumps(worker(args.users, args.hz, args.keep, args.profile)))


if __name__ == "__main__":
    main()
