"""One run of the job in its own process (what a Dagster run worker does for a partition): sync the
simulated source for the days, then publish them. Used for two runs at once in two processes, and
for kill -9 in the middle of a run.

    python -m faults.worker '{"url": ..., "fhir": ..., "days": [...], "strategy": ..., "now": ...,
                              "people": 2, "seed": 7, "hr_hz": 0.1, "horizon_s": 3600}'

Prints "ready" once imported (the parent times its kill from there) and "done" at the end.
"""

from __future__ import annotations

import sys
from datetime import date, datetime, timedelta

import orjson


def main(argument: str) -> int:
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.registry import SUPPORTED_TYPES
    from ohx_dagster.providers.simulated import SimulatedSource
    from ohx_dagster.publish.partitions import publish_partition
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.fetch import sync_partition
    from ohx_dagster.sync.shards import Shard
    from ohx_dagster.sync.strategies import SyncStrategy

    job = orjson.loads(argument)
    now = datetime.fromisoformat(job["now"])
    store = RecordStore(job["url"], migrate_schema=False)
    output = FhirOutput(job["fhir"])
    reader = SimulatedSource(job["people"], seed=job["seed"], clock=lambda: now, hr_hz=job["hr_hz"])
    horizon = timedelta(seconds=job["horizon_s"])
    source = Windowed(reader, SUPPORTED_TYPES["simulated"], horizon)
    days = [date.fromisoformat(d) for d in job["days"]]
    strategy = SyncStrategy(job["strategy"])
    print("ready", flush=True)
    sync_partition(source, store, days, strategy=strategy, now=now)
    for day in days:
        publish_partition(
            store,
            output,
            provider="simulated",
            key="simulated",
            shard=Shard("simulated"),
            day=day,
            scope=None,
            now=now,
            horizon=horizon,
            force=strategy is SyncStrategy.PARTITION,
            run_id=f"worker-{job.get('label', '')}",
        )
    store.dispose()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
