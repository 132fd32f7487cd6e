"""Revoked staff tokens: `staff_revoked` keeps the public id of every token `ohx staff remove`
revoked and whose it was (never a secret), so that a revoked token presented again at /connect or
the proxy is audited under its staff member's name (ohx_dagster/privacy/staff.py,
ohx_dagster/privacy/audit.py).

Data: tokens revoked before this revision are found in the audit log: every `staff-add` row
("staff NAME (token ID)") whose token is no longer in `staff_tokens` was revoked; its time is
that of the name's next `staff-remove` row (the add's own time if there is none).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ADDED = re.compile(r"staff (\S+) \(token ([0-9a-f]{12})\)")


def upgrade() -> None:
    revoked = op.create_table(
        "staff_revoked",
        sa.Column("token_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_by", sa.String(128), nullable=False),
    )
    conn = op.get_bind()
    audit = sa.table(
        "audit_log",
        sa.column("id"),
        sa.column("at_us"),
        sa.column("actor"),
        sa.column("action"),
        sa.column("detail"),
    )
    current = set(conn.execute(sa.text("SELECT token_id FROM staff_tokens")).scalars())
    rows = conn.execute(
        sa.select(audit.c.at_us, audit.c.actor, audit.c.action, audit.c.detail)
        .where(audit.c.action.in_(["staff-add", "staff-remove"]))
        .order_by(audit.c.id)
    ).all()
    found: dict[str, dict] = {}
    for index, row in enumerate(rows):
        added = _ADDED.fullmatch(row.detail) if row.action == "staff-add" else None
        if added is None or added.group(2) in current:
            continue
        name, token_id = added.groups()
        removed = f"staff {name}"
        later = (r for r in rows[index + 1 :] if (r.action, r.detail) == ("staff-remove", removed))
        removal = next(later, None)
        found[token_id] = {
            "token_id": token_id,
            "name": name,
            "revoked_at_us": row.at_us if removal is None else removal.at_us,
            "revoked_by": "unknown (before revision 0005)" if removal is None else removal.actor,
        }
    if found:
        op.bulk_insert(revoked, list(found.values()))


def downgrade() -> None:
    op.drop_table("staff_revoked")
