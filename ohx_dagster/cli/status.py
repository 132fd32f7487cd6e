"""`ohx status`: how far the sync has got and what stops it (computed by
ohx_dagster/sync/status.py, as the UI's sync_status assets are).

By default a summary that fits a terminal: one line per provider and data type, worst first
(behind, needs reauthorization, refused, failing, active, disconnected), with how many people are
in each state, the largest lag of the active ones, the records of the last 24 h and the latest
error; the types no person's provider supports are one line at the end. `--person ID` and `--all`
show the rows per person and type; `--json` all of them (and the summary) for scripts.

Per person and type:

- covered until: the end of the person's latest covered window of the type (coverage);
- lag: now minus that;
- state: active, needs reauthorization, disconnected (the person's), refused: <the provider's
  reason> (a 403 under the person's current settings), not enabled (their settings leave the
  type out), not supported (the provider never has it);
- last error: type_status, the last failure and when;
- records 24 h: the samples of the hourly chunks of the current UTC hour and the 23 before it,
  plus the measurements taken since that hour began.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import click

from ohx_dagster.cli import common
from ohx_dagster.core import times

if TYPE_CHECKING:
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.storage.store import PersonRow, RecordStore
    from ohx_dagster.sync.status import LagLimit, TypeStatus

ERROR_CHARS = 80


# The status is computed in ohx_dagster/sync/status.py, which the sync_status assets of the UI
# read too; imported when a command runs (`ohx --help` loads no database driver or pandas).
def person_state(person: PersonRow) -> tuple[str, str | None]:
    from ohx_dagster.sync import status as sync_status

    return sync_status.person_state(person)


def window_start(now: datetime) -> datetime:
    from ohx_dagster.sync import status as sync_status

    return sync_status.window_start(now)


def collect(store: RecordStore, provider: str | None, now: datetime) -> list[TypeStatus]:
    from ohx_dagster.sync import status as sync_status

    return sync_status.collect(store, provider, now)


def _short(text: str, limit: int = ERROR_CHARS) -> str:
    text = common.one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the summary: one line per provider and type -------------------------------------------------

# Worst first, as the UI's sync_status table orders its rows (sync_status.table_rows).
CONDITIONS: Final = (
    "behind",
    "needs reauthorization",
    "refused",
    "failing",
    "active",
    "disconnected",
    "not enabled",
    "not supported",
)
ERROR_CHARS_SUMMARY: Final = 48


def lag_limits(settings: Settings) -> dict[str, LagLimit]:
    """The lag each live source allows (exports keep none), as the sync_status assets use it."""
    from ohx_dagster.config.settings import FILE_SOURCES
    from ohx_dagster.sync.status import LagLimit

    fixed = {name: timedelta(seconds=s) for name, s in settings.max_lag_overrides}
    return {
        name: LagLimit(horizon, fixed.get(name))
        for name, horizon in settings.resync_horizons.items()
        if name not in FILE_SOURCES
    }


def condition(row: TypeStatus, now: datetime, limit: LagLimit | None) -> str:
    """The row's state, with an active type that waited too long as "behind" and one whose last
    attempt failed as "failing"."""
    from ohx_dagster.sync import status as sync_status

    if limit is not None and sync_status.is_behind(row, now, limit):
        return "behind"
    if row.state == sync_status.ACTIVE and sync_status.failing(row):
        return "failing"
    return row.state if row.state in CONDITIONS else "not enabled"


@dataclass(frozen=True, slots=True)
class Summary:
    """The people of one provider and type."""

    provider: str
    data_type: str
    counts: dict[str, int]  # condition -> people, worst first
    reasons: tuple[str, ...]  # the refusals' reasons
    oldest_covered: datetime | None  # of the active people
    max_lag: timedelta | None  # of the active people
    records_24h: int
    last_error: str | None
    last_error_at: datetime | None

    @property
    def worst(self) -> str:
        return next(iter(self.counts))

    @property
    def people(self) -> int:
        return sum(self.counts.values())

    def states_text(self) -> str:
        parts = [f"{n} {state}" for state, n in self.counts.items()]
        if self.reasons:
            parts[list(self.counts).index("refused")] += f" ({'; '.join(self.reasons)})"
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "data_type": self.data_type,
            "worst": self.worst,
            "people": self.counts,
            "refused_reasons": list(self.reasons),
            "oldest_covered_until": times.iso(self.oldest_covered),
            "max_lag": None if self.max_lag is None else times.iso_duration(self.max_lag),
            "records_24h": self.records_24h,
            "last_error": self.last_error,
            "last_error_at": times.iso(self.last_error_at),
        }


def summarise(rows: list[TypeStatus], now: datetime, limits: dict[str, LagLimit]) -> list[Summary]:
    """One Summary per provider and type, worst first (then provider, then type order)."""
    from ohx_dagster.sync import status as sync_status

    groups: dict[tuple[str, str], list[TypeStatus]] = {}
    for row in rows:
        groups.setdefault((row.provider, row.data_type), []).append(row)
    rank = {state: n for n, state in enumerate(CONDITIONS)}
    found = []
    for position, ((provider, data_type), members) in enumerate(groups.items()):
        limit = limits.get(provider)
        counted = Counter(condition(r, now, limit) for r in members)
        counts = {state: counted[state] for state in CONDITIONS if counted[state]}
        active = [r for r in members if r.state == sync_status.ACTIVE]
        covered = [r.covered_until for r in active if r.covered_until is not None]
        lags = [lag for lag in (r.lag(now) for r in active) if lag is not None]
        errors = [r for r in members if r.last_error and r.last_error_at is not None]
        latest = max(errors, key=lambda r: r.last_error_at or now, default=None)
        reasons = sorted(
            {r.state_reason for r in members if r.state == "refused" and r.state_reason}
        )
        summary = Summary(
            provider=provider,
            data_type=data_type,
            counts=counts,
            reasons=tuple(reasons),
            oldest_covered=min(covered, default=None),
            max_lag=max(lags, default=None),
            records_24h=sum(r.records_24h for r in members),
            last_error=latest.last_error if latest else None,
            last_error_at=latest.last_error_at if latest else None,
        )
        found.append((rank[summary.worst], position, summary))
    return [summary for *_, summary in sorted(found, key=lambda item: item[:2])]


def render_summary(summaries: list[Summary], now: datetime) -> None:
    from rich.table import Table
    from rich.text import Text

    out = common.console()
    if not summaries:
        out.print(Text("No people in the store yet: connect one (`ohx connect`) or import a file."))
        return
    shown = [s for s in summaries if s.worst != "not supported"]
    unsupported: dict[str, list[str]] = {}
    for summary in summaries:
        if summary.worst == "not supported":
            unsupported.setdefault(summary.provider, []).append(summary.data_type)
    table = Table(
        title=Text(
            f"Sync status at {times.iso(now)}; records since {times.iso(window_start(now))}"
        ),
        title_justify="left",
        expand=True,
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    # Every provider and type is one line: the two long columns share what the terminal has
    # left and are cut, never wrapped.
    for header, justify, ratio in (
        ("provider", "left", None),
        ("type", "left", None),
        ("people", "left", 3),
        ("max lag", "right", None),
        ("records", "right", None),
        ("last error", "left", 2),
    ):
        table.add_column(
            header,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            ratio=ratio,
        )
    styles = {"active": "green", "disconnected": "dim", "not enabled": "dim"}
    for summary in shown:
        error = ""
        if summary.last_error:
            short = _short(summary.last_error, ERROR_CHARS_SUMMARY)
            error = f"{times.iso(summary.last_error_at)} {short}"
        table.add_row(
            Text(summary.provider),
            Text(summary.data_type),
            Text(summary.states_text(), style=styles.get(summary.worst, "yellow")),
            Text("" if summary.max_lag is None else times.words(summary.max_lag)),
            Text(f"{summary.records_24h:,}"),
            Text(error, style="red"),
        )
    out.print(table)
    for provider, kinds in unsupported.items():
        # Wrapped to the terminal: a provider may lack most of the types.
        text = Text(f"not supported by {provider}: {', '.join(kinds)}", style="dim")
        out.print(text, soft_wrap=False)
    out.print(
        Text(
            "per person: ohx status --person ID, or --all; for scripts: --json",
            style="dim",
        )
    )


# -- per person and type ---------------------------------------------------------------------------


def render(rows: list[TypeStatus], now: datetime) -> None:
    from rich.table import Table
    from rich.text import Text

    out = common.console()
    if not rows:
        out.print(Text("No people in the store yet: connect one (`ohx connect`) or import a file."))
        return
    table = Table(
        title=Text(
            f"Sync status at {times.iso(now)}; records since {times.iso(window_start(now))}"
        ),
        title_justify="left",
    )
    for header, justify in (
        ("provider", "left"),
        ("person", "left"),
        ("type", "left"),
        ("state", "left"),
        ("covered until", "left"),
        ("lag", "right"),
        ("records 24 h", "right"),
        ("last error", "left"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    styles = {"active": "green", "not supported": "dim", "not enabled": "dim"}
    for position, row in enumerate(rows):
        following = rows[position + 1] if position + 1 < len(rows) else None
        first = position == 0 or (rows[position - 1].provider, rows[position - 1].user_id) != (
            row.provider,
            row.user_id,
        )
        lag = row.lag(now)
        error = f"{times.iso(row.last_error_at)} {_short(row.last_error)}" if row.last_error else ""
        table.add_row(
            Text(row.provider if first else ""),
            Text(row.user_id if first else ""),
            Text(row.data_type),
            Text(_short(row.state_text(), 60), style=styles.get(row.state, "yellow")),
            Text(times.iso(row.covered_until) or "never"),
            Text("" if lag is None else times.words(lag)),
            Text(f"{row.records_24h:,}"),
            Text(error, style="red"),
            end_section=following is not None
            and (following.provider, following.user_id) != (row.provider, row.user_id),
        )
    out.print(table)


@click.command("status")
@click.option("--provider", help="Only this provider's people (simulated, oura, fitabase, ...).")
@click.option("--person", metavar="ID", help="One person's rows per type (any provider's user id).")
@click.option("--all", "every", is_flag=True, help="Every person's rows per type.")
@click.option(
    "--json", "as_json", is_flag=True, help="Every row and the summary as JSON (ISO 8601 times)."
)
@click.pass_context
def status(
    ctx: click.Context, provider: str | None, person: str | None, every: bool, as_json: bool
) -> None:
    """A summary per provider and data type, worst first: people per state (behind, needs
    reauthorization, refused, failing, active), the largest lag, records in the last 24 h (the
    current UTC hour and the 23 before it), the latest error. --person and --all show the rows
    per person and type: covered until, lag, state, last error, records in the last 24 h."""
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.providers.registry import CATALOG

    common.check_provider(provider)
    settings = Settings.from_env(catalog=CATALOG)
    store = common.open_store(ctx)
    now = common.now()
    rows = collect(store, provider, now)
    if person is not None:
        rows = [row for row in rows if row.user_id == person]
        if not rows:
            where = f" of {provider}" if provider else ""
            raise click.BadParameter(
                f"no person {person!r}{where} in the store (`ohx users list` lists them)",
                param_hint="--person",
            )
    if as_json:
        common.echo_json(
            {
                "as_of": times.iso(now),
                "records_since": times.iso(window_start(now)),
                "summary": [s.to_json() for s in summarise(rows, now, lag_limits(settings))],
                "statuses": [row.to_json(now) for row in rows],
            }
        )
    elif person is not None or every:
        render(rows, now)
    else:
        render_summary(summarise(rows, now, lag_limits(settings)), now)
