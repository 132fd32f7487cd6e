"""What the benchmarks share: timers, the machine, simulated heart rate, raw bulk loads, PostgreSQL.

A raw bulk load is the baseline every storage figure is measured against, in the same run and on
the same database: the samples as rows of a plain table keyed by (user, ts), loaded the fastest
plain way each database has (SQLite: `executemany` of an upsert in one transaction; PostgreSQL:
`COPY`). Its rows are built before the clock starts, so the baseline is the load alone.
"""

from __future__ import annotations

import io
import itertools
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from faults.backends import create_database, postgres_server
from ohx_dagster.core.models import DateRange, HealthDataType
from ohx_dagster.providers.simulated import SimulatedSource

REPO = Path(__file__).resolve().parents[1]
# A fixed past day: the simulator is deterministic, so every run measures the same samples.
DAY = date(2025, 3, 4)


@dataclass
class Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """Wall and CPU seconds of this process (all its threads) spent inside the block."""
    result = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    yield result
    result.wall_s = time.perf_counter() - wall
    result.cpu_s = time.process_time() - cpu


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "loadavg": os.getloadavg()}


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def heart_rate(samples: int, *, start: date = DAY, user: int = 0) -> pd.DataFrame:
    """`samples` seconds of one simulated person's 1 Hz heart rate, as a record batch."""
    source = SimulatedSource(user + 1, hr_hz=1)
    config = source.discover_users()[user]
    first = day_start(start)
    window = DateRange(first, first + timedelta(seconds=samples))
    batch = source.fetch(config, [HealthDataType.HEART_RATE], window)
    assert len(batch) == samples, (len(batch), samples)
    return batch


def batch_rows(batch: pd.DataFrame) -> list[tuple[str, str, int, float]]:
    """(user, type, epoch us, value) tuples of a record batch: the rows a raw load writes."""
    ts = batch["ts"].dt.as_unit("us").astype("int64").to_numpy()
    return list(
        zip(
            batch["user_id"].tolist(),
            batch["data_type"].tolist(),
            ts.tolist(),
            batch["value"].astype("float64").tolist(),
            strict=True,
        )
    )


# -- SQLite ---------------------------------------------------------------------------------------

PLAIN_SQLITE = (
    "CREATE TABLE samples (user_id TEXT NOT NULL, data_type TEXT NOT NULL, ts_us INTEGER NOT NULL,"
    " value REAL, PRIMARY KEY (user_id, data_type, ts_us))"
)
UPSERT_SQLITE = (
    "INSERT INTO samples VALUES (?, ?, ?, ?) "
    "ON CONFLICT (user_id, data_type, ts_us) DO UPDATE SET value = excluded.value"
)


def sqlite_bulk_load(path: Path, rows: Sequence[tuple]) -> Timing:
    """The rows upserted into a fresh plain SQLite table with `executemany`, one transaction
    (WAL and synchronous=NORMAL, as the store opens SQLite)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(PLAIN_SQLITE)
    with timed() as timing:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(UPSERT_SQLITE, rows)
        connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return timing


def sqlite_bytes(path: Path, tables: Sequence[str]) -> int:
    """Bytes of the tables and their indexes in a SQLite file (its pages, from dbstat)."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    names = ", ".join(f"'{t}'" for t in tables)
    query = (
        f"SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ({names}) OR name IN "
        f"(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ({names}))"
    )
    (size,) = connection.execute(query).fetchone()
    connection.close()
    return int(size)


# -- PostgreSQL -----------------------------------------------------------------------------------


def postgres() -> AbstractContextManager[str]:
    """A real PostgreSQL server for the benchmark, as the fault suite starts one; yields its
    admin URL with the pinned driver."""
    return postgres_server(prefix="ohx-bench-pg-")


_DATABASES = itertools.count(1)


def fresh_database(admin_url: str) -> str:
    """A new empty database on the server, as a plain postgresql:// URL."""
    return create_database(admin_url, f"ohx_bench_{os.getpid()}_{next(_DATABASES)}")


def pg_connect(url: str) -> Any:
    import psycopg2

    parsed = sa.make_url(url)
    return psycopg2.connect(
        dbname=parsed.database, user=parsed.username, host=parsed.query.get("host")
    )


def copy_text(rows: Sequence[tuple]) -> str:
    """The rows as COPY's text format (built before the clock starts)."""
    return "".join(f"{u}\t{t}\t{ts}\t{v!r}\n" for u, t, ts, v in rows)


def pg_bulk_load(url: str, text: str) -> Timing:
    """COPY of the rows into a fresh plain table (user, type, ts) in one transaction."""
    connection = pg_connect(url)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE samples (user_id text NOT NULL, data_type text NOT NULL, ts_us bigint "
            "NOT NULL, value double precision, PRIMARY KEY (user_id, data_type, ts_us))"
        )
    connection.commit()
    with timed() as timing, connection.cursor() as cursor:
        cursor.copy_expert("COPY samples FROM STDIN", io.StringIO(text))
        connection.commit()
    connection.close()
    return timing


def pg_bytes(url: str, table: str) -> int:
    """pg_total_relation_size: the table with its TOAST and indexes."""
    connection = pg_connect(url)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size(%s)", (table,))
        (size,) = cursor.fetchone()
    connection.close()
    return int(size)


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float)))
