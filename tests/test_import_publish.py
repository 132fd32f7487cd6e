"""An `ohx import` shows up in the running UI: the import commits to the store, the code location's
republish_sensor asks for a refresh run for every changed day, that run publishes the day (its
FHIR files appear), and the next tick asks for nothing more.

Real parts: the `ohx` command (click's runner) on real Fitabase rows, the definitions as the UI
loads them, the sensor evaluated on a Dagster instance, the run executed in process.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from ohx_dagster.cli import cli
from ohx_dagster.definitions import build_definitions
from ohx_dagster.run_request import STRATEGY_TAG, USERS_TAG, SyncRequest
from ohx_dagster.settings import Settings
from ohx_dagster.store import RecordStore

PEOPLE = {"2022484408", "1503960366"}
ZONE = "America/Chicago"


@pytest.fixture
def export(fitabase_dir: Path, tmp_path: Path) -> Path:
    """The real export cut to two people (fast, still the real layout and values)."""
    folder = tmp_path / "fitabase"
    folder.mkdir()
    for path in fitabase_dir.glob("*.csv"):
        table = pd.read_csv(path, dtype={"Id": str})
        table[table["Id"].isin(PEOPLE)].to_csv(folder / path.name, index=False)
    return folder


def tick(instance: dg.DagsterInstance, defs: dg.Definitions) -> dg.SensorEvaluationContext:
    """The context the daemon gives the sensor: the code location's own resources."""
    resources = {name: defs.resources[name] for name in ("store", "sources")}
    return dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)


def test_an_import_is_published_by_the_republish_sensor(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    env = {
        "OHX_HOME": str(home),
        "OHX_SOURCES": "fitabase",
        "OHX_FITABASE_DIR": str(export),
        "OHX_FITABASE_TZ": ZONE,
        "OHX_PARTITIONS_START": "2016-03-01",
    }
    for name in ("OHX_DATABASE_URL", "OHX_FHIR_DIR", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    imported = CliRunner().invoke(
        cli, ["import", "fitabase", str(export), "--timezone", ZONE], env=env
    )
    assert imported.exit_code == 0, (imported.output, imported.exception)
    assert "republish_sensor picks them up" in imported.stdout

    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    changed = store.unpublished_days("fitabase")
    assert changed and set().union(*changed.values()) == PEOPLE

    defs = build_definitions(Settings.from_env(env))
    sensor = defs.get_sensor_def("republish_sensor")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = sensor(tick(instance, defs))
        requests = {r.partition_key: r for r in result.run_requests}
        # One refresh run per changed day, for the people whose day changed.
        assert set(requests) == {f"{day}|fitabase" for day in changed}
        for day, people in changed.items():
            tags = requests[f"{day}|fitabase"].tags
            assert tags[STRATEGY_TAG] == "refresh"
            # The people by salted subject, never by id (issue 19).
            assert USERS_TAG not in tags
            assert SyncRequest.from_tags(tags).resolve(store, "fitabase").user_ids == people

        # The UI's run of the first request publishes that day.
        first = min(changed)
        request = requests[f"{first}|fitabase"]
        run = defs.get_job_def("sync_partition").execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags
        )
        assert run.success
        published = home / "fhir" / first.isoformat() / "fitabase"
        assert (published / "manifest.json").is_file()
        assert any(p.name.startswith("Observation.") for p in published.glob("*.ndjson"))

        again = sensor(tick(instance, defs))
        keys = {r.partition_key for r in again.run_requests}
        assert f"{first}|fitabase" not in keys
        assert keys == {f"{day}|fitabase" for day in changed if day != first}
    assert first not in store.unpublished_days("fitabase")
    assert isinstance(first, date)
    store.dispose()
