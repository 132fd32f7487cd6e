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
  event key (see ohx_dagster/receiver/notifications.py for how each provider's key is chosen) and
  inserts nothing (ON CONFLICT DO NOTHING).
- Events of an erased person (a standing tombstone, ohx_dagster/privacy/identity.py) are not stored:
  they count as duplicates, so the receiver acknowledges them and the provider stops retrying.
- `after` seeks the (status, id) index: reading the next batch costs the same with 100 or
  100,000 pending rows, and dispatched rows are never scanned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.times import from_us, now_us, to_us
from ohx_dagster.privacy.identity import tombstones
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.storage.schema import INBOX_STATUSES, webhook_inbox
from ohx_dagster.storage.store import RecordStore

PENDING: Final = "pending"
DISPATCHED: Final = "dispatched"
IGNORED: Final = "ignored"
STATUSES: Final = INBOX_STATUSES

# Ids per UPDATE ... WHERE id IN (...): far below SQLite's and PostgreSQL's parameter limits.
_ID_CHUNK: Final = 5_000
# Any constant shared by every inbox writer: the PostgreSQL advisory lock that orders commits.
_PG_INBOX_LOCK: Final = 0x0E1B0C5

log = logging.getLogger("ohx_dagster.sync.inbox")


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
            serialize_writers(conn)
            rows = _without_erased(conn, rows)
            inserted = conn.execute(statement, rows).all() if rows else []
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

    def dispatched_to(self, run_key: str) -> list[InboxEvent]:
        """The events the webhook sensor dispatched to the run with this key, in id order."""
        t = webhook_inbox
        query = sa.select(*_EVENT_COLUMNS).where(t.c.run_key == run_key).order_by(t.c.id)
        return self._events(query)

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
            found: dict[str, int] = dict(conn.execute(query).all())
        return {status: int(found.get(status, 0)) for status in STATUSES}


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


def serialize_writers(conn: Connection) -> None:
    """Hold the inbox writers' lock until the transaction ends (PostgreSQL; SQLite's write lock
    does it): inbox commits go in id order, and an erasure's first step, which takes it too,
    is never interleaved with an inbox write that read the tombstones before it."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_INBOX_LOCK})


def _without_erased(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of people whose erasure does not stand: an erased person's events are not
    stored (the provider is answered as for a duplicate), counted in one log line, never named
    (their tombstones: ohx_dagster/privacy/identity.py)."""
    dead = tombstones(conn)
    if not dead:
        return rows
    salt = erasure_salt()
    kept = [r for r in rows if subject_hash(r["provider"], r["user_id"], salt=salt) not in dead]
    if len(kept) < len(rows):
        log.info("inbox: %d events of erased people not stored", len(rows) - len(kept))
    return kept


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
