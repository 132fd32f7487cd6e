"""The audit log: one row per staff action and data access, appended, never changed.

A row (`audit_log`, ohx_dagster/storage/schema.py): id, at_us (when), actor (who: a staff name given
with --actor, the login of the terminal, or the process that acted, e.g. "connect flow"), action
(`ACTIONS`), subject (the person as their salted hash, ohx_dagster/privacy/subjects.py; "" for an
action on no one person), outcome (ok, partial: an erasure the FHIR server's copies are
still missing from, refused, failed) and detail (counts, reasons, patients by their
salted hash: never a person's id in clear). Audit rows are not personal data: erasing a person
leaves them (ohx_dagster/privacy/erasure.py NOT_PERSONAL), and they are what shows that the erasure
happened.

Append-only: this module inserts and reads; the only deletion is retention (`expire`), run by
the daily retention job with OHX_AUDIT_RETENTION (ohx_dagster/config/settings.py). Rows are written
in the transaction of the action they record where there is one (relink, readmit), so an action
never happens without its row.

Who writes: the connect flow (`connect_user`: connect, refused connect), `ohx users disconnect`,
`ohx users relink`, `ohx users readmit`, `ohx users set-zone`, `ohx users delete` and the
erase_person_job (erase), `ohx import` (import), `ohx staff add` and `ohx staff remove`
(staff-add, staff-remove: the staff name in the detail, no subject); publishing NDJSON
(publish.publish_partition: export, one row per person of a committed bucket, in its
transaction) and delivery to a FHIR server (fhir/delivery/client.py: export, one row per person
of a transaction Bundle); the receiver's /connect and /auth/staff for refused staff credentials
(connect or sign-in, refused, through `RefusedRows`: bounded, see below); the FHIR API
(ohx_dagster/fhirapi: client-add, client-remove, token, read; group-add, group-remove for
cohorts; bulk-export for each `$export` kicked off, run, downloaded, cancelled or withdrawn;
subscribe for each Subscription created or deleted, notify for each notification delivered).
`ohx audit` reads it; docs/deployment.md lists what each action records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.times import now_us
from ohx_dagster.storage.db import text_length
from ohx_dagster.storage.schema import audit_log

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

ACTIONS: Final = (
    "connect", "disconnect", "relink", "import", "erase", "readmit", "export", "set-zone",
    "staff-add", "staff-remove", "sign-in", "client-add", "client-remove", "token", "read",
    "group-add", "group-remove", "bulk-export", "subscribe", "notify",
)  # fmt: skip
OUTCOMES: Final = ("ok", "partial", "refused", "failed")
ACTOR_CHARS: Final = text_length(audit_log.c.actor)
DETAIL_CHARS: Final = 2_000
# Refused requests: one row at once per source and interval, the rest in one summary row.
REFUSAL_INTERVAL_S: Final = 60.0
ADDRESSES_SHOWN: Final = 5
ADDRESSES_COUNTED: Final = 1_000

log = logging.getLogger("ohx_dagster.privacy.audit")


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at_us: int
    actor: str
    action: str
    subject: str
    outcome: str
    detail: str


def record(
    target: Connection | RecordStore,
    *,
    actor: str,
    action: str,
    subject: str = "",
    outcome: str = "ok",
    detail: str = "",
) -> None:
    """Append one row, in the caller's transaction (a Connection) or one of its own (a store)."""
    if action not in ACTIONS:
        raise ValidationError("action", action, f"one of {list(ACTIONS)}")
    if outcome not in OUTCOMES:
        raise ValidationError("outcome", outcome, f"one of {list(OUTCOMES)}")
    if subject and (len(subject) != 64 or subject.strip("0123456789abcdef")):
        raise ValidationError("subject", "<not shown>", "a salted subject hash (64 hex) or ''")
    actor = " ".join(str(actor).split())[:ACTOR_CHARS] or "unknown"
    row = {
        "at_us": now_us(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "outcome": outcome,
        "detail": " ".join(str(detail).split())[:DETAIL_CHARS],
    }
    if isinstance(target, Connection):
        target.execute(audit_log.insert().values(**row))
        return
    with target.write() as conn:
        conn.execute(audit_log.insert().values(**row))


def record_people(
    conn: Connection,
    *,
    actor: str,
    action: str,
    provider: str,
    outcomes: Mapping[str, tuple[str, str]],
    salt: bytes,
) -> None:
    """One row per person of `outcomes` (user id -> (outcome, detail)), the person as their
    subject, in the caller's transaction."""
    from ohx_dagster.privacy.subjects import subject_hash

    for user_id, (outcome, detail) in sorted(outcomes.items()):
        record(
            conn,
            actor=actor,
            action=action,
            subject=subject_hash(provider, user_id, salt=salt),
            outcome=outcome,
            detail=detail,
        )


def login(command: str) -> str:
    """The actor of a terminal command: the command and the login running it."""
    import getpass

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        who = "unknown user"
    return f"{command} ({who})"


def record_import(
    store: RecordStore,
    provider: str,
    people: Iterable[str],
    failed: Iterable[str],
    *,
    records: int,
    days: int,
) -> None:
    """`ohx import`: one row per person the file held, the person as their subject."""
    from ohx_dagster.privacy.subjects import erasure_salt, subject_hash

    actor = login("ohx import")
    outcomes = {p: "ok" for p in people} | {p: "failed" for p in failed}
    if not outcomes:
        return
    salt = erasure_salt()
    with store.write() as conn:
        for person, outcome in sorted(outcomes.items()):
            record(
                conn,
                actor=actor,
                action="import",
                subject=subject_hash(provider, person, salt=salt),
                outcome=outcome,
                detail=f"provider {provider}; the file's {records} records over {days} days "
                f"({len(outcomes)} people)",
            )


def read(
    store: RecordStore,
    *,
    since_us: int | None = None,
    action: str | None = None,
    subject: str | None = None,
    limit: int | None = None,
) -> list[AuditRow]:
    """Rows in the order they were written (oldest first)."""
    t = audit_log
    query: Any = sa.select(t)
    if since_us is not None:
        query = query.where(t.c.at_us >= since_us)
    if action is not None:
        query = query.where(t.c.action == action)
    if subject is not None:
        query = query.where(t.c.subject == subject)
    query = query.order_by(t.c.id)
    with store.read() as conn:
        rows = [AuditRow(**r._mapping) for r in conn.execute(query)]
    return rows[-limit:] if limit else rows


def expire(store: RecordStore, before_us: int) -> int:
    """Retention: delete the rows written before `before_us`; how many."""
    t = audit_log
    with store.write() as conn:
        return int(conn.execute(t.delete().where(t.c.at_us < before_us)).rowcount or 0)


# -- refused requests, bounded -------------------------------------------------------------------


@dataclass
class _Tally:
    """The refusals of one source in an interval after its first (which has its own row)."""

    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    addresses: dict[str, None] = field(default_factory=dict)  # first seen first, capped

    def add(self, reason: str, address: str) -> None:
        self.count += 1
        self.reasons[reason] += 1
        if address and len(self.addresses) < ADDRESSES_COUNTED:
            self.addresses.setdefault(address, None)

    def detail(self, where: str, seconds: float) -> str:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in self.reasons.most_common())
        shown = list(self.addresses)[:ADDRESSES_SHOWN]
        more = len(self.addresses) - len(shown)
        addresses = ", ".join(shown) + (
            f" and {more:,}{'+' if len(self.addresses) >= ADDRESSES_COUNTED else ''} more"
            if more
            else ""
        )
        return (
            f"{self.count:,} more refused in the last {seconds:.0f} s, not recorded one by one "
            f"({where}; {reasons})" + (f"; from {addresses}" if addresses else "")
        )


