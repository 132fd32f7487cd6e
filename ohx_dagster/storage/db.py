"""The database underneath the store: engines, transactions, locks, bulk writes, schema revision.

SQLite (WAL; writers take the lock up front with BEGIN IMMEDIATE and wait for it up to five
minutes) is the embedded default; PostgreSQL runs the same statements, and bulk writes go through
COPY into a temporary staging table and one INSERT .. ON CONFLICT from it.

Locks: a person's data is written under that person's lock (`lock_person`): a transaction-level
advisory lock on PostgreSQL, the database write lock on SQLite. Two runs that merge the same hour
of the same person's heart rate therefore merge one after the other and neither loses samples.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ohx_dagster.config.storage import StorageSettings
from ohx_dagster.core.errors import ConfigError

# How long a writer waits for SQLite's write lock before it fails: long enough that a busy machine
# (a backfill, an import and the sensors at once on two cores) queues writers instead of failing
# them (with a minute, tests/storage/test_store.py's four writer processes once failed with
# "database is locked" on a loaded machine).
SQLITE_BUSY_TIMEOUT_MS: Final = 300_000


def redacted(url: str) -> str:
    """The URL without its password (for messages and metadata)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"


def _sqlite_pragmas(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock up front: two deferred transactions that both upgrade to
        # writing would deadlock, and SQLite would fail one of them with "database is locked".
        immediate = connection.get_execution_options().get("ohx_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# A database error's message never shows the statement's parameters: they hold people's ids
# (and values), and such messages reach log lines (the receiver logs an inbox failure).
HIDE_PARAMETERS: Final = True


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            hide_parameters=HIDE_PARAMETERS,
        )
        _sqlite_pragmas(engine)
        return engine
    if url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the pinned driver is psycopg2.
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            executemany_mode="values_plus_batch",
            executemany_batch_page_size=1000,
            hide_parameters=HIDE_PARAMETERS,
        )
    raise ConfigError(
        f"OHX_DATABASE_URL={redacted(url)!r}: expected sqlite:///<path> or "
        "postgresql://user:password@host/db"
    )


def insert_for(engine: Engine | Connection) -> Any:
    """The dialect's INSERT (ON CONFLICT support)."""
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite.insert
    if name == "postgresql":
        return postgresql.insert
    raise ConfigError(f"database {name!r} is not supported: use sqlite or postgresql")


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One write transaction (BEGIN IMMEDIATE on SQLite)."""
    with engine.connect().execution_options(ohx_write=True) as conn, conn.begin():
        yield conn


@contextmanager
def read(engine: Engine, *, snapshot: bool = False) -> Iterator[Connection]:
    """A read transaction; `snapshot`: every statement sees the same committed state (SQLite's
    read transactions always do; PostgreSQL needs REPEATABLE READ)."""
    conn = engine.connect()
    if snapshot and engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    with conn, conn.begin():
        yield conn


def text_length(column: sa.Column[Any]) -> int:
    """The length a VARCHAR column declares: the most characters a value may hold."""
    kind = column.type
    assert isinstance(kind, sa.String) and kind.length is not None, column.name
    return kind.length


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock(conn: Connection, *parts: str) -> None:
    """Hold a named lock until the transaction ends (SQLite: the write lock already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(*parts))))


def upsert(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (one per primary key), replacing the non-key columns of rows whose key exists.
    PostgreSQL: COPY into a staging table, then one INSERT .. SELECT .. ON CONFLICT."""
    if not rows:
        return
    if conn.dialect.name == "postgresql" and len(rows) > 1:
        _copy_upsert(conn, table, rows)
        return
    statement = insert_for(conn)(table)
    keys = [c.name for c in table.primary_key.columns]
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), list(rows))


def plain_rows(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as dicts of Python values a DB-API driver accepts (NaN/NA -> None),
    built column by column (row by row was half of a write's time)."""
    names = list(frame.columns)
    columns = []
    for name in names:
        series = frame[name]
        numeric = isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf"
        values = series.to_numpy() if numeric else series.to_numpy(dtype=object)
        if numeric and values.dtype.kind != "f":  # numpy numbers: tolist() gives Python values
            columns.append(values.tolist())
        elif numeric:
            columns.append([None if v != v else v for v in values.tolist()])
        else:
            missing = series.isna().to_numpy()
            columns.append(
                [
                    None if gone else (v.item() if hasattr(v, "item") else v)
                    for v, gone in zip(values.tolist(), missing.tolist(), strict=True)
                ]
            )
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _copy_value(value: Any) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _copy_upsert(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    names = [c.name for c in table.columns]
    staging = f"staging_{table.name}"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([_copy_value(row.get(name)) for name in names])
    buffer.seek(0)
    driver = conn.connection.driver_connection
    assert driver is not None  # a connection in use holds its DBAPI connection
    cursor = driver.cursor()  # psycopg2: copy_expert
    cursor.execute(
        f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" '
        f'(LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
    )
    columns = ", ".join(f'"{n}"' for n in names)
    cursor.copy_expert(
        f"COPY \"{staging}\" ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer
    )
    keys = [c.name for c in table.primary_key.columns]
    updates = ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in names if n not in keys)
    conflict = ", ".join(f'"{k}"' for k in keys)
    cursor.execute(
        f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM "{staging}" '
        f"ON CONFLICT ({conflict}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
    )
    cursor.execute(f'DELETE FROM "{staging}"')
    cursor.close()


def auto_migrate_default(url: str) -> bool:
    """Whether opening the store may migrate its schema: yes for the embedded SQLite default, no
    for a server database (the deployment runs `ohx db upgrade` first) unless
    OHX_DB_AUTO_MIGRATE=1 says so."""
    return StorageSettings.from_env().auto_migrate(url)
