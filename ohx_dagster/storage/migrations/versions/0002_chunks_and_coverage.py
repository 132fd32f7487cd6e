"""Dense series as hourly chunks, sparse measurements and ECG recordings one row each; coverage,
per-type status, day versions, provider cursors, the request budget, published files, erasures.

Data: release 0.1's health_records rows are re-encoded (docs/storage.md) and the table dropped.
Its sync_state held one clock mark per person and type that cannot say what was really fetched, so
it is dropped without becoming coverage: the next runs find every day uncovered and fetch it again
(upserts are idempotent; nothing is lost, nothing counted twice).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections import defaultdict

import numpy as np
import orjson
import sqlalchemy as sa
from alembic import op

from ohx_dagster.storage import chunks

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DENSE = ("heart_rate", "steps", "rr_intervals")


def _person() -> list[sa.Column]:
    return [
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
    ]


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(name=f"pk_{table}")


def upgrade() -> None:
    op.create_table(
        "series_chunks",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("hour_us", sa.BigInteger, primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_series_chunks_provider_hour_us", "series_chunks", ["provider", "hour_us"])
    op.create_table(
        "measurements",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("ts_us", sa.BigInteger, primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("utc_offset_min", sa.Integer),
        sa.Column("value", sa.Float),
        sa.Column("diastolic", sa.Float),
        sa.Column("duration_s", sa.Float),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("context", sa.String(32), nullable=False),
        sa.Column("sampling_rate_hz", sa.Float),
        sa.Column("waveform", sa.LargeBinary),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_measurements_provider_ts_us", "measurements", ["provider", "ts_us"])
    op.create_table(
        "coverage",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("start_us", sa.BigInteger, primary_key=True),
        sa.Column("end_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "type_status",
        *_person(),
        sa.Column("data_type", sa.String(32), primary_key=True),
        sa.Column("last_success_us", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_us", sa.BigInteger),
        sa.Column("refused_reason", sa.Text),
        sa.Column("refused_us", sa.BigInteger),
        sa.Column("refused_config", sa.String(64)),
    )
    op.create_table(
        "day_versions",
        *_person(),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("published_version", sa.BigInteger, nullable=False),
        sa.Column("published_final", sa.Boolean, nullable=False),
        sa.Column("changed_us", sa.BigInteger),
        sa.Column("published_us", sa.BigInteger),
    )
    op.create_index("ix_day_versions_provider_day", "day_versions", ["provider", "day"])
    op.create_table(
        "provider_cursors",
        *_person(),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "request_budget",
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("window_start_us", sa.BigInteger, nullable=False),
        sa.Column("used", sa.Integer, nullable=False),
        sa.Column("blocked_until_us", sa.BigInteger),
    )
    op.create_table(
        "fhir_files",
        sa.Column("partition_key", sa.String(160), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("published_us", sa.BigInteger, nullable=False),
        sa.Column("enqueued", sa.Boolean, nullable=False),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("subject_hash", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("erased_at_us", sa.BigInteger, nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("state", sa.String(32), nullable=False, server_default="active"))
        batch.add_column(sa.Column("state_reason", sa.Text))
        batch.add_column(sa.Column("state_at_us", sa.BigInteger))
        batch.create_check_constraint(
            "ck_users_state", "state IN ('active', 'needs_reauthorization', 'disconnected')"
        )
    with op.batch_alter_table("oauth_tokens") as batch:
        batch.add_column(sa.Column("refresh_lease_until_us", sa.BigInteger))
        batch.add_column(sa.Column("refresh_lease_owner", sa.String(64)))
    with op.batch_alter_table("aggregates") as batch:
        batch.add_column(sa.Column("devices", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("methods", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("fhir_outbox") as batch:
        batch.alter_column("partition_key", type_=sa.String(160), existing_nullable=False)
        batch.add_column(sa.Column("file", sa.String(256), nullable=False, server_default=""))
        batch.add_column(sa.Column("provider", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("user_id", sa.String(128), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("withdrawn", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("match_url", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("rank", sa.SmallInteger, nullable=False, server_default="0"))
        batch.create_index("ix_fhir_outbox_provider_user_id", ["provider", "user_id"])
    op.create_index("ix_webhook_inbox_run_key", "webhook_inbox", ["run_key"])
    _move_records()
    op.drop_table("health_records")
    op.drop_table("sync_state")


def _move_records() -> None:
    """health_records -> series_chunks / measurements, one person at a time (bounded memory)."""
    conn = op.get_bind()
    records = sa.table(
        "health_records",
        *(
            sa.column(name)
            for name in (
                "provider", "user_id", "data_type", "ts_us", "device_id", "utc_offset_min",
                "value", "diastolic", "samples", "sampling_rate_hz", "duration_s",
            )
        ),
    )  # fmt: skip
    people = conn.execute(sa.select(records.c.provider, records.c.user_id).distinct()).all()
    series = sa.table(
        "series_chunks",
        *(sa.column(n) for n in ("provider", "user_id", "data_type", "hour_us", "device_id",
                                 "samples", "payload", "updated_at_us")),
    )  # fmt: skip
    sparse = sa.table(
        "measurements",
        *(sa.column(n) for n in ("provider", "user_id", "data_type", "ts_us", "device_id",
                                 "utc_offset_min", "value", "diastolic", "duration_s", "method",
                                 "context", "sampling_rate_hz", "waveform", "updated_at_us")),
    )  # fmt: skip
    for provider, user_id in people:
        rows = conn.execute(
            sa.select(records)
            .where(records.c.provider == provider, records.c.user_id == user_id)
            .order_by(records.c.data_type, records.c.device_id, records.c.ts_us)
        ).all()
        groups: dict[tuple[str, str, int], list] = defaultdict(list)
        measurement_rows = []
        for row in rows:
            if row.data_type in DENSE:
                hour = (row.ts_us // chunks.HOUR_US) * chunks.HOUR_US
                groups[(row.data_type, row.device_id, hour)].append(row)
                continue
            waveform = None
            if row.samples is not None:
                waveform = chunks.encode_waveform(np.array(orjson.loads(row.samples)))
            measurement_rows.append(
                {
                    "provider": provider, "user_id": user_id, "data_type": row.data_type,
                    "ts_us": row.ts_us, "device_id": row.device_id,
                    "utc_offset_min": row.utc_offset_min, "value": row.value,
                    "diastolic": row.diastolic, "duration_s": row.duration_s,
                    "method": "device", "context": "", "sampling_rate_hz": row.sampling_rate_hz,
                    "waveform": waveform, "updated_at_us": 0,
                }
            )  # fmt: skip
        chunk_rows = []
        for (data_type, device_id, hour), members in groups.items():
            samples = chunks.Samples.of(
                [r.ts_us for r in members],
                [r.value for r in members],
                utc_offset_min=[r.utc_offset_min or 0 for r in members],
                duration_s=[np.nan if r.duration_s is None else r.duration_s for r in members],
            ).sorted_unique()
            chunk_rows.append(
                {
                    "provider": provider, "user_id": user_id, "data_type": data_type,
                    "hour_us": hour, "device_id": device_id, "samples": len(samples),
                    "payload": chunks.encode(samples, hour), "updated_at_us": 0,
                }
            )  # fmt: skip
        if chunk_rows:
            conn.execute(series.insert(), chunk_rows)
        if measurement_rows:
            conn.execute(sparse.insert(), measurement_rows)


def downgrade() -> None:
    # The records were re-encoded and release 0.1's sync marks dropped: going back means
    # restoring the backup taken before `ohx db upgrade`, not running code.
    raise RuntimeError("revision 0002 cannot be downgraded: restore a backup of 0.1 instead")
