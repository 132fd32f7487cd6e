"""Sync status per person, provider and data type: one computation for `ohx status` (the CLI) and
the `sync_status/<source>` assets in Dagster's UI (assets/sync_status.py), so both show the same.

- covered until: the end of the person's latest covered window of the type (coverage);
- lag: now minus that;
- state: active, needs reauthorization, disconnected (the person's), refused (a 403 under the
  person's current settings, with the provider's reason), not enabled (their settings leave the
  type out), not supported (the provider never has it);
- last error: type_status, the last failure and when;
- records 24 h: the samples of the hourly chunks of the current UTC hour and the 23 before it,
  plus the measurements taken since that hour began.

Behind: an active person's type whose wait (its lag, counted from the connection when that is
later) exceeds what the source allows: OHX_MAX_SYNC_LAG
(`oura=6h,withings=2d`) or, by default, twice the person's sync interval (an hour for realtime
and hourly people, a day for daily ones) plus the provider's re-sync horizon. Exports (fitabase,
polar, apple_health) are imported when someone has a file: they have no lag to keep.

The queries read one provider at a time, so the (provider, time) indexes of series_chunks and
measurements bound the 24-hour counts to the last day's rows, whatever the history holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from ohx_dagster.core.times import HOUR_US, from_us, iso, iso_duration, words
from ohx_dagster.storage.schema import coverage, measurements, series_chunks, users

if TYPE_CHECKING:
    from ohx_dagster.storage.store import PersonRow, RecordStore

Key = tuple[str, str]  # (user id, data type)

ACTIVE: Final = "active"
REFUSED: Final = "refused"
# How often a person's data is synced at most, by their sync frequency: realtime people are
# pushed by webhooks, with the hourly schedule as the safety net.
SYNC_INTERVAL: Final = {
    "realtime": timedelta(hours=1),
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
}
LAG_SETTING: Final = "OHX_MAX_SYNC_LAG"


# -- queries ---------------------------------------------------------------------------------------


def providers(store: RecordStore) -> list[str]:
    """The providers that have people, sorted."""
    with store.read() as conn:
        return sorted(conn.execute(sa.select(users.c.provider).distinct()).scalars())


def covered_until(store: RecordStore, provider: str) -> dict[Key, int]:
    """(user, type) -> the end of the latest covered window (store microseconds)."""
    c = coverage
    query = (
        sa.select(c.c.user_id, c.c.data_type, sa.func.max(c.c.end_us).label("end_us"))
        .where(c.c.provider == provider)
        .group_by(c.c.user_id, c.c.data_type)
    )
    with store.read() as conn:
        return {(r.user_id, r.data_type): int(r.end_us) for r in conn.execute(query)}


def series_count_query(provider: str, start_us: int, end_us: int) -> sa.Select:
    """Samples of the hourly chunks whose hour starts in [start_us, end_us), per user and type
    (a chunk's `samples` column: no payload is read or decoded)."""
    s = series_chunks
    return (
        sa.select(s.c.user_id, s.c.data_type, sa.func.sum(s.c.samples).label("n"))
        .where(s.c.provider == provider, s.c.hour_us >= start_us, s.c.hour_us < end_us)
        .group_by(s.c.user_id, s.c.data_type)
    )


def measurement_count_query(provider: str, start_us: int, end_us: int) -> sa.Select:
    m = measurements
    # count(updated_at_us) (never NULL) rather than count(*): the primary key index covers a
    # count(*), and SQLite would rather scan all the provider's rows in it than range over the
    # (provider, ts_us) index and read the table.
    return (
        sa.select(m.c.user_id, m.c.data_type, sa.func.count(m.c.updated_at_us).label("n"))
        .where(m.c.provider == provider, m.c.ts_us >= start_us, m.c.ts_us < end_us)
        .group_by(m.c.user_id, m.c.data_type)
    )


def records_between(
    store: RecordStore, provider: str, start_us: int, end_us: int
) -> dict[Key, int]:
    """(user, type) -> records stored for [start_us, end_us): series samples by their chunk's
    hour (so `start_us` should be an hour's start), measurements by their time."""
    found: dict[Key, int] = {}
    with store.read(snapshot=True) as conn:
        for query in (
            series_count_query(provider, start_us, end_us),
            measurement_count_query(provider, start_us, end_us),
        ):
            for row in conn.execute(query):
                key = (row.user_id, row.data_type)
                found[key] = found.get(key, 0) + int(row.n)
    return found


def records_per_hour(
    store: RecordStore, provider: str, start_us: int, end_us: int
) -> list[tuple[int, str, int]]:
    """(hour start, type, records) of [start_us, end_us), every person together: series samples
    by their chunk's hour, measurements by the hour of their time (counts only: the plots of the
    sync_status assets)."""
    s, m = series_chunks, measurements
    hour = (m.c.ts_us // HOUR_US) * HOUR_US
    queries = (
        sa.select(s.c.hour_us.label("hour"), s.c.data_type, sa.func.sum(s.c.samples).label("n"))
        .where(s.c.provider == provider, s.c.hour_us >= start_us, s.c.hour_us < end_us)
        .group_by(s.c.hour_us, s.c.data_type),
        sa.select(hour.label("hour"), m.c.data_type, sa.func.count(m.c.updated_at_us).label("n"))
        .where(m.c.provider == provider, m.c.ts_us >= start_us, m.c.ts_us < end_us)
        .group_by(hour, m.c.data_type),
    )
    found: dict[tuple[int, str], int] = {}
    with store.read(snapshot=True) as conn:
        for query in queries:
            for row in conn.execute(query):
                key = (int(row.hour), row.data_type)
                found[key] = found.get(key, 0) + int(row.n)
    return [(h, t, n) for (h, t), n in sorted(found.items())]


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else from_us(micros)


# -- per person and type ---------------------------------------------------------------------------


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
    sync_frequency: str = "hourly"
    connected_at: datetime | None = None
    # Notified windows the provider answered empty (ohx_dagster/sync/waiting.py): still asked for,
    # since when the oldest has waited, and how many were given up on.
    waiting_windows: int = 0
    waiting_since: datetime | None = None
    given_up: int = 0

    def waiting_late(self, now: datetime, horizon: timedelta) -> bool:
        """A notified window still empty after the provider's re-sync horizon, or given up on."""
        return self.given_up > 0 or (
            self.waiting_since is not None and now - self.waiting_since >= horizon
        )

    def lag(self, now: datetime) -> timedelta | None:
        return None if self.covered_until is None else max(timedelta(0), now - self.covered_until)

    def waiting(self, now: datetime) -> timedelta | None:
        """How long the person's data of this type has waited: since the end of what is
        covered, or since they connected when that is later (nothing covered yet, or only an
        old day: no one falls behind before they connect)."""
        known = [t for t in (self.covered_until, self.connected_at) if t is not None]
        return max(timedelta(0), now - max(known)) if known else None

    def state_text(self) -> str:
        if self.state == REFUSED:
            return f"{self.state}: {self.state_reason}"
        if self.state == ACTIVE and (self.waiting_windows or self.given_up):
            since = iso(self.waiting_since) if self.waiting_since else None
            parts = [f"{self.waiting_windows} notified since {since}"] if since else []
            parts += [f"{self.given_up} given up"] if self.given_up else []
            return f"waiting for the provider ({', '.join(parts)})"
        return self.state

    def to_json(self, now: datetime) -> dict[str, Any]:
        data = asdict(self)
        lag = self.lag(now)
        for name in ("covered_until", "last_success", "last_error_at", "connected_at",
                     "waiting_since"):  # fmt: skip
            data[name] = iso(data[name])
        data["lag"] = None if lag is None else iso_duration(lag)
        return data


def person_state(person: PersonRow) -> tuple[str, str | None]:
    """The person's connection state in words, and its reason."""
    from ohx_dagster.storage.store import DISCONNECTED, NEEDS_REAUTHORIZATION

    if not person.connected or person.state == DISCONNECTED:
        return "disconnected", person.state_reason
    if person.state == NEEDS_REAUTHORIZATION:
        return "needs reauthorization", person.state_reason
    return ACTIVE, None


def window_start(now: datetime) -> datetime:
    """Where "the last 24 h" begins: the start of the UTC hour 23 hours before the current one
    (series are stored per hour, so counts are per whole hour)."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)


def collect(store: RecordStore, provider: str | None, now: datetime) -> list[TypeStatus]:
    """Every person of `provider` (every provider with people when None) and type, in the order
    of HealthDataType within each person."""
    from ohx_dagster.core.models import HealthDataType
    from ohx_dagster.core.times import HOUR_US, to_us
    from ohx_dagster.providers.registry import SUPPORTED_TYPES
    from ohx_dagster.storage.store import config_hash

    order = {t.value: n for n, t in enumerate(HealthDataType)}
    start_us = to_us(window_start(now))
    end_us = start_us + 24 * HOUR_US
    found: list[TypeStatus] = []
    for name in [provider] if provider else providers(store):
        people = store.people(name)
        if not people:
            continue
        covered = covered_until(store, name)
        counts = records_between(store, name, start_us, end_us)
        statuses = {(r.user_id, r.data_type): r for r in store.type_statuses(name)}
        waits = waiting_by_type(store, name, [p.config.user_id for p in people])
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
                elif (
                    state == ACTIVE
                    and refused
                    and status is not None  # refused says so: for the type checker
                    and status.refused_config in (None, current)
                ):
                    kind, why = REFUSED, status.refused_reason
                elif state == ACTIVE and data_type not in enabled:
                    kind, why = "not enabled", None
                found.append(
                    TypeStatus(
                        provider=name,
                        user_id=user,
                        patient=config.fhir_patient_id,
                        data_type=data_type,
                        state=kind,
                        state_reason=why,
                        covered_until=_moment(covered.get((user, data_type))),
                        last_success=_moment(status and status.last_success_us),
                        last_error=status.last_error if status else None,
                        last_error_at=_moment(status and status.last_error_us),
                        records_24h=counts.get((user, data_type), 0),
                        sync_frequency=config.sync_frequency.value,
                        connected_at=_moment(person.connected_at_us),
                        **waits.get((user, data_type), {}),
                    )
                )
    return found


def waiting_by_type(
    store: RecordStore, provider: str, user_ids: list[str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (person, type): the TypeStatus fields of their windows waiting for the provider."""
    from ohx_dagster.sync import waiting

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for user_id, text in store.cursors(provider, waiting.WAITING, user_ids).items():
        for item in waiting.load(text):
            entry = found.setdefault(
                (user_id, item.data_type),
                {"waiting_windows": 0, "waiting_since": None, "given_up": 0},
            )
            if item.expired:
                entry["given_up"] += 1
                continue
            entry["waiting_windows"] += 1
            since = from_us(item.since_us)
            if entry["waiting_since"] is None or since < entry["waiting_since"]:
                entry["waiting_since"] = since
    return found


# -- how far behind is too far ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LagLimit:
    """How far behind a source's people may fall: `fixed` (OHX_MAX_SYNC_LAG) for everyone, else
    twice their sync interval plus the provider's re-sync horizon."""

    horizon: timedelta
    fixed: timedelta | None = None

    def allowed(self, frequency: str) -> timedelta:
        if self.fixed is not None:
            return self.fixed
        return 2 * SYNC_INTERVAL.get(frequency, SYNC_INTERVAL["hourly"]) + self.horizon

    def rule(self) -> str:
        if self.fixed is not None:
            return f"{words(self.fixed)} ({LAG_SETTING})"
        return (
            f"2 x the sync interval (1 h hourly and realtime, 1 d daily) + the re-sync horizon "
            f"({words(self.horizon)}); set {LAG_SETTING} to change it"
        )


def is_behind(row: TypeStatus, now: datetime, limit: LagLimit) -> bool:
    """An active, enabled, supported, not refused type that has waited longer than allowed."""
    if row.state != ACTIVE:
        return False
    waited = row.waiting(now)
    return waited is not None and waited > limit.allowed(row.sync_frequency)


# Problems first: what is behind, then what needs someone (reauthorization, refusals), then the
# types whose last attempt failed, then everything else.
_STATE_RANK: Final = {"needs reauthorization": 1, REFUSED: 2, ACTIVE: 4, "disconnected": 5}
MAX_TABLE_ROWS: Final = 500


def failing(row: TypeStatus) -> bool:
    """The type's last attempt failed (an error newer than its last success)."""
    return row.last_error_at is not None and (
        row.last_success is None or row.last_error_at > row.last_success
    )


def table_rows(
    rows: list[TypeStatus], now: datetime, limit: LagLimit | None, *, max_rows: int = MAX_TABLE_ROWS
) -> list[dict[str, Any]]:
    """The status as rows of plain values for a table (ISO times, lag in words), problems first,
    at most `max_rows`. `limit` None: the source keeps no lag (an export)."""

    def rank(position: int, row: TypeStatus) -> tuple[int, int]:
        if limit is not None and is_behind(row, now, limit):
            return (0, position)
        if row.state == ACTIVE and failing(row):
            return (3, position)
        return (_STATE_RANK.get(row.state, 6), position)

    ordered = [row for _, row in sorted(enumerate(rows), key=lambda item: rank(*item))]
    table = []
    for row in ordered[:max_rows]:
        lag = row.lag(now)
        allowed = None if limit is None else limit.allowed(row.sync_frequency)
        table.append(
            {
                "person": row.user_id,
                "type": row.data_type,
                "state": row.state_text(),
                "covered_until": iso(row.covered_until) or "never",
                "lag": "" if lag is None else words(lag),
                "allowed_lag": "" if allowed is None or row.state != ACTIVE else words(allowed),
                "behind": limit is not None and is_behind(row, now, limit),
                "records_24h": row.records_24h,
                "last_error": (
                    f"{iso(row.last_error_at)} {' '.join(row.last_error.split())[:120]}"
                    if row.last_error
                    else ""
                ),
            }
        )
    return table
