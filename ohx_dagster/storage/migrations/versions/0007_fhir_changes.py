"""When each published resource last changed: `fhir_changes` (ohx_dagster/storage/schema.py), one
row per resource, upserted by publishing in the transaction that commits a bucket for every
resource it creates or changes. The FHIR API reads it for `meta.lastUpdated`, `_lastUpdated`
and reads by id.

Data: none. Resources published before this revision have no row until they change or their
partition is published again with `force` (they are served without `meta.lastUpdated`, found by
search, not by id).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_changes",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("partition_key", sa.String(160), nullable=False),
        sa.Column("bucket", sa.Integer, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_fhir_changes_provider_user_id_resource_type",
        "fhir_changes",
        ["provider", "user_id", "resource_type"],
    )


def downgrade() -> None:
    op.drop_table("fhir_changes")
