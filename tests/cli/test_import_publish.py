"""An `ohx import` is published. Days the running Dagster owns (the source in its OHX_SOURCES, the
day within its partitions) show up in the UI: the import commits to the store, the code location's
republish_sensor asks for a refresh run for every changed day, that run publishes the day (its
FHIR files appear), and the next tick asks for nothing more. Every other day the import publishes
itself, as the README's examples under scripts/dev's defaults (OHX_SOURCES=simulated, partitions
from 2025-01-01): the FHIR validates and holds the file's samples.

Real parts: the `ohx` command (click's runner) on real Fitabase rows, the definitions as the UI
loads them, the sensor evaluated on a Dagster instance, the run executed in process, the R5
validator on every published resource.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from ohx_dagster.cli import cli
from ohx_dagster.config.settings import Settings
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.validation import validate_resources
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.run_request import STRATEGY_TAG, USERS_TAG, SyncRequest

PEOPLE = {"2022484408", "1503960366"}
ZONE = "America/Chicago"
HEART_RATE = "2022484408"  # the export's only person with heart rate (8,418 seconds)
WEIGHT = "6962181067"  # its most weighed person (30 weigh-ins)


def cut(fitabase_dir: Path, folder: Path, people: set[str]) -> Path:
    """The real export cut to a few people (fast, still the real layout and values)."""
    folder.mkdir()
    for path in fitabase_dir.glob("*.csv"):
        table = pd.read_csv(path, dtype={"Id": str})
        table[table["Id"].isin(people)].to_csv(folder / path.name, index=False)
    return folder


@pytest.fixture
def export(fitabase_dir: Path, tmp_path: Path) -> Path:
    return cut(fitabase_dir, tmp_path / "fitabase", PEOPLE)


def dev_defaults(monkeypatch: pytest.MonkeyPatch, home: Path) -> dict[str, str]:
    """scripts/dev's settings as a new user has them: OHX_HOME, nothing else of OHX_ but the
    tests' salt and the HL7 package folder the validator reads (no OHX_SOURCES,
    OHX_PARTITIONS_START, export settings or FHIR folder)."""
    for name in list(os.environ):
        kept = name in ("OHX_ERASURE_SALT", "OHX_FHIR_PACKAGES")
        if name.startswith(("OHX_", "DAGSTER_")) and not kept:
            monkeypatch.delenv(name)
    return {"OHX_HOME": str(home)}


def published(folder: Path) -> dict[str, list[dict]]:
    """The resources a day's manifest names, by type (every file of it read)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    found: dict[str, list[dict]] = defaultdict(list)
    for entry in manifest["output"]:
        body = Path(entry["url"].removeprefix("file://")).read_text()
        found[entry["type"]] += [json.loads(line) for line in body.splitlines()]
        assert len(body.splitlines()) == entry["count"]
    return found


