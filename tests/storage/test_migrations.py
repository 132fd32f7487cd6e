"""Schema revisions: the migrations build exactly ohx_dagster/storage/schema.py, and a database made
by
release 0.1 (no alembic_version) is upgraded keeping its records, people and inbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ohx_dagster.core.models import DateRange, HealthSyncConfig
from ohx_dagster.core.times import to_us
from ohx_dagster.storage import db, migrate
from ohx_dagster.storage.schema import VERSION_TABLE, metadata
from ohx_dagster.storage.store import RecordStore

T0 = datetime(2026, 11, 20, 8, tzinfo=UTC)


def test_the_migrations_build_exactly_the_schema_module(store_url: str) -> None:
    engine = db.create_engine(store_url)
    assert migrate.upgrade(engine) == migrate.head()
    with engine.connect() as conn:
        differences = compare_metadata(
            MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            ),
            metadata,
        )
    engine.dispose()
    assert differences == []


def _release_0_1(url: str) -> None:
    """A database as release 0.1 left it: its tables (revision 0001) and rows, no version."""
    engine = db.create_engine(url)
    migrate.upgrade(engine, "0001")
    config = HealthSyncConfig(user_id="sim-001", provider="simulated", timezone="Europe/Amsterdam")
    records = [
        {"provider": "simulated", "user_id": "sim-001", "data_type": "heart_rate",
         "ts_us": to_us(T0 + timedelta(seconds=5 * i)), "device_id": "watch",
         "utc_offset_min": 60, "value": 60.0 + i % 7, "diastolic": None, "unit": "/min",
         "samples": None, "sampling_rate_hz": None, "duration_s": None, "ingested_at_us": 0}
        for i in range(2000)
    ]  # fmt: skip
    records.append(
        {"provider": "simulated", "user_id": "sim-001", "data_type": "ecg", "ts_us": to_us(T0),
         "device_id": "watch", "utc_offset_min": 60, "value": None, "diastolic": None,
         "unit": "uV", "samples": orjson.dumps([1.5, -2.25, 300.0]).decode(),
         "sampling_rate_hz": 250.0, "duration_s": 0.012, "ingested_at_us": 0}
    )  # fmt: skip
    records.append(
        {"provider": "simulated", "user_id": "sim-001", "data_type": "blood_pressure",
         "ts_us": to_us(T0), "device_id": "cuff", "utc_offset_min": 60, "value": 121.0,
         "diastolic": 80.0, "unit": "mm[Hg]", "samples": None, "sampling_rate_hz": None,
         "duration_s": None, "ingested_at_us": 0}
    )  # fmt: skip
    with db.write(engine) as conn:
        conn.exec_driver_sql(f"DROP TABLE {VERSION_TABLE}")
        conn.execute(
            sa.table("health_records", *(sa.column(n) for n in records[0])).insert(), records
        )
        conn.execute(
            sa.table("users", *(sa.column(n) for n in ("provider", "user_id", "config",
                                                       "connected", "connected_at_us"))).insert(),
            [{"provider": "simulated", "user_id": "sim-001",
              "config": orjson.dumps(config.to_json()).decode(), "connected": True,
              "connected_at_us": to_us(T0)}],
        )  # fmt: skip
        conn.execute(
            sa.table("sync_state", *(sa.column(n) for n in ("provider", "user_id", "data_type",
                                                            "last_synced_us", "updated_at_us")))
            .insert(),
            [{"provider": "simulated", "user_id": "sim-001", "data_type": "heart_rate",
              "last_synced_us": to_us(T0), "updated_at_us": 0}],
        )  # fmt: skip
    engine.dispose()


def test_a_release_0_1_database_keeps_its_data(store_url: str) -> None:
    _release_0_1(store_url)
    with pytest.raises(Exception, match="ohx db upgrade"):
        RecordStore(store_url, migrate_schema=False)
    store = RecordStore(store_url, migrate_schema=True)
    assert migrate.current(store.engine) == migrate.head()
    window = DateRange(T0 - timedelta(hours=1), T0 + timedelta(hours=3))
    stored = store.read_records("simulated", window)
    assert (stored["data_type"] == "heart_rate").sum() == 2000
    heart = stored[stored["data_type"] == "heart_rate"]
    assert heart["value"].tolist() == [60.0 + i % 7 for i in range(2000)]
    ecg = stored[stored["data_type"] == "ecg"].iloc[0]
    assert ecg["samples"] == [1.5, -2.25, 300.0] and ecg["sampling_rate_hz"] == 250.0
    assert stored.loc[stored["data_type"] == "blood_pressure", "diastolic"].tolist() == [80.0]
    assert [c.user_id for c in store.users("simulated")] == ["sim-001"]
    # The clock mark of 0.1 proves nothing fetched: no coverage, so the gap is fetched again.
    assert store.coverage("simulated") == {}
    with store.read() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert "health_records" not in tables and "sync_state" not in tables
    store.dispose()