class RefusedRows:
    """Audit rows for refused requests (a staff credential refused at /connect or at the proxy's
    check, ohx_dagster/receiver/connect.py), bounded so that a flood cannot fill the table, as
    the receiver's RefusalLog bounds its log lines: per interval and source (the action and the
    actor: the staff member a token names, or "unknown"), the first refusal gets its own row at
    once and the others are counted into one summary row (how many, why, from which addresses)
    when the interval ends -- written by the next refusal after it, by `tick` (the receiver
    calls it every interval) or by `flush` (when it stops). Actors are staff names found in the
    store or "unknown", never a string a client sent, so an interval holds at most two rows per
    action and source, however many requests arrive. A row that cannot be written (the database
    unreachable) is logged instead."""

    def __init__(
        self,
        store: RecordStore,
        interval_s: float = REFUSAL_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._recorded: set[tuple[str, str]] = set()  # sources given their own row this interval
        self._counted: dict[tuple[str, str], tuple[str, _Tally]] = {}

    def refused(
        self,
        *,
        action: str,
        actor: str,
        where: str,
        reason: str,
        address: str = "",
        note: str = "",
    ) -> bool:
        """One refused request: `where` (what was asked, e.g. "GET /connect/oura"), `reason`
        (from a fixed vocabulary: counted per kind in the summary) and a `note` for its own row
        only (a token's public id); True if it got its own row."""
        now = self.clock()
        with self._lock:
            due = self._take_due(now)
            source = (action, actor)
            first = source not in self._recorded
            if first:
                self._recorded.add(source)
            else:
                self._counted.setdefault(source, (where, _Tally()))[1].add(reason, address)
        if first:
            detail = f"{where}: {reason}" + (f" ({note})" if note else "")
            due.append((action, actor, detail + (f" from {address}" if address else "")))
        self._write(due)
        return first

    def tick(self) -> None:
        """Write the summaries of an interval that has ended (a flood that stopped is told)."""
        with self._lock:
            due = self._take_due(self.clock())
        self._write(due)

    def flush(self) -> None:
        """Write the summaries of the interval so far and start a new one."""
        with self._lock:
            due = self._take_due(self.clock(), force=True)
        self._write(due)

    def _take_due(self, now: float, *, force: bool = False) -> list[tuple[str, str, str]]:
        if not force and now - self.started < self.interval_s:
            return []
        seconds = now - self.started
        rows = [
            (action, actor, tally.detail(where, seconds))
            for (action, actor), (where, tally) in sorted(self._counted.items())
        ]
        self.started = now
        self._recorded.clear()
        self._counted.clear()
        return rows

    def _write(self, rows: list[tuple[str, str, str]]) -> None:
        if not rows:
            return
        try:
            with self.store.write() as conn:
                for action, actor, detail in rows:
                    record(conn, actor=actor, action=action, outcome="refused", detail=detail)
        except SQLAlchemyError as exc:
            log.error(
                "%d audit row(s) of refused requests not written (%s): %s",
                len(rows),
                type(exc).__name__,
                "; ".join(f"{action} by {actor}: {detail}" for action, actor, detail in rows),
            )
