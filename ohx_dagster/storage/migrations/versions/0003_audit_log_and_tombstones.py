"""The audit log (every staff action and data access, the person as a salted hash) and erasure
tombstones: `erasures.readmitted_at_us` (empty: the subject stays out until re-admitted) and an
index on the subject hash, which every way in looks up.

Data: existing erasures become tombstones (readmitted_at_us empty), as they were meant.

The audit log is append-only in the database too: a trigger refuses every UPDATE of its rows
(retention's DELETE of old rows stays possible).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_at_us", "audit_log", ["at_us"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION ohx_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION ohx_audit_log_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )
    with op.batch_alter_table("erasures") as batch:
        batch.add_column(sa.Column("readmitted_at_us", sa.BigInteger))
    op.create_index("ix_erasures_subject_hash", "erasures", ["subject_hash"])


def downgrade() -> None:
    op.drop_index("ix_erasures_subject_hash", table_name="erasures")
    with op.batch_alter_table("erasures") as batch:
        batch.drop_column("readmitted_at_us")
    op.drop_index("ix_audit_log_at_us", table_name="audit_log")
    op.drop_table("audit_log")  # its trigger goes with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ohx_audit_log_append_only()")
