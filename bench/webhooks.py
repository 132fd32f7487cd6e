"""Load test of the webhook receiver: real uvicorn on loopback, SQLite store in a temp dir.

    .venv/bin/python bench/webhooks.py [--events 20000] [--clients 16] [--duplicates 2000]

For each commit mode (group commit, the default; and one transaction per request, for
comparison) it starts the receiver in a child process, sends `--events` distinctly keyed signed
simulated notifications plus `--duplicates` re-deliveries of already sent ones (freshly signed,
as a provider's retry would be) from `--clients` concurrent keep-alive connections, and prints
accepted events/s and p50/p99/max latency. Then it checks the inbox: every acknowledged event is
there exactly once (0 lost, 0 duplicated) and every duplicate was answered 2xx without a row.
Bounded: loopback only, a fixed number of requests, and `--max-seconds` per mode.

`--mode versus` measures the receiver (group commit) against issue 21's baseline, a trivial
Starlette handler at equal durability (`serve_trivial`: it parses the body and commits the event
to the same inbox through the same group commit, nothing else), on the same load, and prints the
ratio of their accepted events per second (target: at least 0.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from ohx_dagster.config.receiver import ReceiverLimits, WebhookSecrets
from ohx_dagster.receiver.simulator import endpoint, signed_request
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox

SECRET = "bench-simulated-secret"
TYPES = ("heart_rate", "steps", "rr_intervals", "spo2")


LIMITS = ReceiverLimits(rate_per_minute=0, max_connections_per_address=0)


def _serve_printing_port(app: Any, limits: ReceiverLimits) -> None:
    """Serve `app` on an ephemeral port; print `PORT <n>` once it listens."""
    import uvicorn

    from ohx_dagster.receiver.serve import server_config

    server = uvicorn.Server(server_config(app, limits))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                return
            await asyncio.sleep(0.01)
        print("PORT", server.servers[0].sockets[0].getsockname()[1], flush=True)
        await task

    asyncio.run(run())


def serve(database_url: str, group_commit: bool) -> None:
    """Child process: the receiver on an ephemeral port; prints `PORT <n>` once it listens.

    The production limits, except the per-address ones: every load client here is 127.0.0.1,
    which the rate limit would otherwise answer with 429 after its burst."""
    from ohx_dagster.receiver.app import create_app

    store = RecordStore(database_url)
    secrets = WebhookSecrets(simulated_secret=SECRET)
    app = create_app(store, secrets, limits=LIMITS, group_commit=group_commit)
    _serve_printing_port(app, LIMITS)


def serve_trivial(database_url: str) -> None:
    """Child process: the baseline of issue 21, a trivial Starlette handler at equal durability:
    it parses the body and commits the event to the same inbox through the same group commit,
    and does nothing else (no signature, limits, people or payload checks)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ohx_dagster.providers.webhook.events import NewEvent
    from ohx_dagster.receiver.app import GroupCommitter
    from ohx_dagster.receiver.simulator import ROUTE

    committer = GroupCommitter(Inbox(RecordStore(database_url)))

    async def receive(request: Request) -> JSONResponse:
        payload = orjson.loads(await request.body())
        event = NewEvent("simulated", payload["event_id"], payload["user_id"],
                         payload["data_type"], datetime.fromisoformat(payload["occurred_at"]),
                         {})  # fmt: skip
        new = await committer.add([event])
        return JSONResponse({"accepted": new, "duplicates": 1 - new})

    app = Starlette(routes=[Route(ROUTE, receive, methods=["POST"])])
    _serve_printing_port(app, LIMITS)


@dataclass
class Job:
    event_id: str
    user_id: str
    data_type: str
    duplicate: bool


@dataclass
class Outcome:
    latencies_s: list[float] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    duplicate_answers: int = 0
    failures: list[str] = field(default_factory=list)


