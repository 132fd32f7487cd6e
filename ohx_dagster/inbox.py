"""The durable webhook inbox: provider notifications, committed before they are acknowledged.

The webhook receiver adds events; the webhook sensor reads them in id order after its cursor
(`for_sensor`), launches runs, and marks them dispatched (or ignored, with the reason); `after`
reads only the pending ones.

- `id` only grows, so it is the sensor's cursor. SQLite: AUTOINCREMENT never reuses an id, and
  writers are serialized, so ids commit in order. PostgreSQL: ids come from a sequence at insert
  time, so two concurrent transactions could commit 12 before 11 and a reader could move its
  cursor past 11 before 11 is visible; `add` therefore takes a transaction-level advisory lock,
  which makes inbox writers commit one after another, in id order.
- UNIQUE(provider, event_key) is the dedup: a provider's retry of a delivery carries the same
  event key (see ohx_dagster/webhooks/notifications.py for how each provider's key is chosen) and
  inserts nothing (ON CONFLICT DO NOTHING).
- `after` seeks the (status, id) index: reading the next batch costs the same with 100 or
  100,000 pending rows, and dispatched rows are never scanned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.errors import ValidationError
from ohx_dagster.models import HealthDataType, require_aware
from ohx_dagster.store import RecordStore, from_us, metadata, now_us, to_us

PENDING: Final = "pending"
DISPATCHED: Final = "dispatched"
IGNORED: Final = "ignored"
STATUSES: Final = (PENDING, DISPATCHED, IGNORED)

# Ids per UPDATE ... WHERE id IN (...): far below SQLite's and PostgreSQL's parameter limits.
_ID_CHUNK: Final = 5_000
# Any constant shared by every inbox writer: the PostgreSQL advisory lock that orders commits.
_PG_INBOX_LOCK: Final = 0x0E1B0C5

webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("event_key", sa.String(512), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("data_type", sa.String(32)),
    sa.Column("occurred_at_us", sa.BigInteger),
    sa.Column("received_at_us", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default=PENDING),
    sa.Column("reason", sa.Text),
    sa.Column("run_key", sa.String(256)),
    sa.UniqueConstraint("provider", "event_key", name="uq_inbox_provider_event"),
    sa.CheckConstraint(f"status IN {STATUSES!r}", name="ck_inbox_status"),
    sqlite_autoincrement=True,
)
sa.Index("ix_inbox_status_id", webhook_inbox.c.status, webhook_inbox.c.id)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A notification as the receiver parsed it, before it has an inbox id.

    `ignored_reason` set: the event is kept for the record (status 'ignored') but never reaches
    the sensor, e.g. a revoked-access notice or a category that carries no health data we sync.
    """

    provider: str
    event_key: str
    user_id: str
    data_type: str | None
    occurred_at: datetime | None
    payload: Mapping[str, Any] = field(default_factory=dict)
    ignored_reason: str | None = None

    def __post_init__(self) -> None:
        for name in ("provider", "event_key", "user_id"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text:
                raise ValidationError(name, text, "a non-empty string")
        if len(self.event_key) > 512:
            raise ValidationError("event_key", self.event_key[:40] + "...", "<= 512 characters")
        if self.data_type is not None:
            try:
                object.__setattr__(self, "data_type", HealthDataType(self.data_type).value)
            except ValueError:
                known = [t.value for t in HealthDataType]
                expected = f"null or one of {known}"
                raise ValidationError("data_type", self.data_type, expected) from None
        if self.occurred_at is not None:
            require_aware("occurred_at", self.occurred_at)


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """A committed inbox row, as the sensor reads it."""

    id: int
    provider: str
    event_key: str
    user_id: str
    data_type: str | None
    occurred_at: datetime | None
    received_at: datetime
    payload: dict[str, Any]


class Inbox:
    """The webhook inbox in a RecordStore (SQLite or PostgreSQL, same statements)."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        # The store creates every table on `metadata` when it starts; a store built before this
        # module was imported gets the inbox here (in a write transaction: one creator at a time).
        if not sa.inspect(store.engine).has_table(webhook_inbox.name):
            with store.write() as conn:
                webhook_inbox.create(conn, checkfirst=True)
        self._postgres = store.engine.dialect.name == "postgresql"

    def add(self, events: Sequence[NewEvent]) -> int:
        """Commit the events in one transaction, skipping duplicates; returns how many are new."""
        return self.add_groups([events])[0]

    def add_groups(self, groups: Sequence[Sequence[NewEvent]]) -> list[int]:
        """Commit several requests' events in ONE transaction (group commit); new count per group.

        Within the call an event key counts as new for the first group that names it only.
        """
        received = now_us()
        rows: list[dict[str, Any]] = []
        owner: dict[tuple[str, str], int] = {}
        for index, events in enumerate(groups):
            for event in events:
                key = (event.provider, event.event_key)
                if key in owner:
                    continue
                owner[key] = index
                rows.append(_row(event, received))
        counts = [0] * len(groups)
        if not rows:
            return counts
        statement = (
            self.store._insert(webhook_inbox)  # the dialect's INSERT (ON CONFLICT support)
            .on_conflict_do_nothing(index_elements=["provider", "event_key"])
            .returning(webhook_inbox.c.provider, webhook_inbox.c.event_key)
        )
        with self.store.write() as conn:
            self._serialize_writers(conn)
            inserted = conn.execute(statement, rows).all()
        for provider, event_key in inserted:
            counts[owner[(provider, event_key)]] += 1
        return counts

    def after(self, cursor: int, limit: int) -> list[InboxEvent]:
        """Pending events with id > cursor, in id order, at most `limit`."""
        return self._events(pending_after(cursor, limit))

    def for_sensor(self, cursor: int, limit: int) -> list[InboxEvent]:
        """Events with id > cursor that are not ignored, pending or dispatched, in id order.

        The sensor's cursor, not the status, says what is done: a tick that marked events
        dispatched and then died before Dagster stored its cursor reads them again, and its
        run keys (partition + last event id) are the same, so nothing runs twice or never.
        """
        if limit < 1:
            raise ValidationError("limit", limit, "a whole number >= 1")
        t = webhook_inbox
        query = (
            sa.select(*_EVENT_COLUMNS)
            .where(t.c.id > cursor, t.c.status != IGNORED)
            .order_by(t.c.id)
            .limit(limit)
        )
        return self._events(query)

    def _events(self, query: sa.Select[Any]) -> list[InboxEvent]:
        with self.store.read() as conn:
            rows = conn.execute(query).all()
        return [
            InboxEvent(
                id=row.id,
                provider=row.provider,
                event_key=row.event_key,
                user_id=row.user_id,
                data_type=row.data_type,
                occurred_at=None if row.occurred_at_us is None else from_us(row.occurred_at_us),
                received_at=from_us(row.received_at_us),
                payload=orjson.loads(row.payload),
            )
            for row in rows
        ]

    def mark_dispatched(self, ids: Sequence[int], run_key: str) -> None:
        t = webhook_inbox
        unique = sorted(set(ids))
        with self.store.write() as conn:
            for start in range(0, len(unique), _ID_CHUNK):
                conn.execute(
                    t.update()
                    .where(t.c.id.in_(unique[start : start + _ID_CHUNK]))
                    .values(status=DISPATCHED, run_key=run_key, reason=None)
                )

    def mark_ignored(self, reasons: Mapping[int, str]) -> None:
        if not reasons:
            return
        t = webhook_inbox
        statement = (
            t.update()
            .where(t.c.id == sa.bindparam("event_id"))
            .values(status=IGNORED, reason=sa.bindparam("why"))
        )
        params = [{"event_id": int(i), "why": str(why)} for i, why in sorted(reasons.items())]
        with self.store.write() as conn:
            conn.execute(statement, params)

    def counts(self) -> dict[str, int]:
        """Rows per status; every status is present (0 when none)."""
        t = webhook_inbox
        query = sa.select(t.c.status, sa.func.count()).group_by(t.c.status)
        with self.store.read() as conn:
            found = dict(conn.execute(query).all())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def _serialize_writers(self, conn: Connection) -> None:
        if self._postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_INBOX_LOCK})


_EVENT_COLUMNS: Final = (
    webhook_inbox.c.id,
    webhook_inbox.c.provider,
    webhook_inbox.c.event_key,
    webhook_inbox.c.user_id,
    webhook_inbox.c.data_type,
    webhook_inbox.c.occurred_at_us,
    webhook_inbox.c.received_at_us,
    webhook_inbox.c.payload,
)


def pending_after(cursor: int, limit: int) -> sa.Select[Any]:
    """The query behind `Inbox.after`: an index seek on (status, id), then at most `limit` rows."""
    if limit < 1:
        raise ValidationError("limit", limit, "a whole number >= 1")
    t = webhook_inbox
    return (
        sa.select(*_EVENT_COLUMNS)
        .where(t.c.status == PENDING, t.c.id > cursor)
        .order_by(t.c.id)
        .limit(limit)
    )


def _row(event: NewEvent, received_us: int) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "event_key": event.event_key,
        "user_id": event.user_id,
        "data_type": event.data_type,
        "occurred_at_us": None if event.occurred_at is None else to_us(event.occurred_at),
        "received_at_us": received_us,
        "payload": orjson.dumps(dict(event.payload)).decode(),
        "status": IGNORED if event.ignored_reason else PENDING,
        "reason": event.ignored_reason,
    }
