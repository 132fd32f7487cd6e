"""The audit log: one row per staff action and data access, appended, never changed.

A row (`audit_log`, ohx_dagster/schema.py): id, at_us (when), actor (who: a staff name given with
--actor, the login of the terminal, or the process that acted, e.g. "connect flow"), action
(`ACTIONS`), subject (the person as their salted hash, ohx_dagster/identity.py; "" for an action
on no one person), outcome (ok, partial: an erasure the FHIR server's copies are
still missing from, refused, failed) and detail (counts, reasons, patients by their
salted hash: never a person's id in clear). Audit rows are not personal data: erasing a person
leaves them (ohx_dagster/erasure.py NOT_PERSONAL), and they are what shows that the erasure
happened.

Append-only: this module inserts and reads; the only deletion is retention (`expire`), run by
the daily retention job with OHX_AUDIT_RETENTION (ohx_dagster/settings.py). Rows are written in
the transaction of the action they record where there is one (relink, readmit), so an action
never happens without its row.

Who writes: the connect flow (`connect_user`: connect, refused connect), `ohx users disconnect`,
`ohx users relink`, `ohx users readmit`, `ohx users set-zone`, `ohx users delete` and the
erase_person_job (erase), `ohx import` (import), `ohx staff add` and `ohx staff remove`
(staff-add, staff-remove: the staff name in the detail, no subject). `ohx audit` reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.errors import ValidationError
from ohx_dagster.schema import audit_log
from ohx_dagster.times import now_us

if TYPE_CHECKING:
    from ohx_dagster.store import RecordStore

ACTIONS: Final = (
    "connect", "disconnect", "relink", "import", "erase", "readmit", "export", "set-zone",
    "staff-add", "staff-remove",
)  # fmt: skip
OUTCOMES: Final = ("ok", "partial", "refused", "failed")
ACTOR_CHARS: Final = audit_log.c.actor.type.length
DETAIL_CHARS: Final = 2_000


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
    from ohx_dagster.identity import erasure_salt, subject_hash

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
