"""The FHIR API's SMART Backend Services clients (ohx_dagster/fhirapi/clients.py): `fhir_clients`
(each client's JWKS and allowed system scopes, registered by staff), `fhir_assertions` (the ids of
client assertions seen, until they expire: a replay is refused) and `fhir_tokens` (access tokens
issued, by their SHA-256, never the token).

Data: none (clients are added with `ohx fhir clients add`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_clients",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("jwks", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("added_at_us", sa.BigInteger, nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "fhir_assertions",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_fhir_assertions_expires_us", "fhir_assertions", ["expires_us"])
    op.create_table(
        "fhir_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_fhir_tokens_expires_us", "fhir_tokens", ["expires_us"])


def downgrade() -> None:
    op.drop_table("fhir_tokens")
    op.drop_table("fhir_assertions")
    op.drop_table("fhir_clients")
