"""Issue 3's acceptance test: the real `dagster asset materialize` CLI on the real Fitabase export.

Runs exactly the command of the issue in a subprocess, reads the NDJSON it publishes, and checks
every hourly heart-rate Observation of 2016-04-01 against an independent pandas computation over
the CSV. Running the command a second time must not change a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"
STATISTICS = "http://hl7.org/fhir/observation-statistics"
DAY = "2016-04-01"


def materialize(env: dict[str, str]) -> None:
    command = [
        str(DAGSTER),
        "asset",
        "materialize",
        "-m",
        "ohx_dagster.definitions",
        "--select",
        "*",
        "--partition",
        f"{DAY}|fitabase",
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stdout + done.stderr


def expected_hourly_heart_rate(csv: Path) -> pd.DataFrame:
    """Per user and wall-clock hour of DAY: mean, min, max, count (OHX_FITABASE_TZ is UTC)."""
    table = pd.read_csv(csv, dtype={"Id": "string"})
    table["Time"] = pd.to_datetime(table["Time"], format="%m/%d/%Y %I:%M:%S %p")
    table = table[table["Time"].dt.strftime("%Y-%m-%d") == DAY]
    table["hour"] = table["Time"].dt.floor("h")
    stats = table.groupby(["Id", "hour"])["Value"].agg(["mean", "min", "max", "count"])
    return stats


def statistic(observation: dict, code: str) -> float | int:
    (component,) = [
        c
        for c in observation["component"]
        if any(x["system"] == STATISTICS and x["code"] == code for x in c["code"]["coding"])
    ]
    if "valueQuantity" in component:
        assert component["valueQuantity"]["code"] == "/min"
        return component["valueQuantity"]["value"]
    return component["valueInteger"]


@pytest.fixture
def cli_env(tmp_path: Path, fitabase_dir: Path) -> dict[str, str]:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHX_", "DAGSTER_"))}
    env.update(
        {
            # As the issue writes it: relative to the repository (CI clones it beside shared/).
            "OHX_FITABASE_DIR": os.path.relpath(fitabase_dir, REPO),
            "OHX_FITABASE_TZ": "UTC",
            "OHX_PARTITIONS_START": "2016-03-01",
            "OHX_HOME": str(tmp_path / "ohx_home"),
            "DAGSTER_HOME": str(dagster_home),
        }
    )
    assert env["OHX_FITABASE_DIR"] == os.path.join("..", "shared", "data", "fitabase")
    return env


def test_cli_materialize_fitabase_matches_pandas_and_is_byte_stable(
    cli_env: dict[str, str], fitabase_dir: Path
) -> None:
    materialize(cli_env)
    directory = Path(cli_env["OHX_HOME"]) / "fhir" / DAY / "fitabase"
    first = ndjson_files(directory)
    observations = [
        json.loads(line)
        for name, body in first.items()
        if name.startswith("Observation.")
        for line in body.splitlines()
    ]

    # Hourly aggregates: heart rate with a valueQuantity (the series Observations that they
    # are derived from carry valueSampledData instead).
    heart_rate = [
        o
        for o in observations
        if o["code"]["coding"][0]["system"] == "http://loinc.org"
        and o["code"]["coding"][0]["code"] == "8867-4"
        and "valueQuantity" in o
    ]
    expected = expected_hourly_heart_rate(fitabase_dir / "heartrate_seconds_merged.csv")
    assert len(expected) == 12  # hours 07..20 of the one user, 12 of them with data

    found = {}
    for observation in heart_rate:
        period = observation["effectivePeriod"]
        start = pd.Timestamp(period["start"])
        assert pd.Timestamp(period["end"]) - start == pd.Timedelta(hours=1)
        patient = observation["subject"]["reference"]
        assert patient.startswith("Patient/")
        found[start.tz_convert("UTC").tz_localize(None)] = observation
    users = {o["subject"]["reference"] for o in heart_rate}
    assert len(users) == expected.index.get_level_values("Id").nunique() == 1
    assert sorted(found) == sorted(expected.index.get_level_values("hour"))

    for (_user, hour), row in expected.iterrows():
        observation = found[hour]
        assert observation["status"] == "final"
        # Published to the 0.1 /min a heart-rate statistic carries (fhir/codes.py DECIMALS).
        assert observation["valueQuantity"]["value"] == round(row["mean"], 1)
        assert observation["valueQuantity"]["code"] == "/min"
        assert observation["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert statistic(observation, "average") == round(row["mean"], 1)
        assert statistic(observation, "minimum") == row["min"]
        assert statistic(observation, "maximum") == row["max"]
        assert statistic(observation, "count") == row["count"]

    materialize(cli_env)
    second = ndjson_files(directory)
    assert {n: hashlib.sha256(b).hexdigest() for n, b in second.items()} == {
        n: hashlib.sha256(b).hexdigest() for n, b in first.items()
    }


def ndjson_files(directory: Path) -> dict[str, bytes]:
    """The files the partition's manifest names, by name."""
    manifest = json.loads((directory / "manifest.json").read_text())
    names = [entry["url"].rsplit("/", 1)[-1] for entry in manifest["output"]]
    assert names and set(names) == {p.name for p in directory.glob("*.ndjson")}
    return {name: (directory / name).read_bytes() for name in names}
