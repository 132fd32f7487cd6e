"""The realtime path as a deployment runs it: webhooks at a steady rate through the receiver and
the realtime worker, as their own processes, for minutes.

    .venv/bin/python -m bench.worker [--people 10000] [--rate 167] [--seconds 600]

- `ohx-webhooks` (uvicorn) and `ohx-realtime` (OHX_REALTIME=worker) run as processes on a SQLite
  store in a temp dir, the simulator at 1 Hz; everyone connected and synced up to the start (their
  coverage as a finished sync leaves it, no records: the bench is the realtime path from there).
- This process posts signed simulated webhooks, `rate` per second, each for the next person in
  turn (10,000 people at one a minute each is 167 per second), for `seconds`; then it gives the
  worker up to DRAIN_S to answer what is left.
- Figures: CPU seconds of the receiver per event it accepted plus the worker's per event it
  answered (from /proc, so the poster's own CPU is not counted); the worker's latency from the
  receiver's commit to publication (p50, p95, from its --stats lines); events lost = posted -
  dispatched - still pending - ignored (must be 0); the backlog still pending after the drain.
- Baseline, in the same run: the receiver alone on a store of its own, the same rate and people
  for BASELINE_S seconds, no worker (its CPU per event: what accepting an event costs at all).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import REPO
from ohx_dagster.core.times import DAY_US, now_us
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.receiver.simulator import endpoint, signed_request
from ohx_dagster.storage.schema import coverage
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox

SECRET = "bench-realtime-secret"
DRAIN_S = 60.0
BASELINE_S = 60.0
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _environment(home: Path, people: int) -> dict[str, str]:
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    today = datetime.now(UTC).date()
    return {
        **os.environ,
        "OHX_HOME": str(home),
        "OHX_DATABASE_URL": f"sqlite:///{home / 'ohx.db'}",
        "OHX_PARTITIONS_START": (today - timedelta(days=3)).isoformat(),
        "OHX_SIMULATED_USERS": str(people),
        "OHX_SIMULATED_HR_HZ": "1",
        "OHX_SIMULATED_WEBHOOK_SECRET": SECRET,
        "OHX_REALTIME": "worker",
        # One client address posts every event: the per-address limit is for the internet.
        "OHX_WEBHOOK_RATE_PER_MINUTE": "0",
        "DAGSTER_HOME": str(home / "dagster"),
    }


def _seed(database_url: str, people: int) -> list[str]:
    """Everyone connected and synced up to now: their coverage of the last 31 days is written as
    a finished sync would leave it (no records: the bench is the realtime path from here on)."""
    store = RecordStore(database_url)
    users = SimulatedSource(people).discover_users()
    store.add_users(users)
    now = now_us()
    start = now - 31 * DAY_US
    rows = [
        {"provider": "simulated", "user_id": u.user_id, "data_type": t.value,
         "start_us": start, "end_us": now}
        for u in users
        for t in sorted(u.enabled_types & SUPPORTED_TYPES["simulated"])
    ]  # fmt: skip
    with store.write() as conn:
        conn.execute(coverage.insert(), rows)
    store.dispose()
    return [u.user_id for u in users]


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the receiver exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the receiver did not answer /healthz within 120 s")


def _post(url: str, people: list[str], rate: float, seconds: float, start: int) -> dict[str, Any]:
    """Post `rate` events a second for `seconds`, people in turn from `start`; the counts."""
    target = endpoint(url)
    posted = refused = 0
    began = time.monotonic()
    with httpx.Client(timeout=30) as client:
        while True:
            elapsed = time.monotonic() - began
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1
            while posted + refused < due:
                person = people[(start + posted + refused) % len(people)]
                body, headers = signed_request(SECRET, person, "heart_rate", datetime.now(UTC))
                answer = client.post(target, content=body, headers=headers)
                if answer.status_code == 200:
                    posted += 1
                else:
                    refused += 1
            time.sleep(max(0.0, (posted + refused) / rate - (time.monotonic() - began)))
    wall = time.monotonic() - began
    return {"posted": posted, "refused": refused, "wall_s": wall, "rate": posted / wall}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _baseline(home: Path, people: int, rate: float, seconds: float) -> dict[str, Any]:
    """The receiver alone on a store of its own: its CPU for `seconds` of the same events."""
    env = _environment(home, people)
    ids = _seed(env["OHX_DATABASE_URL"], people)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "ohx-webhooks"), "--port", str(port), "--log-level", "warning"]
    with _process(command, env, home / "receiver.log") as receiver:
        _wait_healthy(url, receiver, home / "receiver.log")
        before = _cpu_s(receiver.pid)
        posted = _post(url, ids, rate, seconds, start=0)
        posted["receiver_cpu_s"] = _cpu_s(receiver.pid) - before
    return posted


def run(people: int = 10_000, rate: float = 167.0, seconds: float = 600.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ohx-bench-realtime-") as tmp:
        base = _baseline(Path(tmp) / "baseline", people, rate, min(BASELINE_S, seconds))
        home = Path(tmp) / "worker"
        env = _environment(home, people)
        ids = _seed(env["OHX_DATABASE_URL"], people)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        receiver_cmd = [str(BIN / "ohx-webhooks"), "--port", str(port), "--log-level", "warning"]
        stats = home / "worker-stats.jsonl"
        worker_cmd = [str(BIN / "ohx-realtime"), "--stats", str(stats), "--log-level", "warning"]
        store = RecordStore(env["OHX_DATABASE_URL"])
        with (
            _process(receiver_cmd, env, home / "receiver.log") as receiver,
            _process(worker_cmd, env, home / "worker.log") as worker,
        ):
            _wait_healthy(url, receiver, home / "receiver.log")
            time.sleep(10)  # the worker loads the definitions once, before its first step
            r0, w0 = _cpu_s(receiver.pid), _cpu_s(worker.pid)
            load = _post(url, ids, rate, seconds, start=0)
            drained_at = time.monotonic()
            while Inbox(store).counts()["pending"] and time.monotonic() - drained_at < DRAIN_S:
                time.sleep(0.5)
            drain_s = time.monotonic() - drained_at
            receiver_cpu, worker_cpu = _cpu_s(receiver.pid) - r0, _cpu_s(worker.pid) - w0
            worker_alive = worker.poll() is None
            counts = Inbox(store).counts()
        store.dispose()
        steps = [orjson.loads(line) for line in stats.read_bytes().splitlines() if line]
        latencies = [x for s in steps for x in s["latencies_s"]]
        answered = sum(s["events"] - s["ignored"] for s in steps)
        lost = load["posted"] - counts["dispatched"] - counts["pending"] - counts["ignored"]
        # The receiver's CPU per event it accepted, the worker's per event it answered (a step
        # under way when the clock stops is counted, its events not: an overestimate, small).
        per_event = receiver_cpu / max(load["posted"], 1) + worker_cpu / max(answered, 1)
        base_per_event = base["receiver_cpu_s"] / max(base["posted"], 1)
        return {
            "people": people,
            "rate": rate,
            "seconds": seconds,
            "posted": load["posted"],
            "refused": load["refused"],
            "posted_rate": load["rate"],
            "answered": answered,
            "ignored": counts["ignored"],
            "pending_after_drain": counts["pending"],
            "drain_s": drain_s,
            "lost": lost,
            "worker_alive": worker_alive,
            "receiver_cpu_s": receiver_cpu,
            "worker_cpu_s": worker_cpu,
            "cpu_per_event_s": per_event,
            "baseline": base,
            "baseline_receiver_cpu_per_event_s": base_per_event,
            "ratio_to_receiver_alone": per_event / base_per_event,
            "latency_p50_s": _quantile(latencies, 0.5),
            "latency_p95_s": _quantile(latencies, 0.95),
            "steps": len(steps),
            "mean_events_per_step": answered / max(len(steps), 1),
            "records": sum(s["records"] for s in steps),
            "resources": sum(s["resources"] for s in steps),
        }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report's rows (bench/run.py)."""
    r = result  # the rate is what the poster reached beside the two processes on this machine
    per_event = r["cpu_per_event_s"]
    latency_met = r["latency_p95_s"] <= 60 and r["pending_after_drain"] == 0
    return [
        (
            f"realtime: {r['people']:,} people, {r['posted_rate']:.0f} webhooks/s for "
            f"{r['seconds'] / 60:.0f} min through `ohx-webhooks` and `ohx-realtime` (processes)",
            f"{per_event:.4f} CPU-s per person-event all-in (receiver "
            f"{r['receiver_cpu_s']:.0f} CPU-s for {r['posted']:,} accepted, worker "
            f"{r['worker_cpu_s']:.0f} CPU-s for {r['answered']:,} answered); {r['lost']} lost; "
            f"{r['pending_after_drain']:,} still pending {r['drain_s']:.0f} s after the last post",
            f"{r['baseline_receiver_cpu_per_event_s']:.4f} CPU-s per event: the receiver alone",
            f"{r['ratio_to_receiver_alone']:.1f}x",
            "<= 0.01 CPU-s per event",
            "met" if per_event <= 0.01 else "**missed**",
        ),
        (
            "realtime: webhook to FHIR, from the receiver's commit to the worker's publication",
            f"p50 {r['latency_p50_s']:.1f} s, p95 {r['latency_p95_s']:.1f} s "
            f"({r['answered']:,} events answered in {r['steps']} steps, "
            f"{r['mean_events_per_step']:.0f} a step)",
            "-",
            "-",
            "p95 <= 60 s, nothing left",
            "met" if latency_met else "**missed**",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=167.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    result = run(args.people, args.rate, args.seconds)
    print(json.dumps(result, indent=2))
    for row in rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
