"""`ohx status`: per person, provider and data type, how far the sync has got and what stops it.

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

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from ohx_dagster.cli import common

if TYPE_CHECKING:
    from ohx_dagster.store import PersonRow, RecordStore

ERROR_CHARS = 80


@dataclass(frozen=True, slots=True)
class TypeStatus:
    provider: str
    user_id: str
    patient: str
    data_type: str
    state: str
    state_reason: str | None
    covered_until: datetime | None
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    records_24h: int

    def lag(self, now: datetime) -> timedelta | None:
        return None if self.covered_until is None else max(timedelta(0), now - self.covered_until)

    def state_text(self) -> str:
        return f"{self.state}: {self.state_reason}" if self.state == "refused" else self.state

    def to_json(self, now: datetime) -> dict[str, Any]:
        data = asdict(self)
        lag = self.lag(now)
        for name in ("covered_until", "last_success", "last_error_at"):
            data[name] = common.iso(data[name])
        data["lag"] = None if lag is None else common.iso_duration(lag)
        return data


def person_state(person: PersonRow) -> tuple[str, str | None]:
    """The person's connection state in words, and its reason."""
    from ohx_dagster.store import DISCONNECTED, NEEDS_REAUTHORIZATION

    if not person.connected or person.state == DISCONNECTED:
        return "disconnected", person.state_reason
    if person.state == NEEDS_REAUTHORIZATION:
        return "needs reauthorization", person.state_reason
    return "active", None


def window_start(now: datetime) -> datetime:
    """Where "the last 24 h" begins: the start of the UTC hour 23 hours before the current one
    (series are stored per hour, so counts are per whole hour)."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)


def collect(store: RecordStore, provider: str | None, now: datetime) -> list[TypeStatus]:
    from ohx_dagster.cli import queries
    from ohx_dagster.models import HealthDataType
    from ohx_dagster.providers.registry import SUPPORTED_TYPES
    from ohx_dagster.store import config_hash
    from ohx_dagster.times import HOUR_US, to_us

    order = {t.value: n for n, t in enumerate(HealthDataType)}
    start_us = to_us(window_start(now))
    end_us = start_us + 24 * HOUR_US
    found: list[TypeStatus] = []
    for name in [provider] if provider else queries.providers(store):
        people = store.people(name)
        if not people:
            continue
        covered = queries.covered_until(store, name)
        counts = queries.records_between(store, name, start_us, end_us)
        statuses = {(r.user_id, r.data_type): r for r in store.type_statuses(name)}
        supported = {t.value for t in SUPPORTED_TYPES.get(name, frozenset(HealthDataType))}
        for person in people:
            config = person.config
            user = config.user_id
            enabled = {t.value for t in config.enabled_types}
            known = {t for u, t in (*covered, *counts, *statuses) if u == user}
            state, reason = person_state(person)
            current = config_hash(config)
            for data_type in sorted(enabled | known, key=lambda t: (order.get(t, 99), t)):
                status = statuses.get((user, data_type))
                kind, why = state, reason
                refused = status is not None and status.refused_reason is not None
                if data_type not in supported:
                    kind, why = "not supported", None
                elif state == "active" and refused and status.refused_config in (None, current):
                    kind, why = "refused", status.refused_reason
                elif state == "active" and data_type not in enabled:
                    kind, why = "not enabled", None
                found.append(
                    TypeStatus(
                        provider=name,
                        user_id=user,
                        patient=config.fhir_patient_id,
                        data_type=data_type,
                        state=kind,
                        state_reason=why,
                        covered_until=common.as_datetime(covered.get((user, data_type))),
                        last_success=common.as_datetime(status and status.last_success_us),
                        last_error=status.last_error if status else None,
                        last_error_at=common.as_datetime(status and status.last_error_us),
                        records_24h=counts.get((user, data_type), 0),
                    )
                )
    return found


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
            f"Sync status at {common.iso(now)}; records since {common.iso(window_start(now))}"
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
        error = (
            f"{common.iso(row.last_error_at)} {_short(row.last_error)}" if row.last_error else ""
        )
        table.add_row(
            Text(row.provider if first else ""),
            Text(row.user_id if first else ""),
            Text(row.data_type),
            Text(_short(row.state_text(), 60), style=styles.get(row.state, "yellow")),
            Text(common.iso(row.covered_until) or "never"),
            Text("" if lag is None else common.words(lag)),
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
                "as_of": common.iso(now),
                "records_since": common.iso(window_start(now)),
                "statuses": [row.to_json(now) for row in rows],
            }
        )
    else:
        render(rows, now)
