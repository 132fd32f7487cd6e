"""Issue 10's benchmarks in one run, each figure next to its baseline measured in the same run.

    scripts/bench                     # about 20 minutes on 2 cores: bench/REPORT.md, throughput.png
    scripts/bench --only ingest,push  # some of them
    scripts/bench --history-days 7    # a shorter history (the report says it was scaled)

| benchmark | module | figure | baseline (same run) | target |
|---|---|---|---|---|
| ingest | ingest.py | commit of 1 M heart-rate samples | raw bulk load of the rows | <= 2.0x |
| bytes | ingest.py | bytes stored per dense sample | bytes per row of that table | <= 20 B |
| chain | chain.py | 10 people x 1 day, Dagster run, net CPU | rows into plain SQLite | <= 1.0x |
| memory | chain.py | peak RSS of the 50-person run | - | < 1 GiB |
| push | push.py | a push run in a partition of 50 | the same in one of 1 | <= 1.5x |
| history | history.py | 10 people x 30 days, week-long runs | a run with no work | < 10 min |
| sweep | chain.py | throughput at 1, 5, 10, 25, 50 people | - | the plot |
| process | process.py | an empty run as its own process | `import dagster` as one | <= 1.5x |
| realtime | worker.py | 10,000 people, 167 events/s, 10 min | the receiver alone | <= 0.01 CPU-s |
| export | export.py | `$export` of 100 people x 1 day, as its run | reading the NDJSON | - |
| receiver | webhooks.py | accepted events/s | a trivial handler, same commit | >= 0.5x |

Nothing here asserts: the report says which targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import chain, export, history, ingest, process, push, webhooks, worker
from bench.common import REPO

BENCH = REPO / "bench"
REPORT = BENCH / "REPORT.md"
PLOT = BENCH / "throughput.png"
SIZES = (1, 5, 10, 25, 50)
GIB = 1024**3


CHAIN_REPEATS = 5


def _listed(figures: list[float] | None) -> str:
    return ", ".join(f"{f:.2f}" for f in figures or []) or "1"


def _net_cpu_s(result: dict[str, Any]) -> float:
    return result["run"]["cpu_s"] - result["fixed"]["cpu_s"]


def sweep(sizes: tuple[int, ...]) -> dict[str, Any]:
    """One worker process per partition size (the plot, the memory figure), then the target's
    figure: CHAIN_REPEATS pairs of a 10-person worker and the baseline load of the samples it
    stored, run right after it. One CPU figure moves by a fifth with what else this shared
    machine runs; measured in pairs, the chain and its baseline see the same load, and the
    medians of the pairs are compared."""
    points = []
    for users in sizes:
        result, children_kib = chain.in_child(["--users", str(users), "--hz", "1"])
        result["children_maxrss_kib"] = children_kib
        points.append(result)
        print(
            f"  chain {users:>2} people: {result['samples']:,} samples, run "
            f"{result['run']['cpu_s']:.1f} CPU-s, empty run {result['fixed']['cpu_s']:.1f} "
            f"CPU-s",
            flush=True,
        )
    baseline = None
    if 10 in sizes:
        keep = Path(os.environ.get("TMPDIR", "/tmp")) / f"ohx-bench-chain10-{os.getpid()}"
        repeats, loads = [], []
        for repeat in range(CHAIN_REPEATS):
            home = keep / str(repeat)
            home.mkdir(parents=True)
            result, _ = chain.in_child(["--users", "10", "--hz", "1", "--keep", str(home)])
            load, _ = chain.in_child(["--baseline", str(home), "--loads", "1"])
            repeats.append(result)
            loads.append(load)
            print(
                f"  chain 10 people, pair {repeat + 1}: net {_net_cpu_s(result):.2f} CPU-s, "
                f"baseline {load['cpu_s']:.2f} CPU-s",
                flush=True,
            )
        shutil.rmtree(keep)
        repeats.sort(key=_net_cpu_s)
        median = dict(repeats[len(repeats) // 2])
        median["net_cpu_s_repeats"] = [round(_net_cpu_s(r), 3) for r in repeats]
        median["children_maxrss_kib"] = points[sizes.index(10)]["children_maxrss_kib"]
        points[sizes.index(10)] = median
        loads.sort(key=lambda b: b["cpu_s"])
        baseline = dict(loads[len(loads) // 2])
        baseline["cpu_s_repeats"] = [round(b["cpu_s"], 3) for b in loads]
    return {"points": points, "baseline": baseline}


def plot(points: list[dict[str, Any]], baseline: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    users = [p["users"] for p in points]
    net = [p["samples"] / max(p["run"]["cpu_s"] - p["fixed"]["cpu_s"], 1e-9) for p in points]
    gross = [p["samples"] / p["run"]["cpu_s"] for p in points]
    wall = [p["samples"] / p["run"]["wall_s"] for p in points]
    figure, axes = plt.subplots(figsize=(7.5, 5), dpi=110)
    axes.plot(users, net, "o-", label="chain, CPU net of a run with no one")
    axes.plot(users, gross, "s-", label="chain, CPU of the run")
    axes.plot(users, wall, "^--", label="chain, wall clock of the run")
    if baseline:
        axes.axhline(
            baseline["rows"] / baseline["cpu_s"],
            color="grey",
            linestyle=":",
            label="baseline: rows upserted into plain SQLite (CPU)",
        )
    axes.set_xlabel("people per partition (1 Hz heart rate, one day each)")
    axes.set_ylabel("samples per second")
    axes.set_xticks(users)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes.set_title("Whole chain through a Dagster run: throughput against partition size")
    figure.tight_layout()
    figure.savefig(PLOT)
    plt.close(figure)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks (issue 10: scale)",
        "",
        "Written by `scripts/bench` on "
        f"{results['started']} in {results['elapsed_s'] / 60:.1f} min. Every ratio is taken "
        "against a baseline measured in this same run, on this machine.",
        *(
            [
                "",
                "Measured again in a later run of `scripts/bench --only ... --update` (each with "
                "its own baselines): "
                + "; ".join(f"{name} at {when}" for name, when in sorted(results["rerun"].items()))
                + ".",
            ]
            if results.get("rerun")
            else []
        ),
        "",
        f"- machine: {results['machine']['cores']} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- load average (1, 5, 15 min) at start: {_load(results['load_start'])}; at end: "
        f"{_load(results['load_end'])} (other people's tests share this machine: wall-clock "
        "figures move with it, CPU seconds much less)",
        "",
        "| figure | this run | baseline (same run) | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    ingest_result = results.get("ingest")
    if ingest_result:
        for name, label in (
            ("sqlite", "SQLite executemany upsert"),
            ("postgresql", "PostgreSQL COPY"),
        ):
            figures = ingest_result.get(name)
            if not figures:
                continue
            rows.append(
                (
                    f"ingest 1 M samples ({name}): `RecordStore.commit`",
                    f"{figures['store_s']:.2f} s",
                    f"{figures['raw_s']:.2f} s ({label})",
                    f"{figures['ratio']:.2f}x",
                    "<= 2.0x",
                    _met(figures["ratio"] <= 2.0),
                )
            )
        stored = [
            (f"{name}, simulated 1 Hz heart rate", ingest_result.get(name))
            for name in ("sqlite", "postgresql")
        ] + [("SQLite, 1 Hz heart rate with beat-to-beat noise", ingest_result.get("noisy"))]
        for what, figures in stored:
            if not figures:
                continue
            per_sample, per_row = figures["store_bytes_per_sample"], figures["raw_bytes_per_row"]
            rows.append(
                (
                    f"bytes per dense sample ({what})",
                    f"{per_sample:.2f} B",
                    f"{per_row:.0f} B per row (plain table)",
                    f"{per_sample / per_row:.4f}x",
                    "<= 20 B",
                    _met(per_sample <= 20),
                )
            )
    sweep_result = results.get("sweep")
    if sweep_result:
        points = {p["users"]: p for p in sweep_result["points"]}
        base = sweep_result.get("baseline")
        ten = points.get(10)
        if ten and base:
            net = ten["run"]["cpu_s"] - ten["fixed"]["cpu_s"]
            rows.append(
                (
                    f"whole chain, 10 people x 1 Hz x 1 day ({ten['samples']:,} samples), "
                    "CPU net of a run with no one",
                    f"{net:.2f} CPU-s, median of {_listed(ten.get('net_cpu_s_repeats'))} (run "
                    f"{ten['run']['cpu_s']:.2f}, empty run {ten['fixed']['cpu_s']:.2f}; wall "
                    f"{ten['run']['wall_s']:.1f} s; of the net: FHIR validation "
                    f"{ten['validation_cpu_s']:.2f}, simulated provider "
                    f"{ten['provider_cpu_s']:.2f})",
                    f"{base['cpu_s']:.2f} CPU-s, median of {_listed(base.get('cpu_s_repeats'))} "
                    f"(the {base['rows']:,} samples upserted into plain SQLite)",
                    f"{net / base['cpu_s']:.2f}x "
                    f"(gross {ten['run']['cpu_s'] / base['cpu_s']:.2f}x)",
                    "<= 1.0x",
                    _met(net <= base["cpu_s"]),
                )
            )
        biggest = max(points)
        if biggest >= 50:
            p = points[biggest]
            rss = p["children_maxrss_kib"] * 1024
            rows.append(
                (
                    f"peak RSS, {biggest} people x 1 Hz x 1 day ({p['samples']:,} samples), "
                    "one run",
                    f"{rss / 2**20:.0f} MiB",
                    f"{points[1]['self_maxrss_kib'] / 1024:.0f} MiB for 1 person",
                    f"{rss / (points[1]['self_maxrss_kib'] * 1024):.2f}x",
                    "< 1 GiB",
                    _met(rss < GIB),
                )
            )
    push_result = results.get("push")
    if push_result:
        many, one = push_result["many"], push_result["one"]
        rows.append(
            (
                f"push run for one person in a partition of {many['people']}",
                f"{many['push_cpu_s']:.3f} CPU-s ({many['resources_rewritten']} resources of "
                f"{many['people_republished']} person rewritten)",
                f"{one['push_cpu_s']:.3f} CPU-s in a partition of 1",
                f"{push_result['ratio']:.2f}x",
                "<= 1.5x",
                _met(push_result["ratio"] <= 1.5),
            )
        )
        hourly = push_result.get("incremental")
        if hourly:
            rows.append(
                (
                    "hourly incremental run for one person at 23:55 (sync and publish, in process)",
                    f"{hourly['hour_cpu_s']:.2f} CPU-s",
                    f"{hourly['first_cpu_s']:.2f} CPU-s: the day's first run to 23:00",
                    f"{hourly['ratio']:.2f}x",
                    "<= 0.1x",
                    _met(hourly["ratio"] <= 0.1),
                )
            )
    if results.get("process"):
        rows += process.rows(results["process"])
    if results.get("export"):
        rows += export.rows(results["export"])
    if results.get("receiver"):
        rows += webhooks.rows(results["receiver"])
    if results.get("realtime"):
        rows += worker.rows(results["realtime"])
    h = results.get("history")
    if h:
        scaled = h["users"] * h["days"] < 300
        rows.append(
            (
                f"history {h['users']} people x {h['days']} days x 1 Hz ({h['samples']:,} samples) "
                f"in {h['runs']} Dagster runs of {h['days_per_run']} days",
                f"{h['wall_s'] / 60:.1f} min wall, {h['cpu_s'] / 60:.1f} CPU-min",
                f"a run with no work: {h['idle_run']['wall_s']:.1f} s wall "
                f"({h['overhead_vs_work']:.1%} of the longest run)",
                "-",
                "< 10 min for 10 x 30" + (" (scaled: see below)" if scaled else ""),
                _met(h["wall_s"] < 600) if not scaled else "scaled",
            )
        )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += _notes(results)
    return "\n".join(lines) + "\n"


def _versus(point: dict[str, Any], base: dict[str, Any] | None) -> str:
    """The point's net CPU per sample against the baseline's CPU per row."""
    if not base:
        return "-"
    net = point["run"]["cpu_s"] - point["fixed"]["cpu_s"]
    return f"{(net / point['samples']) / (base['cpu_s'] / base['rows']):.2f}x"


def _load(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _notes(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Throughput against partition size", ""]
    sweep_result = results.get("sweep")
    if sweep_result:
        lines += [
            f"![throughput against people per partition]({PLOT.name})",
            "",
            "| people | samples | run CPU-s | empty run CPU-s | net CPU-s | of it: validation, "
            "provider | samples/s (net CPU) | vs baseline | run wall s | worker peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = sweep_result.get("baseline")
        for p in sweep_result["points"]:
            net = p["run"]["cpu_s"] - p["fixed"]["cpu_s"]
            lines.append(
                f"| {p['users']} | {p['samples']:,} | {p['run']['cpu_s']:.2f} | "
                f"{p['fixed']['cpu_s']:.2f} | {net:.2f} | {p.get('validation_cpu_s', 0):.2f}, "
                f"{p.get('provider_cpu_s', 0):.2f} | {p['samples'] / max(net, 1e-9):,.0f} | "
                f"{_versus(p, base)} | {p['run']['wall_s']:.1f} | "
                f"{p['self_maxrss_kib'] / 1024:.0f} MiB |"
            )
    h = results.get("history")
    if h:
        lines += [
            "",
            "## History",
            "",
            f"This run: {h['users']} people x {h['days']} days ({h['samples']:,} samples), "
            f"runs of {h['days_per_run']} days: "
            + ", ".join(f"{w:.1f} s" for w in h["run_wall_s"])
            + f". A run with no work (the first range again) took {h['idle_run']['wall_s']:.1f} s "
            f"wall, {h['idle_run']['cpu_s']:.1f} CPU-s, in this process; as its own process "
            "(`dagster job execute`: what the daemon's run launcher starts for every run) "
            f"{h.get('idle_run_subprocess_wall_s', float('nan')):.1f} s wall. The runs here "
            "execute one after the other in one process; the daemon would launch each as a "
            "process, adding that much to each of the runs.",
        ]
    lines += ["", "## How each figure is taken", "", *HOW, "", "Raw figures of this run: "
              "`bench/results.json`."]  # fmt: skip
    return lines


HOW = [
    "- Baselines are loads of the same samples as rows (user, type, ts, value) of a plain table "
    "keyed by (user, type, ts), rows built before the clock starts: SQLite `executemany` of an "
    "upsert in one transaction (WAL, synchronous=NORMAL, as the store opens SQLite); PostgreSQL "
    "`COPY` into a fresh table on the same server (pgserver).",
    "- Ingest: `RecordStore.commit` of one person's 1,000,000 1 Hz heart-rate samples (11.6 "
    "days) as a sync commits a fetch (records, coverage, changed days), into a fresh store; "
    "median of 3, wall clock.",
    "- Chain: the `sync_partition` job executed in process against a DagsterInstance on disk, "
    "for one day of the simulator at OHX_SIMULATED_HR_HZ=1: fetch, commit, statistics, FHIR, "
    "validation of each published bucket on a sample of 12 resources (as the asset does), NDJSON "
    "files, manifest, Dagster's event log and checks. CPU seconds of the worker process. A run "
    "for three people in another store warms the process first (imports and the validator's "
    "tables load once per process); the empty run is the same job for a partition with no one "
    "(the median of three). "
    "'of it' is the CPU spent inside the asset's FHIR validation call and inside the simulated "
    "provider's fetch during the run. The 10-person figure is the median of "
    f"{CHAIN_REPEATS} worker processes, each from an empty store (each one's net beside it), its "
    f"baseline the median of {CHAIN_REPEATS} loads, each run right after one of the workers on "
    "the samples it stored (pairs see the same load of this shared machine).",
    "- Peak RSS: `RUSAGE_CHILDREN` of this process after the sweep's worker processes (the "
    "largest is the 50-person worker); the sweep's table gives each worker's own peak.",
    "- Push: one person's webhook answered on the code path of the webhook run "
    "(`sync_partition` with strategy push, the person and the notification, then "
    "`publish_partition` with the person as scope, validated), today's partition at 23:05 after "
    "a full sync to 23:00; median CPU of 5 rounds, in a partition of 50 people and of 1.",
    "- Realtime: `bench/worker.py` (its docstring): `ohx-webhooks` and `ohx-realtime` as "
    "processes on a SQLite store, 10,000 simulated people at 1 Hz, connected and synced up to the "
    "start; signed webhooks posted at 167/s, each for the next person in turn, for 10 minutes, "
    "then up to 60 s to drain. CPU from /proc of the two processes (the poster's own is not "
    "counted): the receiver's per event accepted plus the worker's per event answered; "
    "latency from the receiver's commit to the worker's "
    "publication, per event, from the worker's --stats lines; lost = posted - dispatched - "
    "pending - ignored. Baseline: the receiver alone on a store of its own, the same rate for "
    "60 s. A simulated notification names a moment, so each re-reads 15 minutes "
    "(EVENT_LOOKBACK): about 900 heart rates an event.",
    "- Hourly incremental: one person of the simulator at 1 Hz, the day synced (initial) and "
    "published to 23:00, then the incremental run of 23:55 and its publish, in this process, "
    "median of 3; the ratio of the two runs' CPU (the fixed cost of a Dagster run is the process "
    "row's).",
    "- History: the new-user backfill's shape (initial strategy, the people as `ohx/users`, runs "
    "of BACKFILL_POLICY's 7 days), each run executed as a Dagster run in this process against a "
    "DagsterInstance on disk, one after the other; not launched through the daemon (whose run "
    "launcher adds the process start measured above to each run).",
    "- Export: `bench/export.py` (its docstring): 100 simulated people's day at 1 Hz published "
    "(not timed), then in turns, each as its own process, the `fhir_export` run "
    "(`dagster job execute`) of a `Patient/$export` of everyone and a plain Python process that "
    "reads the same NDJSON files and writes their resources out by type; the median of 3 after "
    "one pair that warms the file cache; CPU and peak RSS from each child's own rusage. The run's "
    "figure includes Dagster's run start (an empty run is the process row's).",
    "- Receiver: `bench/webhooks.py --mode versus` (its docstring): the receiver as its own "
    "process (production limits but the per-address ones) and then the baseline, a trivial "
    "Starlette handler that parses the body and commits the event to the same inbox through the "
    "same group commit, each loaded with the same signed events and 10% re-deliveries by 16 "
    "keep-alive clients; every acknowledged event in the inbox exactly once in both.",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: ingest,chain,push,history,process,export,receiver,realtime",
    )
    parser.add_argument(
        "--realtime-seconds",
        type=float,
        default=600,
        help="how long the realtime row posts webhooks (default 600, the target's 10 minutes)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="REPORT.md again from bench/results.json"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace those benchmarks' figures in bench/results.json, keep the rest "
        "(the report says which were measured later)",
    )
    parser.add_argument(
        "--history-days",
        type=int,
        default=30,
        help="days of history of the 10 people (default 30, the target's)",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        REPORT.write_text(report(json.loads((BENCH / "results.json").read_text())))
        return
    wanted = {w.strip() for w in args.only.split(",") if w.strip()} or {
        "ingest",
        "chain",
        "push",
        "history",
        "process",
        "export",
        "receiver",
        "realtime",
    }
    started = time.perf_counter()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count()},
        "load_start": list(os.getloadavg()),
    }
    earlier = None
    if args.update:
        earlier = json.loads((BENCH / "results.json").read_text())
        rerun = dict(earlier.get("rerun", {}))
        rerun.update({name: results["started"] for name in sorted(wanted)})
    print(f"machine: {os.cpu_count()} cores, load {_load(results['load_start'])}", flush=True)
    if "chain" in wanted:  # first: RUSAGE_CHILDREN must see the chain workers only
        print("chain: whole chain through Dagster runs, 1..50 people", flush=True)
        results["sweep"] = sweep(SIZES)
        plot(results["sweep"]["points"], results["sweep"]["baseline"])
    if "ingest" in wanted:
        print("ingest: 1 M samples, SQLite and PostgreSQL", flush=True)
        results["ingest"] = ingest.run()
    if "push" in wanted:
        print("push: one person's push run, partitions of 1 and 50", flush=True)
        results["push"] = push.run(50)
    if "history" in wanted:
        days = args.history_days
        print(f"history: 10 people x {days} days through Dagster runs", flush=True)
        results["history"] = history.run(10, days)
    if "process" in wanted:  # after the chain: its children's peak RSS is the chain's own
        print("process: an empty run and the definitions as processes, against import dagster")
        results["process"] = process.run()
    if "export" in wanted:
        print("export: Patient/$export of 100 people x 1 day at 1 Hz, against reading the NDJSON")
        results["export"] = export.run(100)
    if "receiver" in wanted:
        print("receiver: accepted webhooks/s against a trivial handler with the same commit")
        results["receiver"] = webhooks.versus()
    if "realtime" in wanted:  # last: its processes are not this process's children to wait for
        seconds = args.realtime_seconds
        print(f"realtime: 10,000 people, 167 webhooks/s for {seconds:.0f} s", flush=True)
        results["realtime"] = worker.run(10_000, 167.0, seconds)
    results["load_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - started
    if earlier is not None:  # the earlier run's header, these benchmarks' new figures
        measured = {k: v for k, v in results.items() if k in ("sweep", *wanted)}
        results = {**earlier, **measured, "rerun": rerun}
    results["children_maxrss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    (BENCH / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    REPORT.write_text(report(results))
    print(REPORT.read_text())
    print(
        f"wrote {REPORT.relative_to(REPO)} in {results['elapsed_s'] / 60:.1f} min", file=sys.stderr
    )


if __name__ == "__main__":
    main()
