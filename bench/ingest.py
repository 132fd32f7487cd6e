"""Ingest and bytes stored: the store's write path against a raw bulk load of the same samples.

The batch: one simulated person's 1 Hz heart rate, 1,000,000 samples (11.6 days) as the record batch
a provider fetch returns. The store's figure is `RecordStore.commit` of it, exactly as a sync
commits a fetch (records, coverage, changed days and cursors in one transaction) into a fresh
database; the baseline is the same samples as rows of a plain (user, type, ts) table, loaded with
`executemany` of an upsert (SQLite) or `COPY` (PostgreSQL) into a fresh database on the same server.
Each is the median of `repeats` loads. Bytes: the `series_chunks` table with its indexes after the
commit (SQLite: its pages from dbstat; PostgreSQL: pg_total_relation_size), per sample, next to the
plain table's bytes per row; once more for heart rate that jumps -3..+3 beats a second (the
simulator's drifts slowly, which compresses better than a real sensor's).

    .venv/bin/python -m bench.ingest [--samples 1000000] [--repeats 3] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from bench.common import (
    batch_rows,
    copy_text,
    fresh_database,
    heart_rate,
    median,
    pg_bulk_load,
    pg_bytes,
    postgres,
    sqlite_bulk_load,
    sqlite_bytes,
    timed,
)
from ohx_dagster.core.times import to_us
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.storage.store import RecordStore

SAMPLES = 1_000_000


def store_commit(url: str, batch: pd.DataFrame) -> tuple[float, RecordStore]:
    """Seconds (wall) of one commit of the batch into a fresh store at `url`."""
    store = RecordStore(url, migrate_schema=True)
    user = batch["user_id"].iloc[0]
    store.add_users(SimulatedSource(1).discover_users())
    covered = {"heart_rate": [(to_us(batch["ts"].min()), to_us(batch["ts"].max()) + 1)]}
    with timed() as timing:
        store.commit("simulated", user, ZoneInfo("UTC"), batch, covered=covered, replace=covered)
    assert store.count_records("simulated") == len(batch)
    return timing.wall_s, store


def _jittered(values: np.ndarray) -> np.ndarray:
    """Whole beats per minute with a step of -3..+3 every second (a seeded generator)."""
    steps = np.random.default_rng(10).integers(-3, 4, values.size)
    return np.clip(values + steps, 40, 185).astype("float64")


def run(samples: int = SAMPLES, repeats: int = 3, with_postgres: bool = True) -> dict[str, Any]:
    batch = heart_rate(samples)
    rows = batch_rows(batch)
    result: dict[str, Any] = {"samples": samples, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="ohx-bench-ingest-") as tmp:
        home = Path(tmp)
        store_s, raw_s = [], []
        for i in range(repeats):
            path = home / f"store-{i}.db"
            seconds, store = store_commit(f"sqlite:///{path}", batch)
            store.dispose()
            store_s.append(seconds)
            raw_s.append(sqlite_bulk_load(home / f"raw-{i}.db", rows).wall_s)
        result["sqlite"] = {
            "store_s": median(store_s),
            "raw_s": median(raw_s),
            "store_bytes": sqlite_bytes(home / "store-0.db", ["series_chunks"]),
            "raw_bytes": sqlite_bytes(home / "raw-0.db", ["samples"]),
        }
        # The simulator's heart rate drifts slowly; a real 1 Hz sensor jumps a few beats a second.
        noisy = batch.assign(value=_jittered(batch["value"].to_numpy()))
        seconds, store = store_commit(f"sqlite:///{home / 'noisy.db'}", noisy)
        store.dispose()
        sqlite_bulk_load(home / "noisy-raw.db", batch_rows(noisy))
        result["noisy"] = {
            "store_s": seconds,
            "store_bytes": sqlite_bytes(home / "noisy.db", ["series_chunks"]),
            "raw_bytes": sqlite_bytes(home / "noisy-raw.db", ["samples"]),
        }
    if with_postgres:
        text = copy_text(rows)
        with postgres() as admin:
            store_s, raw_s = [], []
            store_bytes = raw_bytes = 0
            for _ in range(repeats):
                url = fresh_database(admin)
                seconds, store = store_commit(url, batch)
                store.dispose()
                store_s.append(seconds)
                store_bytes = pg_bytes(url, "series_chunks")
                raw_url = fresh_database(admin)
                raw_s.append(pg_bulk_load(raw_url, text).wall_s)
                raw_bytes = pg_bytes(raw_url, "samples")
            result["postgresql"] = {
                "store_s": median(store_s),
                "raw_s": median(raw_s),
                "store_bytes": store_bytes,
                "raw_bytes": raw_bytes,
            }
    for figures in (result.get("sqlite"), result.get("postgresql"), result.get("noisy")):
        if figures:
            if "raw_s" in figures:
                figures["ratio"] = figures["store_s"] / figures["raw_s"]
            figures["store_bytes_per_sample"] = figures["store_bytes"] / samples
            figures["raw_bytes_per_row"] = figures["raw_bytes"] / samples
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.samples, args.repeats, not args.no_postgres), indent=2))


if __name__ == "__main__":
    main()
