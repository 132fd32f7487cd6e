"""`ohx-realtime` as the process a deployment runs: a signed webhook to a real uvicorn receiver is
answered by the worker process, reported to the Dagster instance as materializations, and the
worker stops cleanly on SIGTERM. The code location leaves the webhook sensor out in worker mode.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from ohx_dagster.config.receiver import WebhookSecrets
from ohx_dagster.config.settings import Settings
from ohx_dagster.definitions import build_definitions
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.receiver.simulator import send_event
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox

SECRET = "realtime-process-secret"
WORKER = [sys.executable, "-m", "ohx_dagster.realtime.process"]


def environment(tmp_path: Path, mode: str = "worker") -> dict[str, str]:
    home = tmp_path / "dagster"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    today = datetime.now(UTC).date()
    return {
        "OHX_HOME": str(tmp_path),
        "OHX_DATABASE_URL": f"sqlite:///{tmp_path / 'ohx.db'}",
        "OHX_PARTITIONS_START": (today - timedelta(days=3)).isoformat(),
        "OHX_SIMULATED_HR_HZ": "0.2",
        "OHX_REALTIME": mode,
        "DAGSTER_HOME": str(home),
    }


def test_worker_mode_leaves_the_webhook_sensor_out(tmp_path) -> None:
    names = {s.name for s in build_definitions(Settings.from_env(environment(tmp_path))).sensors}
    assert "webhook_sensor" not in names and "new_user_sensor" in names
    runs = Settings.from_env(environment(tmp_path, "runs"))
    assert "webhook_sensor" in {s.name for s in build_definitions(runs).sensors}


def test_the_worker_refuses_to_run_beside_the_webhook_sensor(tmp_path) -> None:
    env = {**os.environ, **environment(tmp_path, "runs")}
    done = subprocess.run([*WORKER, "--once"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "OHX_REALTIME" in done.stderr
    bad = {**env, "OHX_REALTIME": "threads"}
    done = subprocess.run([*WORKER, "--once"], env=bad, capture_output=True, text=True)
    assert done.returncode == 1 and "OHX_REALTIME='threads'" in done.stderr


def test_a_webhook_is_answered_by_the_worker_and_reported_to_dagster(tmp_path) -> None:
    env = environment(tmp_path)
    store = RecordStore(env["OHX_DATABASE_URL"])
    users = SimulatedSource(3).discover_users()
    store.add_users(users)
    stats = tmp_path / "stats.jsonl"
    worker = subprocess.Popen(
        [*WORKER, "--interval", "0.2", "--report-every", "3600", "--stats", str(stats)],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        now = datetime.now(UTC)
        moment = max(now - timedelta(minutes=2), now.replace(hour=0, minute=0, second=0))
        with serve_in_thread(create_app(store, WebhookSecrets(simulated_secret=SECRET))) as url:
            answer = send_event(url, SECRET, users[0].user_id, "heart_rate", moment)
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 120
        while Inbox(store).counts()["dispatched"] < 1:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "the worker did not answer within 120 s"
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    assert "stopping after the step under way" in errors and "stopped" in errors
    assert "1 events in 1 partitions" in errors
    assert users[0].user_id not in errors  # counts only, nobody named
    assert stats.read_text().count("\n") == 1
    # Reported when it stopped (--report-every is an hour): the partition's four assets.
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    partition = f"{moment.date().isoformat()}|simulated"
    for asset in (
        "raw_health_records",
        "hourly_aggregates",
        "daily_aggregates",
        "fhir_observations",
    ):
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, asset
        assert event.dagster_event.partition == partition
