"""The schema of release 0.1, which created its tables without migrations.

A database made by 0.1 has these tables and no alembic_version: ohx_dagster.storage.migrate stamps
it with this revision and upgrades it from here, so its data is kept.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _person() -> list[sa.Column]:
    return [
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "health_records",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("ts_us", sa.BigInteger, primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("utc_offset_min", sa.Integer),
        sa.Column("value", sa.Float),
        sa.Column("diastolic", sa.Float),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("samples", sa.Text),
        sa.Column("sampling_rate_hz", sa.Float),
        sa.Column("duration_s", sa.Float),
        sa.Column("ingested_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_records_window", "health_records", ["provider", "ts_us"])
    op.create_table(
        "sync_state",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("last_synced_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "users",
        *_person(),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("connected", sa.Boolean, nullable=False),
        sa.Column("connected_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "aggregates",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("level", sa.String(16), primary_key=True),
        sa.Column("bucket_start_us", sa.BigInteger, primary_key=True),
        sa.Column("bucket_end_us", sa.BigInteger, nullable=False),
        sa.Column("utc_offset_min", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("min", sa.Float),
        sa.Column("max", sa.Float),
        sa.Column("mean", sa.Float),
        sa.Column("sum", sa.Float),
        sa.Column("diastolic_min", sa.Float),
        sa.Column("diastolic_max", sa.Float),
        sa.Column("diastolic_mean", sa.Float),
        sa.Column("unit", sa.String(16), nullable=False),
    )
    op.create_index("ix_aggregates_window", "aggregates", ["provider", "level", "bucket_start_us"])
    op.create_table(
        "webhook_inbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("event_key", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("data_type", sa.String(32)),
        sa.Column("occurred_at_us", sa.BigInteger),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("run_key", sa.String(256)),
        sa.UniqueConstraint("provider", "event_key", name="uq_inbox_provider_event"),
        sa.CheckConstraint(
            "status IN ('pending', 'dispatched', 'ignored')", name="ck_inbox_status"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_inbox_status_id", "webhook_inbox", ["status", "id"])
    op.create_table(
        "oauth_tokens",
        *_person(),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("scope", sa.String(2048), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "oauth_states",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("code_verifier", sa.String(128)),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_subscriptions",
        *_person(),
        sa.Column("target", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("subscription_id", sa.String(256)),
        sa.Column("expires_at_us", sa.BigInteger),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "fhir_outbox",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("partition_key", sa.String(128), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("delivered_hash", sa.String(64)),
        sa.Column("enqueued_at_us", sa.BigInteger, nullable=False),
        sa.Column("delivered_at_us", sa.BigInteger),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_outbox_partition", "fhir_outbox", ["partition_key"])


def downgrade() -> None:
    for table in (
        "fhir_outbox",
        "webhook_subscriptions",
        "oauth_states",
        "oauth_tokens",
        "webhook_inbox",
        "aggregates",
        "users",
        "sync_state",
        "health_records",
    ):
        op.drop_table(table)
