"""Bulk Data export (issue 22): `Patient/$export` of 100 people x 1 day at 1 Hz heart rate, as the
Dagster run a deployment launches for it (`dagster job execute -j fhir_export`, the run the
fhir_exports sensor asks for), against reading the same published NDJSON files directly.

Setup, not timed: the simulated people synced and published for DAY in a store of the bench's own
OHX_HOME; one export request per measured run, kicked off before the first one and at least
SETTLE_S before it starts (a run waits that long after its kick-off).

Measured, each as its own process, in turns (export, baseline, export, ...), the median of each:
wall clock, CPU (user + system) and peak RSS, from the child's own rusage (os.wait4, in a small
process that starts it):
- export: the `fhir_export` run (Dagster's process start and the run's fixed cost included);
- baseline: `python -c BASELINE DIR OUT`: read every NDJSON file the day's manifest names, parse
  each line and write the resources out by type, nothing else (plain Python and orjson);
- the empty run of bench/process.py is the fixed cost part of the export's figure.

    .venv/bin/python -m bench.export [--people 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import DAY, REPO, day_start

PYTHON = str(REPO / ".venv" / "bin" / "python")
DAGSTER = str(REPO / ".venv" / "bin" / "dagster")
MIB = 1024 * 1024


# A small Python process starts the measured one and reports its rusage: a child's peak RSS
# starts at its parent's RSS when it forks (Linux keeps the old mm's high-water mark across exec),
# and this bench process holds the published store's setup.
_WRAPPER = """
import json, os, subprocess, sys, time
wall = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - wall
code = os.waitstatus_to_exitcode(status)
err = child.stderr.read().decode()[-2000:]
child.returncode = code
print(json.dumps({"code": code, "err": err, "wall_s": wall,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}))
"""


def _child(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall, CPU and peak RSS of one process."""
    done = subprocess.run([PYTHON, "-c", _WRAPPER, *command], env=env, cwd=REPO,
                          capture_output=True, text=True, check=True)  # fmt: skip
    found = json.loads(done.stdout)
    if found.pop("code") != 0:
        tail = found["err"].strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {' | '.join(tail)}")
    found.pop("err")
    return found


def _publish(home: Path, people: int) -> dict[str, Any]:
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.registry import RESYNC_HORIZON, SUPPORTED_TYPES
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.publish.partitions import publish_partition, validate_sample
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.fetch import sync_partition
    from ohx_dagster.sync.shards import Shard

    now = day_start(DAY) + timedelta(days=2)
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}", migrate_schema=True)
    simulator = SimulatedSource(people, hr_hz=1, clock=lambda: now)
    horizon = RESYNC_HORIZON["simulated"]
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], horizon)
    store.add_users(simulator.discover_users())
    sync_partition(source, store, DAY, now=now)
    report = publish_partition(store, FhirOutput(str(home / "fhir")), provider="simulated",
                               key="simulated", shard=Shard("simulated"), day=DAY, scope=None,
                               now=now, horizon=horizon, validate=validate_sample)  # fmt: skip
    store.dispose()
    return {"resources": report.resources}


# The baseline's whole program: read the day's published files (those its manifest names) and
# write their resources out by type, with plain Python and orjson (no import of the product or
# of bench.common, which loads pandas).
BASELINE = """
import sys
from collections import defaultdict
from pathlib import Path
import orjson
directory, out = Path(sys.argv[1]), Path(sys.argv[2])
manifest = orjson.loads((directory / "manifest.json").read_bytes())
by_type = defaultdict(list)
for entry in manifest["output"]:
    with open(directory / entry["url"].rsplit("/", 1)[-1], "rb") as lines:
        for line in lines:
            resource = orjson.loads(line)
            by_type[resource["resourceType"]].append(orjson.dumps(resource) + b"\\n")
out.mkdir(parents=True, exist_ok=True)
for resource_type, found in by_type.items():
    (out / f"{resource_type}.ndjson").write_bytes(b"".join(found))
"""


def run(people: int = 100, repeats: int = 3) -> dict[str, Any]:
    from ohx_dagster.fhirapi import bulk
    from ohx_dagster.storage.store import RecordStore

    with tempfile.TemporaryDirectory(prefix="ohx-bench-export-") as folder:
        home = Path(folder) / "ohx"
        home.mkdir()
        started = time.perf_counter()
        setup = _publish(home, people)
        setup_s = time.perf_counter() - started
        dagster_home = Path(folder) / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").touch()
        env = {**os.environ, "OHX_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
               "OHX_SIMULATED_USERS": "0",
               "OHX_PARTITIONS_START": DAY.replace(day=1).isoformat()}  # fmt: skip
        store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
        exports = [
            bulk.kick_off(store, client_id="bench", group_id=None, types=bulk.TYPES,
                          since_us=None, request="urn:bench").export_id
            for _ in range(repeats + 1)
        ]  # fmt: skip
        time.sleep(bulk.SETTLE_S)
        samples: dict[str, list[dict[str, float]]] = {"export": [], "baseline": []}
        for index, export_id in enumerate(exports):
            config = Path(folder) / f"{export_id}.json"
            config.write_text(json.dumps(
                {"ops": {"export_fhir": {"config": {"export_id": export_id}}}}))  # fmt: skip
            exported = _child([DAGSTER, "job", "execute", "-m", "ohx_dagster.definitions",
                               "-j", "fhir_export", "-c", str(config)], env)  # fmt: skip
            day = home / "fhir" / DAY.isoformat() / "simulated"
            read = _child([PYTHON, "-c", BASELINE, str(day), str(Path(folder) / f"plain-{index}")],
                          env)  # fmt: skip
            if index:  # the first pair warms the file cache
                samples["export"].append(exported)
                samples["baseline"].append(read)
        done = bulk.get(store, exports[-1])
        assert done is not None and done.state == "complete", done
        count = sum(int(f["count"]) for f in done.output)
        store.dispose()
    median = {
        name: {k: statistics.median(s[k] for s in runs) for k in ("wall_s", "cpu_s", "peak_mib")}
        for name, runs in samples.items()
    }
    return {
        "people": people,
        "resources": count,
        "published_resources": setup["resources"],
        "setup_s": setup_s,
        "repeats": repeats,
        "median": median,
        "samples": samples,
        "wall_ratio": median["export"]["wall_s"] / median["baseline"]["wall_s"],
        "cpu_ratio": median["export"]["cpu_s"] / median["baseline"]["cpu_s"],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report's row (bench/run.py)."""
    export, base = result["median"]["export"], result["median"]["baseline"]
    return [
        (
            f"Bulk Data `Patient/$export` of {result['people']} people x 1 day at 1 Hz "
            f"({result['resources']:,} resources) as its `fhir_export` Dagster run process",
            f"{export['wall_s']:.1f} s wall, {export['cpu_s']:.2f} CPU-s, peak "
            f"{export['peak_mib']:.0f} MiB",
            f"reading the same NDJSON and writing it by type, as a process: "
            f"{base['wall_s']:.1f} s wall, {base['cpu_s']:.2f} CPU-s, peak "
            f"{base['peak_mib']:.0f} MiB",
            f"{result['wall_ratio']:.2f}x wall, {result['cpu_ratio']:.2f}x CPU",
            "-",
            "",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.people, args.repeats)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
