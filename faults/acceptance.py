"""Issue 8's acceptance, through Dagster itself (the code location as the daemon loads it, runs
executed in process or in their own processes, the republish sensor evaluated as the daemon does):

Two day partitions synced with `ohx/strategy=incremental` the later day first, and the same two
synced at once by two run processes, publish the same NDJSON (every file but Provenance, which
names its run) as one `partition` run of the two days on a fresh store.

    python -m faults.acceptance <home> <first day> <last day> <strategy>   # one run, for a process
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USERS = "3"
HR_HZ = "0.01"  # a heart-rate sample every 100 s a person


def environment(home: Path, first_day: date) -> dict[str, str]:
    """The code location's settings: a home of its own, its store there unless
    OHX_DATABASE_URL names one (a PostgreSQL database)."""
    env = {
        "OHX_HOME": str(home),
        "OHX_PARTITIONS_START": (first_day - timedelta(days=5)).isoformat(),
        "OHX_SIMULATED_USERS": USERS,
        "OHX_SIMULATED_HR_HZ": HR_HZ,
    }
    if os.environ.get("OHX_DATABASE_URL"):
        env["OHX_DATABASE_URL"] = os.environ["OHX_DATABASE_URL"]
    return env


def _definitions(env: Mapping[str, str]):
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.definitions import build_definitions

    return build_definitions(Settings.from_env(dict(env)))


def run(home: Path, first: date, last: date, strategy: str, instance_dir: Path) -> bool:
    """One run of the sync job over the days [first, last] (a range is one run, as a backfill's)."""
    import dagster as dg

    defs = _definitions(environment(home, first))
    job = defs.get_job_def("sync_partition")
    tags = {"ohx/strategy": strategy}
    if first == last:
        keys = {"partition_key": f"{first}|simulated"}
    else:
        keys = {}
        tags |= {
            "dagster/asset_partition_range_start": f"{first}|simulated",
            "dagster/asset_partition_range_end": f"{last}|simulated",
        }
    instance_dir.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False, **keys)
        return result.success


def run_in_process(
    home: Path, day: date, strategy: str, label: str, database_url: str | None = None
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if database_url:
        env["OHX_DATABASE_URL"] = database_url
    return subprocess.Popen(
        [sys.executable, "-m", "faults.acceptance", str(home), day.isoformat(), day.isoformat(),
         strategy, label],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def republish(home: Path, first: date, instance_dir: Path) -> int:
    """The republish sensor's tick, and the refresh runs it asks for; returns how many."""
    import dagster as dg

    defs = _definitions(environment(home, first))
    sensor = defs.get_sensor_def("republish_sensor")
    resources = {name: defs.resources[name] for name in ("store", "sources")}
    instance_dir.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)
        result = sensor(context)
        requests = list(result.run_requests or [])
        for request in requests:
            done = defs.get_job_def("sync_partition").execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags
            )
            assert done.success
    return len(requests)


def published_files(home: Path, day: date) -> dict[str, bytes]:
    """The files the day's manifest names, Provenance left out (it names the run)."""
    import orjson

    directory = home / "fhir" / day.isoformat() / "simulated"
    manifest = orjson.loads((directory / "manifest.json").read_bytes())
    names = [entry["url"].rsplit("/", 1)[-1] for entry in manifest["output"]]
    return {
        name: (directory / name).read_bytes()
        for name in names
        if not name.startswith("Provenance.")
    }


def compare(reference: Path, other: Path, days: list[date]) -> list[str]:
    """Differences between two homes' published days (empty: byte-identical)."""
    problems = []
    for day in days:
        want, got = published_files(reference, day), published_files(other, day)
        if want != got:
            missing = sorted(set(want) - set(got))[:3]
            extra = sorted(set(got) - set(want))[:3]
            problems.append(f"{day}: files only in the reference {missing}, only here {extra}")
    return problems


if __name__ == "__main__":
    home, first, last, strategy, label = sys.argv[1:6]
    ok = run(Path(home), date.fromisoformat(first), date.fromisoformat(last), strategy,
             Path(home) / f"dagster-{label}")  # fmt: skip
    print("done" if ok else "failed", flush=True)
    sys.exit(0 if ok else 1)
