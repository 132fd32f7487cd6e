"""`ohx audit`: the audit log (ohx_dagster/privacy/audit.py), oldest first: when, who, what, the
person as their salted subject, the outcome and the detail.

- `--since`: an ISO date or time (UTC unless it says), or a span back from now (`24h`, `7d`,
  `30m`).
- `--action`: connect, disconnect, relink, import, export, erase, readmit, set-zone, staff-add,
  staff-remove, sign-in, client-add, client-remove, token, read (audit.ACTIONS).
- `--json`: machine-readable, ISO 8601 times.

What each action records, and who its actor is: docs/deployment.md, "The audit log: what is
recorded". Refused staff credentials are `connect` or `sign-in` rows with outcome `refused`,
bounded to a row at once and a summary row per minute and source.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ohx_dagster.cli import common
from ohx_dagster.core import times

_SPAN = re.compile(r"(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def since_moment(text: str, now: datetime) -> datetime:
    """A --since value as an aware instant."""
    span = _SPAN.fullmatch(text.strip())
    if span:
        return now - timedelta(**{_UNITS[span.group(2)]: int(span.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected an ISO date or time (2026-12-01, 2026-12-01T08:00Z) or a span "
            "back from now (30m, 24h, 7d)",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.command("audit")
@click.option("--since", help="From when: an ISO date or time, or a span back (24h, 7d).")
@click.option("--action", help="Only this action (connect, import, export, erase, sign-in, ...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON (ISO 8601 times).")
@click.pass_context
def audit(ctx: click.Context, since: str | None, action: str | None, as_json: bool) -> None:
    """Who connected, re-linked, imported, exported, erased and re-admitted whom, and when, and
    which staff credentials were refused (the person as their salted subject, never their id)."""
    from rich.table import Table
    from rich.text import Text

    from ohx_dagster.privacy import audit as log

    if action is not None and action not in log.ACTIONS:
        raise click.BadParameter(
            f"{action!r}: expected one of {', '.join(log.ACTIONS)}", param_hint="--action"
        )
    start = None if since is None else since_moment(since, common.now())
    store = common.open_store(ctx)
    rows = log.read(store, since_us=None if start is None else times.to_us(start), action=action)
    entries: list[dict[str, Any]] = [
        {
            "at": times.iso(r.at_us),
            "actor": r.actor,
            "action": r.action,
            "subject": r.subject,
            "outcome": r.outcome,
            "detail": r.detail,
        }
        for r in rows
    ]
    if as_json:
        common.echo_json({"entries": entries})
        return
    out = common.console()
    if not entries:
        out.print(Text("No audit entries" + (" since then." if since else " yet.")))
        return
    table = Table()
    for header in ("at (UTC)", "actor", "action", "subject", "outcome", "detail"):
        table.add_column(header)
    for e in entries:
        table.add_row(
            *(
                Text(v)
                for v in (
                    e["at"] or "",
                    e["actor"],
                    e["action"],
                    e["subject"][:12],
                    e["outcome"],
                    e["detail"],
                )
            )
        )
    out.print(table)
