"""`ohx status`: per person, provider and data type, how far the sync has got and what stops it
(computed by ohx_dagster/sync_status.py, as the UI's sync_status assets are).

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

from datetime import datetime
from typing import TYPE_CHECKING

import click

from ohx_dagster import times
from ohx_dagster.cli import common

if TYPE_CHECKING:
    from ohx_dagster.store import PersonRow, RecordStore
    from ohx_dagster.sync_status import TypeStatus

ERROR_CHARS = 80


# The status is computed in ohx_dagster/sync_status.py, which the sync_status assets of the UI
# read too; imported when a command runs (`ohx --help` loads no database driver or pandas).
def person_state(person: PersonRow) -> tuple[str, str | None]:
    from ohx_dagster import sync_status

    return sync_status.person_state(person)


def window_start(now: datetime) -> datetime:
    from ohx_dagster import sync_status

    return sync_status.window_start(now)


def collect(store: RecordStore, provider: str | None, now: datetime) -> list[TypeStatus]:
    from ohx_dagster import sync_status

    return sync_status.collect(store, provider, now)


def _short(text: str, limit: int = ERROR_CHARS) -> str:
    text = common.one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON (ISO 8601 times).")
@click.pass_context
def status(ctx: click.Context, provider: str | None, as_json: bool) -> None:
    """Per person, provider and data type: covered until, lag, state, last error, records in the
    last 24 h (the current UTC hour and the 23 before it)."""
    common.check_provider(provider)
    store = common.open_store(ctx)
    now = common.now()
    rows = collect(store, provider, now)
    if as_json:
        common.echo_json(
            {
                "as_of": times.iso(now),
                "records_since": times.iso(window_start(now)),
                "statuses": [row.to_json(now) for row in rows],
            }
        )
    else:
        render(rows, now)