def test_an_import_under_the_dev_defaults_publishes_every_day_itself(
    fitabase_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fitabase is not in scripts/dev's OHX_SOURCES: no Dagster run would publish the export, so
    the import does, every day, and says where; what it publishes is valid R5 holding exactly
    the file's heart rate, steps and weights."""
    home = tmp_path / "home"
    export = cut(fitabase_dir, tmp_path / "fitabase", {HEART_RATE, WEIGHT})
    env = dev_defaults(monkeypatch, home)
    imported = CliRunner().invoke(
        cli, ["import", "fitabase", str(export), "--timezone", ZONE], env=env
    )
    assert imported.exit_code == 0, (imported.output, imported.exception)
    fhir = home / "fhir"
    line = [x for x in imported.stdout.splitlines() if x.startswith("FHIR: ")]
    assert len(line) == 1, imported.stdout
    assert f"published by this import to {fhir}/<day>/fitabase/" in line[0]
    assert "'fitabase' is not in the running Dagster's OHX_SOURCES (simulated)" in line[0]
    assert "republish_sensor" not in imported.stdout  # nothing is left to the running Dagster

    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    assert store.unpublished_days("fitabase") == {}
    store.dispose()
    days = sorted(p.name for p in fhir.iterdir())
    assert f"{len(days)} days ({days[0]} .. {days[-1]})" in line[0]

    resources: list[dict] = []
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    weighed: list[float] = []
    for day in days:
        found = published(fhir / day / "fitabase")
        assert {"Observation", "Patient", "Provenance"} <= set(found), (day, set(found))
        resources += [r for kind in found.values() for r in kind]
        for observation in found["Observation"]:
            _, _, user_id, data_type, shape, *_ = observation["identifier"][0]["value"].split("|")
            if shape == "series":
                values = observation["valueSampledData"]["data"].split()
                samples[(user_id, data_type)] += [float(v) for v in values]
            elif data_type == "weight" and shape == "individual":
                assert user_id == WEIGHT
                weighed.append(observation["valueQuantity"]["value"])
    # Every resource, not the publisher's sample of each bucket.
    assert resources and validate_resources(resources) == []

    # The file's samples, each once, with their values.
    heart = pd.read_csv(fitabase_dir / "heartrate_seconds_merged.csv", dtype={"Id": str})
    heart = heart[heart["Id"] == HEART_RATE]["Value"]
    assert len(samples[(HEART_RATE, "heart_rate")]) == len(heart) > 8000
    assert sum(samples[(HEART_RATE, "heart_rate")]) == heart.sum()
    assert (WEIGHT, "heart_rate") not in samples
    steps = pd.read_csv(fitabase_dir / "hourlySteps_merged.csv", dtype={"Id": str})
    for user_id in (HEART_RATE, WEIGHT):
        mine = steps[steps["Id"] == user_id]["StepTotal"]
        assert sum(samples[(user_id, "steps")]) == mine.sum() > 0
    weights = pd.read_csv(fitabase_dir / "weightLogInfo_merged.csv", dtype={"Id": str})
    expected = sorted(weights[weights["Id"] == WEIGHT]["WeightKg"])
    assert len(weighed) == len(expected) == 30
    assert sorted(weighed) == pytest.approx(expected, abs=1e-6)


def test_an_import_leaves_the_days_inside_the_partitions_to_the_republish_sensor(
    fitabase_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fitabase in OHX_SOURCES, partitions from 2016-04-20: the import publishes the days before
    (no Dagster run can), and leaves the others unpublished, for the republish_sensor's refresh
    runs (test below), which the UI shows."""
    home = tmp_path / "home"
    export = cut(fitabase_dir, tmp_path / "fitabase", {HEART_RATE})
    env = {
        **dev_defaults(monkeypatch, home),
        "OHX_SOURCES": "simulated,fitabase",
        "OHX_FITABASE_DIR": str(export),
        "OHX_FITABASE_TZ": ZONE,
        "OHX_PARTITIONS_START": "2016-04-20",
    }
    imported = CliRunner().invoke(
        cli, ["import", "fitabase", str(export), "--timezone", ZONE], env=env
    )
    assert imported.exit_code == 0, (imported.output, imported.exception)
    first = date(2016, 4, 20)
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    left = store.unpublished_days("fitabase")
    store.dispose()
    days = {date.fromisoformat(p.name) for p in (home / "fhir").iterdir()}
    assert days and max(days) < first  # published by the import: the days before
    assert left and min(left) >= first  # the sensor's: every day from the first partition on
    line = [x for x in imported.stdout.splitlines() if x.startswith("FHIR: ")]
    assert len(line) == 1, imported.stdout
    assert f"FHIR: {len(days)} days ({min(days)} .. {max(days)}) published" in line[0]
    assert "outside the running Dagster's partitions (OHX_PARTITIONS_START=2016-04-20" in line[0]
    assert f"The running Dagster publishes {len(left)} changed days" in line[0]


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
    # Every day is the running Dagster's: the import publishes none of them.
    assert "FHIR: " not in imported.stdout and not (home / "fhir").exists()

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
