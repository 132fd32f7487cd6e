"""In-process materialization of a simulated partition: on a fresh SQLite store and Dagster
instance, and on PostgreSQL for both the record store and Dagster's instance (dagster-postgres)."""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.models import DateRange
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.storage.store import RecordStore

DAY = "2025-01-05"
PARTITION = f"{DAY}|simulated"
STATISTICS = "http://hl7.org/fhir/observation-statistics"


REPO = Path(__file__).resolve().parents[2]


def run_partition(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = defs.get_job_def("sync_partition")
    result = job.execute_in_process(partition_key=PARTITION, instance=instance)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) >= 8
    failed = [(e.asset_key.to_user_string(), e.check_name) for e in evaluations if not e.passed]
    assert failed == []
    return result


def fhir_files(home: Path) -> dict[str, str]:
    """The partition's NDJSON files and their hashes (the manifest aside: it names its time)."""
    directory = home / "fhir" / DAY / "simulated"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.ndjson")}


def published(settings: Settings) -> list[dict]:
    output = FhirOutput(settings.fhir_dir)
    assert output.manifest(f"{DAY}/simulated") is not None
    return list(output.listed_resources(f"{DAY}/simulated"))


def materialize_twice(settings: Settings, instance: dg.DagsterInstance) -> RecordStore:
    defs = build_definitions(settings)
    first = run_partition(defs, instance)
    materialized = {m.asset_key.to_user_string() for m in first.get_asset_materialization_events()}
    assert {"raw_health_records", "hourly_aggregates", "daily_aggregates"} <= materialized
    assert "fhir_observations" in materialized
    store = RecordStore(settings.database_url)
    records = store.count_records("simulated")
    files = fhir_files(settings.home)
    assert any(name.startswith("Observation.") for name in files)

    run_partition(defs, instance)
    assert store.count_records("simulated") == records
    assert fhir_files(settings.home) == files
    return store


def is_aggregate(observation: dict) -> bool:
    """Aggregate Observations carry statistics components (series and samples do not)."""
    return any(
        coding["system"] == STATISTICS
        for component in observation.get("component", [])
        for coding in component["code"]["coding"]
    )


def is_hour(observation: dict) -> bool:
    period = observation["effectivePeriod"]
    length = datetime.fromisoformat(period["end"]) - datetime.fromisoformat(period["start"])
    return length == timedelta(hours=1)


def check_hourly_heart_rate(settings: Settings, store: RecordStore) -> None:
    """Each hourly heart-rate Observation states the statistics of the records in its hour."""
    hourly_users = {c.user_id for c in store.users("simulated") if c.aggregation == "hourly"}
    assert hourly_users
    observations = [
        o
        for o in published(settings)
        if o["resourceType"] == "Observation"
        and o["code"]["coding"][0]["code"] == "8867-4"
        and is_aggregate(o)
        and is_hour(o)
    ]
    assert len(observations) == 24 * len(hourly_users)
    patients = {f"Patient/{c.fhir_patient_id}": c.user_id for c in store.users("simulated")}
    for observation in observations[:6]:
        period = observation["effectivePeriod"]
        window = DateRange(
            datetime.fromisoformat(period["start"]), datetime.fromisoformat(period["end"])
        )
        records = store.read_records("simulated", window, data_types=["heart_rate"])
        user = patients[observation["subject"]["reference"]]
        values = records.loc[records["user_id"] == user, "value"]
        stats = {
            coding["code"]: component["valueQuantity"]["value"]
            if "valueQuantity" in component
            else component["valueInteger"]
            for component in observation["component"]
            for coding in component["code"]["coding"]
            if coding["system"] == STATISTICS
        }
        assert stats["count"] == len(values)
        assert stats["minimum"] == values.min() and stats["maximum"] == values.max()
        # Published to the 0.1 /min a heart-rate statistic carries (fhir/codes.py DECIMALS).
        assert stats["average"] == round(values.mean(), 1)
        assert observation["valueQuantity"]["value"] == round(values.mean(), 1)


def test_materialize_simulated_partition_on_sqlite(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"OHX_HOME": str(tmp_path / "home"), "OHX_PARTITIONS_START": "2025-01-01"}
    )
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / 'ohx.db'}"
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        store = materialize_twice(settings, instance)
    assert store.count_records("simulated") > 100_000  # three users, a whole day, 8 types
    check_hourly_heart_rate(settings, store)
    store.dispose()


def test_materialize_on_postgres_instance_and_store(
    tmp_path: Path, pg_database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Production layout: dagster-postgres for runs/events/schedules, the store on PostgreSQL."""
    # dagster-postgres hands the URL to SQLAlchemy 2.1, which reads a bare postgresql:// as
    # psycopg 3 (not installed): a dagster.yaml must name the pinned driver, psycopg2.
    url = sa.make_url(pg_database_url).set(drivername="postgresql+psycopg2")
    dagster_url = url.render_as_string(hide_password=False)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # The instance config the product ships for production, reading DAGSTER_PG_URL.
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_url)
    settings = Settings.from_env(
        {
            "OHX_HOME": str(tmp_path / "home"),
            "OHX_PARTITIONS_START": "2025-01-01",
            "OHX_DATABASE_URL": pg_database_url,
            "OHX_SIMULATED_USERS": "1",
        }
    )
    # The deployment migrates the record store before the code location starts.
    RecordStore(pg_database_url, migrate_schema=True).dispose()
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        store = materialize_twice(settings, instance)
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.is_success for r in runs)
        assert all(r.tags.get("dagster/partition") == PARTITION for r in runs)
        key = dg.AssetKey("hourly_aggregates")
        assert instance.get_materialized_partitions(key) == {PARTITION}
    finally:
        instance.dispose()
    engine = sa.create_engine(dagster_url)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert {
        "runs",
        "event_logs",
        "series_chunks",
        "aggregates",
        "ohx_schema_version",
        "alembic_version",
    } <= tables
    assert store.count_records("simulated") > 10_000
    check_hourly_heart_rate(settings, store)
    store.dispose()
