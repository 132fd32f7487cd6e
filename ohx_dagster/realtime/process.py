"""`ohx-realtime`: the realtime worker as a long-lived process, observed by Dagster.

    OHX_REALTIME=worker ohx-realtime [--interval 1] [--report-every 30] [--stats FILE]

It reads the same settings as the Dagster code location (the same store, output, sources and
shards: the resources of `build_definitions`), answers the webhook inbox in batches
(ohx_dagster/realtime/worker.py), and reports what it published to the Dagster instance
(DAGSTER_HOME) as materializations of the sync assets' partitions, at most one per asset and
partition every `--report-every` seconds: the UI shows the realtime path's partitions as it shows
the runs', and the event log grows with partitions, not with events.

OHX_REALTIME=worker must be set for the code location too: it then leaves the webhook sensor out,
so no event is answered twice. Run one worker per deployment. SIGTERM or SIGINT ends it after the
step under way (nothing is half-answered; an event is marked only once published).

Each step with work is one log line: events, partitions, records, resources and the latency from
the receiver's commit to publication (p50, p95). People are never named: counts only.
`--stats FILE` appends one JSON line per step with every event's latency (scripts/bench reads it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import statistics
import sys
import threading
import time
import warnings
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError, OhxError
from ohx_dagster.providers.registry import CATALOG
from ohx_dagster.realtime.worker import Handled, RealtimeWorker, Step

log = logging.getLogger("ohx_dagster.realtime")


class Reports:
    """Materializations owed to Dagster, coalesced per asset and partition until flushed."""

    def __init__(self) -> None:
        self.synced: dict[tuple[date, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.published: dict[tuple[date, str], int] = defaultdict(int)

    def add(self, handled: Handled) -> None:
        synced = self.synced[(handled.day, handled.key)]
        synced["events"] += handled.events
        synced["records_fetched"] += handled.records
        synced["people_failed"] += handled.failed
        synced["people_deferred"] += handled.deferred
        for day, resources in handled.published.items():
            self.published[(day, handled.key)] += resources

    def flush(self, instance: Any) -> int:
        """Report every owed materialization; how many were reported."""
        import dagster as dg

        from assets.partitions import partition_key

        reported = 0
        for (day, key), counts in sorted(self.synced.items()):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key="raw_health_records",
                    partition=str(partition_key(day, key)),
                    description="pushed by the realtime worker",
                    metadata={"strategy": "push", **counts},
                )
            )
            reported += 1
        for (day, key), resources in sorted(self.published.items()):
            for asset in ("hourly_aggregates", "daily_aggregates", "fhir_observations"):
                metadata = {"resources": resources} if asset == "fhir_observations" else {}
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset_key=asset,
                        partition=str(partition_key(day, key)),
                        description="published by the realtime worker",
                        metadata=metadata,
                    )
                )
                reported += 1
        self.synced.clear()
        self.published.clear()
        return reported


def summary(step: Step, seconds: float) -> str:
    """The step's log line: counts and latencies, nobody named."""
    latencies = sorted(x for h in step.handled for x in h.latencies_s)
    records = sum(h.records for h in step.handled)
    resources = sum(sum(h.published.values()) for h in step.handled)
    failed = sum(h.failed for h in step.handled)
    line = (
        f"{step.events} events in {len(step.handled)} partitions ({step.ignored} ignored, "
        f"{step.left_pending} left pending): {records} records, {resources} resources, "
        f"{seconds:.2f} s"
    )
    if latencies:
        line += f"; webhook to FHIR p50 {_quantile(latencies, 0.5):.1f} s, "
        line += f"p95 {_quantile(latencies, 0.95):.1f} s"
    if failed:
        line += f"; {failed} people failed (the hourly incremental run fetches what they missed)"
    return line


