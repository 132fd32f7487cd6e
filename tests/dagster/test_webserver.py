"""The Dagster UI as a data engineer opens it: the real webserver on workspace.yaml, asked over
GraphQL (what the UI itself asks) for the assets, their partitions, checks, schedules, sensors."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]

QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    description
    isPartitioned
    partitionKeysByDimension { name partitionKeys }
    assetChecksOrError { ... on AssetChecks { checks { name } } }
  }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes { location { name } schedules { name cronSchedule } sensors { name } }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_bytes(
        (REPO / "deploy" / "dagster.yaml").read_bytes()
    )
    env = {
        **os.environ,
        "OHX_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "OHX_PARTITIONS_START": "2026-11-01",
    }
    command = [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml",
               "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    log = (tmp_path / "webserver.log").open("wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the webserver did not answer within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_ui_serves_assets_partitions_checks_schedules_and_sensors(webserver: str) -> None:
    answer = httpx.post(f"{webserver}/graphql", json={"query": QUERY}, timeout=120)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    for name in (
        "raw_health_records",
        "hourly_aggregates",
        "daily_aggregates",
        "fhir_observations",
    ):
        node = nodes[name]
        assert node["isPartitioned"] and node["description"] and node["groupName"]
        dimensions = {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}
        assert dimensions["source"] == ["simulated"]
        assert dimensions["day"][0] == "2026-11-01"
        assert node["assetChecksOrError"]["checks"], f"{name} has no checks"
    (repository,) = data["repositoriesOrError"]["nodes"]
    assert repository["location"]["name"] == "ohx"
    schedules = {s["name"]: s["cronSchedule"] for s in repository["schedules"]}
    assert schedules == {
        "hourly_incremental_sync": "5 * * * *",
        "daily_close": "20 * * * *",
        "daily_retention": "45 3 * * *",
        "sync_status_schedule": "*/15 * * * *",
    }
    assert {s["name"] for s in repository["sensors"]} == {
        "webhook_sensor",
        "new_user_sensor",
        "republish_sensor",
        "fhir_exports",
    }
