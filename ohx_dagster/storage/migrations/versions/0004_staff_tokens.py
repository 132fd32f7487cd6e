"""Per-staff bearer tokens for the receiver's /connect and the deployment's proxy
(ohx_dagster/privacy/staff.py): `staff_tokens` holds each token's id and the SHA-256 of its secret,
never the token; `oauth_states.actor` names who started a connect flow, so the connection's audit
row says which staff member connected whom.

Data: none (staff are added with `ohx staff add`; the retired shared OHX_CONNECT_TOKEN has no row).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff_tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.String(16), nullable=False, unique=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    with op.batch_alter_table("oauth_states") as batch:
        batch.add_column(sa.Column("actor", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("actor")
    op.drop_table("staff_tokens")
