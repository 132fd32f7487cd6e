"""An export's samples on disk while it is read and imported: a temporary SQLite file.

Real exports hold 5 to 20 million samples. Held in memory, even as compact columns (about 50
bytes a sample, twice that while checked and reduced for the zone), they took `ohx import` of
6 million heart rates to 700 MiB. The parse (export.py) writes them here in batches instead, so
memory stays the same whatever the number of samples:

| table | one row per | read for |
|---|---|---|
| chunks | (type and unit, UTC day) of a batch: its samples' columns | a sync's window of days |
| days | UTC day holding samples, and their count | the days spanned, the sync calls' sizes |
| observations | (quarter hour, offset): first instant, count | the zone's evidence (zone.py) |
| pressure | blood-pressure half, top-level or child | the halves without their pair |

A chunk holds each column of its samples as the bytes of a NumPy array, in file order (a heart
rate is 27 bytes: instant, offset, value, device, manual, line), so a window is read as a few
blobs, not a row per sample; chunks are indexed by (type and unit, day). Only the days and quarter
hours grow with the span of the export (a day is 16 bytes, a quarter hour about 30), never with
the samples in them. The file lives in a folder of its own under the system's temporary folder
(`TMPDIR`): 157 MB for 6 million heart rates. It is deleted when the source is closed (`ohx
import` does at its end) or garbage-collected, or when the process exits; a process killed with
SIGKILL leaves it behind (`ohx-apple-health-*`).

SQLite's page cache is capped at CACHE_KIB, its sorts spill to temporary files, and no journal is
kept: the file is scratch, rebuilt from the export whenever it is read again.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import numpy as np

CACHE_KIB: Final = 8 * 1024  # SQLite's page cache for the file (its default is 2 MiB)
# Each column and its type on disk; diastolic and duration_s are NULL but for blood pressure and
# steps.
DTYPES: Final = {
    "utc_us": "int64",
    "offset_min": "int16",
    "value": "float64",
    "diastolic": "float64",
    "duration_s": "float64",
    "device": "int32",
    "manual": "int8",
    "line": "int32",
}
_DAY_US: Final = 86_400_000_000
_SCHEMA: Final = f"""
CREATE TABLE chunks (
    key INTEGER NOT NULL, day INTEGER NOT NULL, {", ".join(f"{c} BLOB" for c in DTYPES)}
);
CREATE INDEX chunks_by_day ON chunks (key, day);
CREATE TABLE days (day INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE observations (
    code INTEGER PRIMARY KEY, offset_min INTEGER NOT NULL, first_us INTEGER NOT NULL,
    n INTEGER NOT NULL
);
CREATE TABLE pressure (
    type TEXT NOT NULL, source TEXT NOT NULL, start TEXT NOT NULL, value TEXT NOT NULL,
    child INTEGER NOT NULL
);
"""


def _remove(db: sqlite3.Connection, folder: Path) -> None:
    db.close()
    shutil.rmtree(folder, ignore_errors=True)


class Spill:
    """One export's samples in a temporary SQLite file (see the module docstring). Written by
    one parse, then read by any thread (a lock serialises the reads)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ohx-apple-health-"))
        self._db = sqlite3.connect(
            self.folder / "samples.sqlite", isolation_level=None, check_same_thread=False
        )
        self._closer = weakref.finalize(self, _remove, self._db, self.folder)
        self._lock = threading.Lock()
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            f"cache_size = -{CACHE_KIB}",
            "temp_store = FILE",
            "locking_mode = EXCLUSIVE",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Delete the file (reading it afterwards is an error)."""
        self._closer()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for the writes of a batch (a row at a time is a transaction each)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- written by the parse, inside batch() ------------------------------------------------------

    def write(self, key: int, columns: dict[str, np.ndarray | None]) -> None:
        """Samples of one (type, unit) number `key`, in file order, a chunk per UTC day; a column
        that is None (no diastolic but for blood pressure) is stored as NULL."""
        utc_us = columns["utc_us"]
        assert utc_us is not None
        days = utc_us // _DAY_US
        order = np.argsort(days, kind="stable")  # by day, in file order within each
        found, starts = np.unique(days[order], return_index=True)
        bounds = [*starts.tolist(), len(order)]
        arrays = {
            name: None if column is None else np.ascontiguousarray(column[order], DTYPES[name])
            for name, column in columns.items()
        }
        self._db.executemany(
            f"INSERT INTO chunks (key, day, {', '.join(DTYPES)}) "
            f"VALUES (?, ?, {', '.join('?' * len(DTYPES))})",
            (
                (
                    key,
                    day,
                    *(
                        None if arrays[name] is None else arrays[name][start:end].tobytes()  # type: ignore[index]
                        for name in DTYPES
                    ),
                )
                for day, start, end in zip(found.tolist(), bounds, bounds[1:], strict=False)
            ),
        )

    def count_days(self, days: np.ndarray, counts: np.ndarray) -> None:
        self._db.executemany(
            "INSERT INTO days (day, n) VALUES (?, ?) "
            "ON CONFLICT (day) DO UPDATE SET n = n + excluded.n",
            zip(days.tolist(), counts.tolist(), strict=True),
        )

    def observe(
        self, codes: np.ndarray, offsets: np.ndarray, first_us: np.ndarray, counts: np.ndarray
    ) -> None:
        """(quarter hour, offset) codes with their first instant and count in this batch."""
        self._db.executemany(
            "INSERT INTO observations (code, offset_min, first_us, n) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (code) DO UPDATE SET first_us = min(first_us, excluded.first_us), "
            "n = n + excluded.n",
            zip(codes.tolist(), offsets.tolist(), first_us.tolist(), counts.tolist(), strict=True),
        )

    def pressure(self, halves: Iterable[tuple[str, str, str, str, int]]) -> None:
        """Blood-pressure halves: (type, sourceName, startDate, value, 1 for a correlation's
        child, 0 for a top-level record)."""
        self._db.executemany("INSERT INTO pressure VALUES (?, ?, ?, ?, ?)", halves)

    # -- read ----------------------------------------------------------------------------------

    def read(
        self, key: int, start_us: int | None = None, end_us: int | None = None
    ) -> dict[str, np.ndarray]:
        """The samples of `key` (in [start_us, end_us) when given) by UTC day, in file order
        within a day, as arrays (diastolic: NaN but for blood pressure)."""
        where, args = "key = ?", [key]
        if start_us is not None and end_us is not None:
            where += " AND day >= ? AND day <= ?"
            args += [start_us // _DAY_US, (end_us - 1) // _DAY_US]
        with self._lock:
            chunks = self._db.execute(
                f"SELECT {', '.join(DTYPES)} FROM chunks WHERE {where} ORDER BY day, rowid", args
            ).fetchall()
        utc_us = np.concatenate(
            [np.frombuffer(c[0], "int64") for c in chunks] or [np.empty(0, "int64")]
        )
        arrays = {}
        for at, (name, dtype) in enumerate(DTYPES.items()):
            parts = [
                np.full(len(c[0]) // 8, np.nan) if c[at] is None else np.frombuffer(c[at], dtype)
                for c in chunks
            ]
            arrays[name] = np.concatenate(parts) if parts else np.empty(0, dtype)
        if start_us is not None and end_us is not None:
            inside = (utc_us >= start_us) & (utc_us < end_us)
            arrays = {name: column[inside] for name, column in arrays.items()}
        return arrays

    def days(self) -> tuple[np.ndarray, np.ndarray]:
        """The UTC days holding samples (days since the epoch), sorted, and their counts."""
        with self._lock:
            rows = self._db.execute("SELECT day, n FROM days ORDER BY day").fetchall()
        days, counts = zip(*rows, strict=True) if rows else ((), ())
        return np.array(days, dtype="int64"), np.array(counts, dtype="int64")

    def observations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first instant, offset, count) of every (quarter hour, offset), by their code."""
        with self._lock:
            rows = self._db.execute(
                "SELECT first_us, offset_min, n FROM observations ORDER BY code"
            ).fetchall()
        columns = zip(*rows, strict=True) if rows else ((), (), ())
        first, offsets, counts = (np.array(c, dtype="int64") for c in columns)
        return first, offsets, counts

    def count_observations(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM observations").fetchone()[0])

    def unpaired_pressure(self) -> int:
        """Top-level halves beyond the correlation children that repeat them, per identity."""
        with self._lock:
            found = self._db.execute(
                "SELECT sum(max(halves - children, 0)) FROM (SELECT sum(child = 0) AS halves, "
                "sum(child) AS children FROM pressure GROUP BY type, source, start, value)"
            ).fetchone()[0]
        return int(found or 0)
