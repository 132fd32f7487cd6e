"""The record store: people, their records, what has been synced, and what must be published.

One `RecordStore` per process and database (thread-safe). The invariant it keeps: a sync commits a
person's records, the coverage it fetched and the day partitions it changed in ONE transaction,
under that person's lock, so coverage never claims data the store does not hold and no change is
ever left unpublished (docs/sync.md).

`RecordStore` is the one object the rest of the product uses; this module opens the database and
gives transactions, and its methods come from one mixin per table group, each in its own module:

| module | tables | e.g. |
|---|---|---|
| store_people.py | users | upsert_user, people, users, set_zone, set_state |
| store_records.py | series_chunks, measurements | commit, read_records, delete_before |
| store_coverage.py | coverage | uncover, coverage, last_synced |
| store_type_status.py | type_status | record_errors, refused_types, type_statuses |
| store_day_versions.py | day_versions | day_versions, mark_published, unpublished_days |
| store_cursors.py | provider_cursors | cursors, cursor, set_cursor |
| store_aggregates.py | aggregates | replace_aggregates, read_aggregates |

store_base.py declares what the mixins are typed against (the engine, `write`, `read`, `upsert`,
and the few methods one group calls on another). record_tables.py below them encodes a batch
into the record tables' rows and reads them back. The names importers know stay importable from
here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import from_us
from ohx_dagster.storage import db, migrate
from ohx_dagster.storage.schema import users
from ohx_dagster.storage.store_aggregates import AggregatesMixin
from ohx_dagster.storage.store_coverage import CoverageMixin
from ohx_dagster.storage.store_cursors import CursorsMixin
from ohx_dagster.storage.store_day_versions import DayVersionsMixin
from ohx_dagster.storage.store_people import (
    ACTIVE,
    DISCONNECTED,
    NEEDS_REAUTHORIZATION,
    PeopleMixin,
    PersonRow,
)
from ohx_dagster.storage.store_records import CommitReport, RecordsMixin, days_touched
from ohx_dagster.storage.store_type_status import TypeStatusMixin, config_hash

__all__ = [
    "ACTIVE",
    "DISCONNECTED",
    "NEEDS_REAUTHORIZATION",
    "CommitReport",
    "PersonRow",
    "RecordStore",
    "config_hash",
    "days_touched",
    "history_start",
    "users",  # the table, as before the split (tests/receiver/test_connect.py)
]


class RecordStore(
    PeopleMixin,
    RecordsMixin,
    CoverageMixin,
    TypeStatusMixin,
    DayVersionsMixin,
    CursorsMixin,
    AggregatesMixin,
):
    def __init__(self, url: str, *, migrate_schema: bool | None = None) -> None:
        self.url = url
        self.engine = db.create_engine(url)
        self._insert = db.insert_for(self.engine)
        allowed = db.auto_migrate_default(url) if migrate_schema is None else migrate_schema
        migrate.ensure(self.engine, url, migrate=allowed)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with db.write(self.engine) as conn:
            yield conn

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        with db.read(self.engine, snapshot=snapshot) as conn:
            yield conn

    def upsert(self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        db.upsert(conn, table, rows)


def history_start(config: HealthSyncConfig, connected_at_us: int, now: datetime) -> datetime:
    """Where an automated sync's goal begins for a person: their lookback before connecting,
    never earlier than their retention period allows (what retention deletes is not re-fetched)."""
    lookback = from_us(connected_at_us) - timedelta(days=config.lookback_days)
    return max(lookback, now - timedelta(days=config.retention_days))