def plan(events: int, duplicates: int, seed: int = 7) -> list[Job]:
    """Distinct events, with re-deliveries of earlier ones mixed in behind their originals."""
    rng = random.Random(seed)
    jobs = [
        Job(f"bench-{i:06d}", f"sim-{i % 50:03d}", TYPES[i % len(TYPES)], False)
        for i in range(events)
    ]
    for _ in range(duplicates):
        position = rng.randrange(min(200, len(jobs)), len(jobs) + 1)
        original = jobs[rng.randrange(0, max(1, position - 100))]
        if original.duplicate:
            continue
        jobs.insert(position, Job(original.event_id, original.user_id, original.data_type, True))
    return jobs


async def load(url: str, jobs: list[Job], clients: int, deadline: float) -> Outcome:
    """`clients` keep-alive HTTP/1.1 connections sending the jobs one request at a time each.

    A few lines of asyncio streams instead of httpx: httpx's per-request overhead is about three
    times the receiver's, and on a small machine the load generator, not the receiver, would be
    what is measured."""
    outcome = Outcome()
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    occurred = datetime.now(UTC) - timedelta(minutes=1)
    parts = httpx.URL(endpoint(url))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        try:
            while not queue.empty() and time.monotonic() < deadline:
                job = queue.get_nowait()
                body, headers = signed_request(
                    SECRET, job.user_id, job.data_type, occurred, event_id=job.event_id
                )
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                request = (
                    f"POST {parts.raw_path.decode()} HTTP/1.1\r\nhost: {parts.host}\r\n"
                    f"content-length: {len(body)}\r\n{head}\r\n"
                ).encode() + body
                started = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                outcome.latencies_s.append(time.perf_counter() - started)
                status = int(status_line.split()[1]) if status_line else 0
                if status != 200:
                    outcome.failures.append(f"{job.event_id}: {status} {answer[:80]!r}")
                    continue
                result = orjson.loads(answer)
                if result["accepted"] == 1:
                    outcome.acknowledged.add(job.event_id)
                elif result["duplicates"] == 1:
                    outcome.duplicate_answers += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            outcome.failures.append(f"connection failed: {exc!r}")
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return outcome


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_mode(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """`mode`: group (the receiver, group commit), single (the receiver, a transaction per
    request) or trivial (the baseline handler)."""
    group_commit = mode != "single"
    with tempfile.TemporaryDirectory(prefix="ohx-bench-") as tmp:
        database_url = f"sqlite:///{Path(tmp) / 'inbox.db'}"
        RecordStore(database_url).dispose()  # schema created before the server starts
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                database_url,
                "--group-commit",
                str(group_commit),
                *(["--trivial"] if mode == "trivial" else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = child.stdout.readline() if child.stdout else ""
            if not line.startswith("PORT "):
                raise SystemExit(f"receiver did not start: {line!r}")
            url = f"http://127.0.0.1:{int(line.split()[1])}"
            jobs = plan(args.events, args.duplicates)
            unique = {j.event_id for j in jobs}
            sent_duplicates = sum(j.duplicate for j in jobs)
            server_cpu_before = cpu_seconds(child.pid)
            client_cpu_before = time.process_time()
            started = time.monotonic()
            outcome = asyncio.run(load(url, jobs, args.clients, started + args.max_seconds))
            elapsed = time.monotonic() - started
            client_cpu = time.process_time() - client_cpu_before
            server_cpu = cpu_seconds(child.pid) - server_cpu_before
        finally:
            child.terminate()
            child.wait(timeout=30)

        store = RecordStore(database_url)
        with store.read() as conn:
            rows = conn.execute(
                sa.text("SELECT event_key FROM webhook_inbox WHERE provider = 'simulated'")
            ).scalars()
            stored = list(rows)
        counts = Inbox(store).counts()
        store.dispose()

    stored_set = set(stored)
    lost = len(outcome.acknowledged - stored_set)
    duplicated = len(stored) - len(stored_set)
    unacknowledged = len(unique - outcome.acknowledged)
    name = {
        "group": "the receiver, group commit",
        "single": "the receiver, one transaction per request",
        "trivial": "a trivial Starlette handler, same inbox and group commit",
    }[mode]
    lat = outcome.latencies_s
    print(f"\n== {name}: {len(jobs)} requests from {args.clients} clients in {elapsed:.1f} s")
    print(f"   accepted events/s : {len(outcome.acknowledged) / elapsed:,.0f}")
    print(f"   requests/s        : {len(lat) / elapsed:,.0f}")
    print(
        f"   latency ms        : p50 {percentile(lat, 50) * 1e3:.1f}  "
        f"p99 {percentile(lat, 99) * 1e3:.1f}  max {max(lat) * 1e3:.1f}"
    )
    print(f"   CPU s             : receiver {server_cpu:.1f}, load clients {client_cpu:.1f}")
    print(
        f"   inbox             : {len(stored)} rows for {len(unique)} distinct events "
        f"({counts['pending']} pending)"
    )
    print(
        f"   duplicates        : {sent_duplicates} re-delivered, "
        f"{outcome.duplicate_answers} answered 2xx as duplicates, 0 rows added"
        if len(stored) == len(unique)
        else f"   duplicates        : {sent_duplicates} re-delivered, inbox has extra rows!"
    )
    print(
        f"   lost {lost}, duplicated {duplicated}, unacknowledged {unacknowledged}, "
        f"failed requests {len(outcome.failures)}"
    )
    for failure in outcome.failures[:5]:
        print("   failure:", failure)
    ok = (
        lost == 0
        and duplicated == 0
        and unacknowledged == 0
        and not outcome.failures
        and outcome.duplicate_answers == sent_duplicates
        and len(stored) == len(unique)
    )
    return {"ok": float(ok), "p99_ms": percentile(lat, 99) * 1e3,
            "events_per_s": len(outcome.acknowledged) / elapsed, "receiver_cpu_s": server_cpu,
            "requests": len(lat)}  # fmt: skip


def versus(events: int = 20_000, duplicates: int = 2_000, clients: int = 16) -> dict[str, Any]:
    """The receiver against the trivial handler on the same load (scripts/bench's row)."""
    args = argparse.Namespace(events=events, duplicates=duplicates, clients=clients,
                              max_seconds=120.0)  # fmt: skip
    receiver, trivial = bench_mode("group", args), bench_mode("trivial", args)
    return {"receiver": receiver, "trivial": trivial, "events": events, "clients": clients,
            "ratio": receiver["events_per_s"] / trivial["events_per_s"]}  # fmt: skip


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The report's row (bench/run.py)."""
    receiver, trivial, ratio = result["receiver"], result["trivial"], result["ratio"]
    return [
        (
            f"webhook receiver (`ohx-webhooks`, group commit), {result['events']:,} signed events "
            f"from {result['clients']} keep-alive clients, accepted events/s",
            f"{receiver['events_per_s']:,.0f}/s, p99 {receiver['p99_ms']:.0f} ms, "
            f"{receiver['receiver_cpu_s']:.1f} CPU-s",
            f"a trivial Starlette handler, same inbox and group commit: "
            f"{trivial['events_per_s']:,.0f}/s, p99 {trivial['p99_ms']:.0f} ms",
            f"{ratio:.2f}x",
            ">= 0.5x",
            "met" if ratio >= 0.5 and receiver["ok"] and trivial["ok"] else "**missed**",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--duplicates", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument(
        "--mode", choices=["both", "group", "single", "trivial", "versus"], default="both"
    )
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--group-commit", default="True", help=argparse.SUPPRESS)
    parser.add_argument("--trivial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.trivial:
            serve_trivial(args.serve)
        else:
            serve(args.serve, args.group_commit == "True")
        return 0
    modes = {"both": ["group", "single"], "group": ["group"], "single": ["single"],
             "trivial": ["trivial"], "versus": ["group", "trivial"]}[args.mode]  # fmt: skip
    results = [bench_mode(mode, args) for mode in modes]
    if args.mode == "versus":
        ratio = results[0]["events_per_s"] / results[1]["events_per_s"]
        print(f"\nreceiver / trivial handler, accepted events/s: {ratio:.2f}x (target >= 0.5x)")
    passed = all(r["ok"] for r in results) and all(r["p99_ms"] < 1_000 for r in results)
    print("\nPASS" if passed else "\nFAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