def _quantile(ordered: list[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def build_worker(settings: Settings) -> RealtimeWorker:
    """The worker on the resources the code location's runs use."""
    from ohx_dagster.definitions import build_definitions
    from ohx_dagster.publish.partitions import validate_sample
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.shards import Sharding

    with warnings.catch_warnings():
        # Dagster's notes on its own API (a parameter in beta) are for Dagster's developers.
        warnings.simplefilter("ignore")
        resources = build_definitions(settings).resources or {}
    # The store resource holds OHX_DATABASE_URL as an EnvVar that only a run resolves.
    store = RecordStore(settings.database_url)
    sources = resources["sources"]
    output = resources["output"]
    sharding = Sharding(settings.source_counts)
    live = Sharding({source: sharding[source] for source in settings.live_sources})
    return RealtimeWorker(
        store,
        output.get(),
        sharding=live,
        first_day=settings.partitions_start,
        source_of=lambda provider: sources.get(provider, store),
        horizon_of=sources.horizon,
        validate=validate_sample,
        publish_ambiguous=settings.publish_ambiguous,
    )


def serve(
    worker: RealtimeWorker,
    instance: Any,
    *,
    interval_s: float,
    report_every_s: float,
    stats: Path | None,
    stop: threading.Event,
) -> None:
    """Step until `stop` is set; report to Dagster every `report_every_s` seconds and at the end."""
    reports = Reports()
    last_report = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        step = worker.step(datetime.now(UTC))
        for handled in step.handled:
            reports.add(handled)
        if step.events:
            log.info(summary(step, time.monotonic() - started))
            if stats is not None:
                _append_stats(stats, step, time.monotonic() - started)
        if time.monotonic() - last_report >= report_every_s:
            reports.flush(instance)
            last_report = time.monotonic()
        if not step.events:
            stop.wait(interval_s)
    reports.flush(instance)


def _append_stats(path: Path, step: Step, seconds: float) -> None:
    line = {
        "at": time.time(),
        "seconds": seconds,
        "events": step.events,
        "ignored": step.ignored,
        "left_pending": step.left_pending,
        "partitions": len(step.handled),
        "records": sum(h.records for h in step.handled),
        "resources": sum(sum(h.published.values()) for h in step.handled),
        "failed": sum(h.failed for h in step.handled),
        "latencies_s": [round(x, 3) for h in step.handled for x in h.latencies_s],
    }
    with path.open("ab") as out:
        out.write(orjson.dumps(line) + b"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ohx-realtime", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls of an empty inbox"
    )
    parser.add_argument(
        "--report-every",
        type=float,
        default=30.0,
        help="seconds between reports to Dagster (default 30)",
    )
    parser.add_argument("--stats", type=Path, help="append one JSON line per step to this file")
    parser.add_argument("--once", action="store_true", help="one step, then exit (for scripts)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.interval <= 0 or args.report_every <= 0:
        print("ohx-realtime: error: --interval and --report-every must be > 0", file=sys.stderr)
        return 1
    try:
        settings = Settings.from_env(catalog=CATALOG)
        if settings.realtime != "worker":
            raise ConfigError(
                "OHX_REALTIME is 'runs': the webhook sensor answers webhooks; set "
                "OHX_REALTIME=worker here and in the Dagster code location's environment (it then "
                "leaves the sensor out) to run the realtime worker"
            )
        worker = build_worker(settings)
        import dagster as dg

        instance = dg.DagsterInstance.get()
    except (OhxError, OSError) as exc:
        print(f"ohx-realtime: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Dagster's own: DAGSTER_HOME unset or its dagster.yaml wrong
        if type(exc).__module__.startswith("dagster"):
            print(f"ohx-realtime: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        raise
    stop = threading.Event()

    def ask_to_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping after the step under way", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, ask_to_stop)
    signal.signal(signal.SIGINT, ask_to_stop)
    if args.once:
        step = worker.step(datetime.now(UTC))
        reports = Reports()
        for handled in step.handled:
            reports.add(handled)
        reports.flush(instance)
        log.info(summary(step, 0.0) if step.events else "no pending webhook events")
        return 0
    log.info("answering the webhook inbox (%d events a step at most)", worker.batch)
    serve(
        worker,
        instance,
        interval_s=args.interval,
        report_every_s=args.report_every,
        stats=args.stats,
        stop=stop,
    )
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
