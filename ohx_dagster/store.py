"""The record store: records, sync state, users and aggregates on SQLAlchemy Core.

SQLite (WAL, one writer at a time with BEGIN IMMEDIATE and a busy timeout) is the embedded
default; the same statements run on PostgreSQL. Every write is an idempotent upsert on its natural
key, so re-running a partition, overlapping windows and duplicate webhooks change nothing twice.
Times are stored as integer microseconds since the epoch (UTC): exact, portable and fast to compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ohx_dagster.errors import ConfigError
from ohx_dagster.models import DateRange, HealthSyncConfig
from ohx_dagster.records import COLUMNS, normalize

WRITE_CHUNK: Final = 20_000
SCHEMA_LOCK_KEY: Final = 0x6F6878  # "ohx": PostgreSQL advisory lock held while creating tables

metadata = sa.MetaData()

health_records = sa.Table(
    "health_records",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("data_type", sa.String(32), primary_key=True),
    sa.Column("ts_us", sa.BigInteger, primary_key=True),
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("utc_offset_min", sa.Integer),
    sa.Column("value", sa.Float),
    sa.Column("diastolic", sa.Float),
    sa.Column("unit", sa.String(16), nullable=False),
    sa.Column("samples", sa.Text),
    sa.Column("sampling_rate_hz", sa.Float),
    sa.Column("duration_s", sa.Float),
    sa.Column("method", sa.String(16), nullable=False, default="device"),
    sa.Column("context", sa.String(32), nullable=False, default=""),
    sa.Column("ingested_at_us", sa.BigInteger, nullable=False),
)
sa.Index("ix_records_window", health_records.c.provider, health_records.c.ts_us)

sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("data_type", sa.String(32), primary_key=True),
    sa.Column("last_synced_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("connected", sa.Boolean, nullable=False, default=True),
    sa.Column("connected_at_us", sa.BigInteger, nullable=False),
)

aggregates = sa.Table(
    "aggregates",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("data_type", sa.String(32), primary_key=True),
    sa.Column("level", sa.String(16), primary_key=True),
    sa.Column("bucket_start_us", sa.BigInteger, primary_key=True),
    sa.Column("bucket_end_us", sa.BigInteger, nullable=False),
    sa.Column("utc_offset_min", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("min", sa.Float),
    sa.Column("max", sa.Float),
    sa.Column("mean", sa.Float),
    sa.Column("sum", sa.Float),
    sa.Column("diastolic_min", sa.Float),
    sa.Column("diastolic_max", sa.Float),
    sa.Column("diastolic_mean", sa.Float),
    sa.Column("unit", sa.String(16), nullable=False),
)
sa.Index(
    "ix_aggregates_window", aggregates.c.provider, aggregates.c.level, aggregates.c.bucket_start_us
)

AGGREGATE_COLUMNS: Final[list[str]] = [c.name for c in aggregates.columns]


def to_us(moment: datetime) -> int:
    """Exact integer microseconds since the epoch (float timestamps lose the last digits)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def now_us() -> int:
    return to_us(datetime.now(UTC))


