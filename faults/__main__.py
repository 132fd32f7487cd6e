"""`scripts/faults`: run the fault scenarios and print one table.

    scripts/faults                         # every scenario on SQLite and PostgreSQL
    scripts/faults --backend sqlite        # one backend
    scripts/faults --only crash,kill       # some scenarios (names: --list)

Columns: scenario | backend | held (samples the provider holds in the scenario's window) | stored
| lost | duplicated | published (samples the partitions' NDJSON names; "=" when it equals the
store) | daily (samples the days' stored daily aggregates count; "=" when each person's local day
counts exactly its stored samples) | runs (red of all) | green-with-loss (green runs whose goal
lacked a held sample) | s.
Exit status 1 when any row loses, duplicates, publishes other than the store, or breaks an
expectation of its own (listed under the table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from faults.backends import Backend, Postgres, SQLite, postgres_server
from faults.scenarios import SCENARIOS, Row, run_scenario

HEADER = ("scenario", "backend", "held", "stored", "lost", "dup", "published", "daily",
          "runs (red)", "green+loss", "s")  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = [HEADER]
    for r in rows:
        published = f"{r.published} {'=' if r.published_ok else '!='}"
        daily = f"{r.aggregated} {'=' if r.aggregated_ok else '!='}"
        lines.append((r.scenario, r.backend, str(r.held), str(r.stored), str(r.lost),
                      str(r.duplicated), published, daily, f"{r.runs} ({r.red})",
                      str(r.green_loss), f"{r.seconds:.0f}"))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/faults", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--list", action="store_true", help="list the scenario names")
    parser.add_argument("--notes", action="store_true", help="print each row's notes")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario {unknown[0]!r}: see scripts/faults --list", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="ohx-faults-") as tmp:
        backends: list[Backend] = []
        if args.backend in ("sqlite", "both"):
            backends.append(SQLite())
        if args.backend in ("postgresql", "both"):
            backends.append(Postgres(stack.enter_context(postgres_server())))
        for name in names:
            for backend in backends:
                row = run_scenario(name, backend, Path(tmp))
                rows.append(row)
                print(f"{'ok ' if row.ok else 'BAD'} {row.scenario} [{backend.name}] "
                      f"{row.seconds:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    print(table(rows))
    bad = [r for r in rows if not r.ok]
    for r in rows:
        if args.notes or not r.ok:
            for note in r.notes:
                print(f"- {r.scenario} [{r.backend}]: {note}")
    for r in bad:
        for problem in r.problems[:10]:
            print(f"! {r.scenario} [{r.backend}]: {problem}")
    print(
        f"\n{len(rows) - len(bad)} of {len(rows)} rows: 0 lost, 0 duplicated, "
        "published = stored, daily = stored"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
