"""R5 topic-based Subscriptions (ohx_dagster/fhirapi/subscriptions.py): `fhir_subscriptions`
(a client's subscription to one person's new or changed Observations, its delivery state) and
`fhir_subscription_events` (its numbered events, recorded by publishing).

Data: none.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATES = ("requested", "active", "error", "off")


def upgrade() -> None:
    op.create_table(
        "fhir_subscriptions",
        sa.Column("subscription_id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("codes", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("content", sa.String(16), nullable=False),
        sa.Column("heartbeat_s", sa.Integer, nullable=False),
        sa.Column("base", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("notifications", sa.BigInteger, nullable=False),
        sa.Column("delivered", sa.BigInteger, nullable=False),
        sa.Column("last_sent_us", sa.BigInteger, nullable=False),
        sa.Column("retry_at_us", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"status IN {STATES!r}", name="ck_fhir_subscriptions_status"),
    )
    op.create_index(
        "ix_fhir_subscriptions_provider_user_id", "fhir_subscriptions", ["provider", "user_id"]
    )
    op.create_table(
        "fhir_subscription_events",
        sa.Column("subscription_id", sa.String(32), primary_key=True),
        sa.Column("event_number", sa.BigInteger, primary_key=True),
        sa.Column("notification", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fhir_subscription_events")
    op.drop_table("fhir_subscriptions")