def _insert_for(engine: Engine) -> Any:
    if engine.dialect.name == "sqlite":
        return sqlite.insert
    if engine.dialect.name == "postgresql":
        return postgresql.insert
    raise ConfigError(
        f"database {engine.dialect.name!r} is not supported: use sqlite or postgresql"
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock up front: two deferred transactions that both upgrade to
        # writing would deadlock, and SQLite would fail one of them with "database is locked".
        immediate = connection.get_execution_options().get("ohx_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _sqlite_pragmas(engine)
        return engine
    if url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the pinned driver is psycopg2.
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        # SQLAlchemy 2.1 does not batch INSERT .. ON CONFLICT (no insertmanyvalues): without
        # execute_batch every upserted row would be its own round trip.
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            executemany_mode="values_plus_batch",
            executemany_batch_page_size=1000,
        )
    raise ConfigError(
        f"OHX_DATABASE_URL={url!r}: expected sqlite:///<path> or postgresql://user@host/db"
    )


class RecordStore:
    """All persistent product state. Thread-safe; one instance per process is enough."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._insert = _insert_for(self.engine)
        # Several runs may open a fresh store at once: create the tables inside one write
        # transaction (a deferred SQLite transaction that upgrades to writing fails "database is
        # locked"; two PostgreSQL sessions would both try CREATE TABLE).
        with self.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (BEGIN IMMEDIATE on SQLite)."""
        with self.engine.connect().execution_options(ohx_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def upsert(self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows, replacing the non-key columns of rows whose primary key exists."""
        if not rows:
            return
        statement = self._insert(table)
        keys = [c.name for c in table.primary_key.columns]
        updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
        conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), rows)

    # -- records -------------------------------------------------------------------------------

    def upsert_records(self, batch: pd.DataFrame) -> int:
        """Idempotently write a record batch in bulk chunks; returns the number of rows written."""
        if batch.empty:
            return 0
        rows = _record_rows(batch)
        for start in range(0, len(rows), WRITE_CHUNK):
            with self.write() as conn:
                self.upsert(conn, health_records, rows[start : start + WRITE_CHUNK])
        return len(rows)

    def read_records(
        self,
        provider: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
        data_types: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        t = health_records
        query = sa.select(*[c for c in t.columns if c.name != "ingested_at_us"]).where(
            t.c.provider == provider,
            t.c.ts_us >= to_us(window.start),
            t.c.ts_us < to_us(window.end),
        )
        if user_ids is not None:
            query = query.where(t.c.user_id.in_(list(user_ids)))
        if data_types is not None:
            query = query.where(t.c.data_type.in_([str(d) for d in data_types]))
        query = query.order_by(t.c.user_id, t.c.data_type, t.c.ts_us, t.c.device_id)
        with self.read() as conn:
            result = conn.execute(query)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        if frame.empty:
            return normalize(frame)
        frame["ts"] = pd.to_datetime(frame.pop("ts_us"), unit="us", utc=True)
        # pandas 3 reads the text column as strings with NA (not None) for the missing ones.
        frame["samples"] = [
            orjson.loads(s) if isinstance(s, str) else None for s in frame["samples"]
        ]
        return normalize(frame)

    def count_records(self, provider: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(health_records)
        if provider is not None:
            query = query.where(health_records.c.provider == provider)
        with self.read() as conn:
            return int(conn.execute(query).scalar_one())

    # -- sync state ----------------------------------------------------------------------------

    def advance_sync_state(
        self, provider: str, user_id: str, data_types: Iterable[str], synced_to: datetime
    ) -> None:
        """Move last-synced forward (never back) for the types; call after the records commit."""
        t = sync_state
        statement = self._insert(t)
        new = statement.excluded.last_synced_us
        rows = [
            {
                "provider": provider,
                "user_id": user_id,
                "data_type": str(data_type),
                "last_synced_us": to_us(synced_to),
                "updated_at_us": now_us(),
            }
            for data_type in data_types
        ]
        if not rows:
            return
        keep_latest = sa.case((new > t.c.last_synced_us, new), else_=t.c.last_synced_us)
        with self.write() as conn:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["provider", "user_id", "data_type"],
                    set_={
                        "last_synced_us": keep_latest,
                        "updated_at_us": statement.excluded.updated_at_us,
                    },
                ),
                rows,
            )

    def last_synced(self, provider: str, user_id: str, data_type: str) -> datetime | None:
        t = sync_state
        query = sa.select(t.c.last_synced_us).where(
            t.c.provider == provider, t.c.user_id == user_id, t.c.data_type == str(data_type)
        )
        with self.read() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return None if value is None else from_us(value)

    def oldest_sync(self, provider: str) -> datetime | None:
        """The least advanced last-synced time of the provider's connected users, any type."""
        s, u = sync_state, users
        query = (
            sa.select(sa.func.min(s.c.last_synced_us))
            .select_from(s.join(u, (s.c.provider == u.c.provider) & (s.c.user_id == u.c.user_id)))
            .where(s.c.provider == provider, u.c.connected.is_(True))
        )
        with self.read() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return None if value is None else from_us(value)

    # -- users ---------------------------------------------------------------------------------

    def upsert_user(self, config: HealthSyncConfig, *, connected: bool = True) -> None:
        row = {
            "provider": config.provider,
            "user_id": config.user_id,
            "config": orjson.dumps(config.to_json()).decode(),
            "connected": connected,
            "connected_at_us": now_us(),
        }
        t = users
        statement = self._insert(t)
        with self.write() as conn:
            # Reconnecting or editing a config keeps the original connection time.
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["provider", "user_id"],
                    set_={
                        "config": statement.excluded.config,
                        "connected": statement.excluded.connected,
                    },
                ),
                [row],
            )

    def add_users(self, configs: Iterable[HealthSyncConfig]) -> int:
        """Register users not yet known; existing users keep their (possibly edited) config."""
        rows = [
            {
                "provider": c.provider,
                "user_id": c.user_id,
                "config": orjson.dumps(c.to_json()).decode(),
                "connected": True,
                "connected_at_us": now_us(),
            }
            for c in configs
        ]
        if not rows:
            return 0
        statement = self._insert(users).on_conflict_do_nothing(
            index_elements=["provider", "user_id"]
        )
        with self.write() as conn:
            return conn.execute(statement, rows).rowcount or 0

    def users(self, provider: str, *, connected_only: bool = True) -> list[HealthSyncConfig]:
        query = sa.select(users.c.config).where(users.c.provider == provider)
        if connected_only:
            query = query.where(users.c.connected.is_(True))
        with self.read() as conn:
            rows = conn.execute(query.order_by(users.c.user_id)).scalars().all()
        return [HealthSyncConfig.from_json(orjson.loads(row)) for row in rows]

    def all_users(self) -> list[HealthSyncConfig]:
        """Every user of every source, connected or not (retention applies to all)."""
        query = sa.select(users.c.config).order_by(users.c.provider, users.c.user_id)
        with self.read() as conn:
            rows = conn.execute(query).scalars().all()
        return [HealthSyncConfig.from_json(orjson.loads(row)) for row in rows]

    def delete_before(self, provider: str, user_id: str, cutoff: datetime) -> tuple[int, int]:
        """Delete a user's records and aggregate buckets older than `cutoff`, in one transaction;
        returns (records, aggregates) deleted."""
        before = to_us(cutoff)
        r, a = health_records, aggregates
        with self.write() as conn:
            records = conn.execute(
                r.delete().where(
                    r.c.provider == provider, r.c.user_id == user_id, r.c.ts_us < before
                )
            ).rowcount
            buckets = conn.execute(
                a.delete().where(
                    a.c.provider == provider, a.c.user_id == user_id, a.c.bucket_end_us <= before
                )
            ).rowcount
        return int(records or 0), int(buckets or 0)

    def user(self, provider: str, user_id: str) -> HealthSyncConfig | None:
        query = sa.select(users.c.config).where(
            users.c.provider == provider, users.c.user_id == user_id
        )
        with self.read() as conn:
            row = conn.execute(query).scalar_one_or_none()
        return None if row is None else HealthSyncConfig.from_json(orjson.loads(row))

    def users_connected_since(self, after_us: int) -> list[tuple[int, HealthSyncConfig]]:
        """Users connected after a point in time, oldest first: what the new-user sensor reads."""
        query = (
            sa.select(users.c.connected_at_us, users.c.config)
            .where(users.c.connected_at_us > after_us, users.c.connected.is_(True))
            .order_by(users.c.connected_at_us, users.c.provider, users.c.user_id)
        )
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [(at, HealthSyncConfig.from_json(orjson.loads(cfg))) for at, cfg in rows]

    # -- aggregates ----------------------------------------------------------------------------

    def upsert_aggregates(self, frame: pd.DataFrame) -> int:
        if frame.empty:
            return 0
        rows = _plain_rows(frame[AGGREGATE_COLUMNS])
        for start in range(0, len(rows), WRITE_CHUNK):
            with self.write() as conn:
                self.upsert(conn, aggregates, rows[start : start + WRITE_CHUNK])
        return len(rows)

    def read_aggregates(
        self,
        provider: str,
        level: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Aggregates of `level` whose bucket starts inside the window (of `user_ids` only)."""
        t = aggregates
        query = sa.select(t).where(
            t.c.provider == provider,
            t.c.level == level,
            t.c.bucket_start_us >= to_us(window.start),
            t.c.bucket_start_us < to_us(window.end),
        )
        if user_ids is not None:
            query = query.where(t.c.user_id.in_(list(user_ids)))
        query = query.order_by(t.c.user_id, t.c.data_type, t.c.bucket_start_us)
        with self.read() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _column_values(column: pd.Series) -> list[Any]:
    """A column as Python values a DB-API driver accepts: NaN/NA -> None, numpy -> Python."""
    values = column.astype("object").where(column.notna(), None)
    return [v.item() if isinstance(v, np.generic) else v for v in values.tolist()]


def _plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts, built column-wise (row-wise conversion was half of a sync's time)."""
    names = list(frame.columns)
    columns = [_column_values(frame[name]) for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _record_rows(batch: pd.DataFrame) -> list[dict[str, Any]]:
    frame = batch[COLUMNS].copy()
    frame["ts_us"] = frame.pop("ts").astype("int64")
    frame["samples"] = [
        None if s is None else orjson.dumps(list(s)).decode() for s in frame["samples"]
    ]
    frame["utc_offset_min"] = frame["utc_offset_min"].astype("object")
    frame["ingested_at_us"] = now_us()
    return _plain_rows(frame)
