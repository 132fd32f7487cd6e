"""Retention deletes exactly what is older than each user's period, and nothing twice."""

from datetime import UTC, datetime, timedelta

import pandas as pd

from zoneinfo import ZoneInfo

from ohx_dagster import aggregate, db
from ohx_dagster.schema import aggregates
from ohx_dagster.models import DateRange, HealthSyncConfig
from ohx_dagster.records import make_batch
from ohx_dagster.retention import apply_retention
from ohx_dagster.store import RecordStore
from resources import RecordStoreResource
from sensors.retention import apply_retention_job

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EVERYTHING = DateRange(NOW - timedelta(days=400), NOW + timedelta(days=400))


def hourly_heart_rate(user_id: str, days: int, now: datetime) -> pd.DataFrame:
    stamps = pd.date_range(now - timedelta(days=days), now, freq="h", inclusive="left")
    return make_batch(
        provider="simulated", user_id=user_id, data_type="heart_rate",
        timestamps=stamps, values=[60.0] * len(stamps), unit="/min",
    )  # fmt: skip


def fill(store: RecordStore, now: datetime = NOW) -> None:
    store.add_users(
        [
            HealthSyncConfig(user_id="short", provider="simulated", retention_days=30),
            HealthSyncConfig(user_id="long", provider="simulated", retention_days=365),
        ]
    )
    for user in ("short", "long"):
        batch = hourly_heart_rate(user, 40, now)
        store.commit("simulated", user, ZoneInfo("UTC"), batch)
        hourly = aggregate.hourly(batch, {})
        with store.write() as conn:
            db.upsert(conn, aggregates, db.plain_rows(hourly[aggregate.AGGREGATE_COLUMNS]))


def test_retention_keeps_each_users_period(store: RecordStore) -> None:
    fill(store)
    report = apply_retention(store, NOW)
    assert report.users == 2
    assert report.records_deleted == 10 * 24  # ten of short's 40 days
    assert report.aggregates_deleted == 10 * 24
    short = store.read_records("simulated", EVERYTHING, user_ids=["short"])
    assert len(short) == 30 * 24 and short["ts"].min() >= NOW - timedelta(days=30)
    assert len(store.read_records("simulated", EVERYTHING, user_ids=["long"])) == 40 * 24
    kept = store.read_aggregates("simulated", "hourly", EVERYTHING)
    assert len(kept[kept["user_id"] == "short"]) == 30 * 24
    again = apply_retention(store, NOW)
    assert again.records_deleted == 0 and again.aggregates_deleted == 0


def test_the_retention_job_runs_in_dagster(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ohx.db'}"
    store = RecordStore(url)
    fill(store, datetime.now(UTC).replace(minute=0, second=0, microsecond=0))
    result = apply_retention_job.execute_in_process(
        resources={"store": RecordStoreResource(database_url=url)}
    )
    assert result.success
    # The job uses the real clock: everything older than 30 days of now is gone for "short".
    remaining = store.read_records("simulated", EVERYTHING, user_ids=["short"])
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert not remaining.empty and remaining["ts"].min() >= cutoff - timedelta(seconds=5)
