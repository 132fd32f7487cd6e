"""The fixed cost of a run as a deployment pays it: whole processes, started the way they are.

Each measured command is its own process, timed from outside (its CPU from RUSAGE_CHILDREN, user
plus system, and its wall clock), in turns A B C A B C ... so that the machine's drift falls on
each alike; the median of each is reported, and the ratio of the medians:

- `python -c pass`: a Python process and nothing else (the floor);
- `python -c "import dagster"`: the baseline issue 21 sets (an empty run at most 1.5x it);
- the empty run: `dagster job execute -m ohx_dagster.definitions -j sync_partition` for a day
  partition of the simulated source with no one in it, on a SQLite store and a DagsterInstance
  on disk, as a person's "Materialize" (or the daemon's launch) starts a run;
- definitions only: `python -c "import ohx_dagster.definitions"`, what every run, sensor
  evaluation and code server load begins with.

    .venv/bin/python -m bench.process [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DAY, REPO

PYTHON = str(REPO / ".venv" / "bin" / "python")
DAGSTER = str(REPO / ".venv" / "bin" / "dagster")


def _commands() -> dict[str, list[str]]:
    return {
        "python": [PYTHON, "-c", "pass"],
        "import dagster": [PYTHON, "-c", "import dagster"],
        "definitions": [PYTHON, "-c", "import ohx_dagster.definitions"],
        "empty run": [
            DAGSTER, "job", "execute", "-m", "ohx_dagster.definitions", "-j", "sync_partition",
            "--tags", json.dumps({"dagster/partition": f"{DAY.isoformat()}|simulated"}),
        ],
    }  # fmt: skip


def _environment(home: Path) -> dict[str, str]:
    """A store and an instance of their own, the simulator with nobody in it."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").touch()
    return {
        **os.environ,
        "OHX_HOME": str(home / "ohx"),
        "DAGSTER_HOME": str(dagster_home),
        "OHX_SIMULATED_USERS": "0",
        "OHX_PARTITIONS_START": DAY.replace(day=1).isoformat(),
    }


def _timed(command: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {' | '.join(tail)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "wall_s": wall}


def run(repeats: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ohx-bench-process-") as folder:
        env = _environment(Path(folder))
        commands = _commands()
        for command in commands.values():  # warm the file cache; not counted
            _timed(command, env)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, command in commands.items():
                samples[name].append(_timed(command, env))
    medians = {
        name: {key: statistics.median(s[key] for s in runs) for key in ("cpu_s", "wall_s")}
        for name, runs in samples.items()
    }
    base = medians["import dagster"]["cpu_s"]
    return {
        "repeats": repeats,
        "median": medians,
        "cpu_s": {name: [round(s["cpu_s"], 3) for s in runs] for name, runs in samples.items()},
        "empty_run_vs_import_dagster": medians["empty run"]["cpu_s"] / base,
        "definitions_vs_import_dagster": medians["definitions"]["cpu_s"] / base,
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report's rows (bench/run.py)."""
    median = result["median"]
    base = median["import dagster"]["cpu_s"]
    ratio = result["empty_run_vs_import_dagster"]
    return [
        (
            "an empty `sync_partition` run as its own process (`dagster job execute`, SQLite)",
            f"{median['empty run']['cpu_s']:.2f} CPU-s, {median['empty run']['wall_s']:.1f} s wall",
            f"{base:.2f} CPU-s (`import dagster` as a process; `pass`: "
            f"{median['python']['cpu_s']:.2f})",
            f"{ratio:.2f}x",
            "<= 1.5x",
            "met" if ratio <= 1.5 else "**missed**",
        ),
        (
            "loading the definitions as a process (`import ohx_dagster.definitions`)",
            f"{median['definitions']['cpu_s']:.2f} CPU-s",
            f"{base:.2f} CPU-s (`import dagster`)",
            f"{result['definitions_vs_import_dagster']:.2f}x",
            "-",
            "",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    result = run(parser.parse_args(argv).repeats)
    for row in rows(result):
        print(" | ".join(row))
    print(json.dumps(result["cpu_s"]), file=sys.stderr)


if __name__ == "__main__":
    main()
