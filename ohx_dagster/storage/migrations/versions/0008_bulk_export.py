"""Bulk Data export (ohx_dagster/fhirapi/bulk.py): `fhir_groups` (cohorts staff define:
everyone, the people of some providers, or a list of people in `fhir_group_members`) and
`fhir_exports` (each `$export` a client asked for, its state and its files); two indexes on
`fhir_changes` for `_since`, and its `digest` (the same content published on another day is
not a change).

Data: none (groups are added with `ohx fhir groups add`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

GROUP_KINDS = ("everyone", "providers", "people")
EXPORT_STATES = ("accepted", "running", "complete", "failed", "cancelled", "withdrawn")


def upgrade() -> None:
    op.create_table(
        "fhir_groups",
        sa.Column("group_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("providers", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("added_at_us", sa.BigInteger, nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.CheckConstraint(f"kind IN {GROUP_KINDS!r}", name="ck_fhir_groups_kind"),
    )
    op.create_table(
        "fhir_group_members",
        sa.Column("group_id", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
    )
    op.create_table(
        "fhir_exports",
        sa.Column("export_id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("group_id", sa.String(64)),
        sa.Column("types", sa.Text, nullable=False),
        sa.Column("since_us", sa.BigInteger),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("transaction_us", sa.BigInteger, nullable=False),
        sa.Column("started_us", sa.BigInteger),
        sa.Column("finished_us", sa.BigInteger),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("progress", sa.String(128), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.CheckConstraint(f"state IN {EXPORT_STATES!r}", name="ck_fhir_exports_state"),
    )
    op.create_index("ix_fhir_exports_state", "fhir_exports", ["state"])
    # A `_since` export reads the changes of one file after a time, and which files have any.
    op.create_index(
        "ix_fhir_changes_partition_key_bucket_resource_type",
        "fhir_changes",
        ["partition_key", "bucket", "resource_type"],
    )
    op.create_index("ix_fhir_changes_at_us", "fhir_changes", ["at_us"])
    # Rows written before have none: their resource's next publish counts as a change once.
    op.add_column("fhir_changes", sa.Column("digest", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("fhir_changes") as batch:
        batch.drop_column("digest")
    op.drop_index("ix_fhir_changes_at_us", "fhir_changes")
    op.drop_index("ix_fhir_changes_partition_key_bucket_resource_type", "fhir_changes")
    op.drop_table("fhir_exports")
    op.drop_table("fhir_group_members")
    op.drop_table("fhir_groups")
