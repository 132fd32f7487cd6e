"""The record store: people, their records, what has been synced, and what must be published.

One `RecordStore` per process and database (thread-safe). The invariant it keeps: a sync commits a
person's records, the coverage it fetched and the day partitions it changed in ONE transaction,
under that person's lock, so coverage never claims data the store does not hold and no change is
ever left unpublished (docs/sync.md).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core import coverage as cov
from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.localdays import Calendar, any_zone_days
from ohx_dagster.core.models import DateRange, HealthSyncConfig
from ohx_dagster.core.records import concat, label_codes
from ohx_dagster.core.times import HOUR_US, from_us, now_us, to_us
from ohx_dagster.storage import db, migrate, record_tables
from ohx_dagster.storage.record_tables import DENSE, Chunk
from ohx_dagster.storage.schema import (
    AGGREGATE_COLUMNS,
    aggregates,
    coverage,
    day_versions,
    measurements,
    provider_cursors,
    series_chunks,
    type_status,
    users,
)

ACTIVE, NEEDS_REAUTHORIZATION, DISCONNECTED = "active", "needs_reauthorization", "disconnected"


def config_hash(config: HealthSyncConfig) -> str:
    """A refusal applies to the settings it happened under: edited settings are tried again."""
    return hashlib.sha256(orjson.dumps(config.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class CommitReport:
    """What one person's commit changed."""

    changed: list[Interval] = field(default_factory=list)  # instants whose stored data changed
    days: set[date] = field(default_factory=set)  # day partitions to publish again
    unknown_person: bool = False  # not in users (erased meanwhile): nothing was written

    @property
    def changed_anything(self) -> bool:
        return bool(self.changed)


def days_touched(
    spans: Iterable[Interval], clock: HealthSyncConfig | ZoneInfo | Calendar
) -> set[date]:
    """Day partitions whose output depends on these instants: every local day of the person
    that holds one (a partition publishes each person's local day,
    ohx_dagster/core/localdays.py)."""
    calendar = Calendar.of(clock)
    days: set[date] = set()
    for start, end in spans:
        days.update(calendar.days_spanned(start, max(end, start + 1)))
        if calendar.own_offsets:  # a record with its own offset: the day of that offset
            days.update(any_zone_days(start, end))
    return days


@dataclass(frozen=True, slots=True)
class PersonRow:
    config: HealthSyncConfig
    connected: bool
    connected_at_us: int
    state: str
    state_reason: str | None
    state_at_us: int | None


class RecordStore:
    def __init__(self, url: str, *, migrate_schema: bool | None = None) -> None:
        self.url = url
        self.engine = db.create_engine(url)
        self._insert = db.insert_for(self.engine)
        allowed = db.auto_migrate_default(url) if migrate_schema is None else migrate_schema
        migrate.ensure(self.engine, url, migrate=allowed)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with db.write(self.engine) as conn:
            yield conn

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        with db.read(self.engine, snapshot=snapshot) as conn:
            yield conn

    def upsert(self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        db.upsert(conn, table, rows)

    # -- people --------------------------------------------------------------------------------

    def upsert_user(
        self, config: HealthSyncConfig, *, connected: bool = True, conn: Connection | None = None
    ) -> None:
        """Register or (re)connect a person: reconnecting makes them active again and forgets the
        types the provider refused (the person may have granted them this time). `conn`: in the
        caller's transaction (connect_user: under the person's lock, after its checks)."""
        if conn is None:
            with self.write() as own:
                self.upsert_user(config, connected=connected, conn=own)
            return
        before = self._stored_config(conn, config.provider, config.user_id)
        if before is not None:
            # Their zone history stays; a new zone applies from today on (days already lived
            # keep theirs: `ohx users set-zone` re-cuts the past), and the days it moves are
            # marked for publishing.
            # So does their link generation (ids of a relinked person:
            # ohx_dagster/privacy/identity.py).
            kept = replace(
                config,
                timezone=before.timezone,
                zone_changes=before.zone_changes,
                link_generation=before.link_generation,
            )
            today = datetime.now(UTC).astimezone(config.zone).date()
            config = (
                kept if kept.timezone == config.timezone else kept.with_zone(config.timezone, today)
            )
            self._rezone(conn, before, config)
        row = {
            "provider": config.provider,
            "user_id": config.user_id,
            "config": orjson.dumps(config.to_json()).decode(),
            "connected": connected,
            "connected_at_us": now_us(),
            "state": ACTIVE if connected else DISCONNECTED,
            "state_reason": None,
            "state_at_us": now_us(),
        }
        statement = self._insert(users)
        # Reconnecting or editing a config keeps the original connection time.
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "user_id"],
                set_={
                    name: statement.excluded[name]
                    for name in ("config", "connected", "state", "state_reason", "state_at_us")
                },
            ),
            [row],
        )
        if connected:
            self._clear_refusals(conn, config.provider, config.user_id)

    def add_users(
        self, configs: Iterable[HealthSyncConfig], *, conn: Connection | None = None
    ) -> int:
        """Register people not yet known; known people keep their (possibly edited) config.
        `conn`: in the caller's transaction (identity.admit_discovered: after its checks)."""
        stamp = now_us()
        rows = [
            {
                "provider": c.provider,
                "user_id": c.user_id,
                "config": orjson.dumps(c.to_json()).decode(),
                "connected": True,
                "connected_at_us": stamp,
                "state": ACTIVE,
                "state_at_us": stamp,
            }
            for c in configs
        ]
        if not rows:
            return 0
        statement = self._insert(users).on_conflict_do_nothing(
            index_elements=["provider", "user_id"]
        )
        if conn is not None:
            return conn.execute(statement, rows).rowcount or 0
        with self.write() as own:
            return own.execute(statement, rows).rowcount or 0

    def _people(self, query: sa.Select) -> list[PersonRow]:
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [
            PersonRow(
                HealthSyncConfig.from_json(orjson.loads(r.config)),
                bool(r.connected),
                int(r.connected_at_us),
                r.state,
                r.state_reason,
                r.state_at_us,
            )
            for r in rows
        ]

    def people(self, provider: str | None = None) -> list[PersonRow]:
        """Everyone (connected or not) with their connection state, by provider and id."""
        query = sa.select(users)
        if provider is not None:
            query = query.where(users.c.provider == provider)
        return self._people(query.order_by(users.c.provider, users.c.user_id))

    def person(self, provider: str, user_id: str) -> PersonRow | None:
        found = self._people(
            sa.select(users).where(users.c.provider == provider, users.c.user_id == user_id)
        )
        return found[0] if found else None

    def users(self, provider: str, *, connected_only: bool = True) -> list[HealthSyncConfig]:
        """The provider's people; `connected_only`: those connected (whatever their state)."""
        return [p.config for p in self.people(provider) if p.connected or not connected_only]

    def active_users(self, provider: str) -> list[HealthSyncConfig]:
        """The people a sync may call the provider for: connected and not awaiting reconnection."""
        return [p.config for p in self.people(provider) if p.connected and p.state == ACTIVE]

    def all_users(self) -> list[HealthSyncConfig]:
        return [p.config for p in self.people()]

    def user(self, provider: str, user_id: str) -> HealthSyncConfig | None:
        found = self.person(provider, user_id)
        return None if found is None else found.config

    def users_activated_since(self, after_us: int) -> list[tuple[int, HealthSyncConfig]]:
        """People connected, or reconnected after needing reauthorization, after a point in time,
        oldest first: what the new-user sensor backfills (a reconnection's gap included)."""
        query = (
            sa.select(users)
            .where(
                users.c.state_at_us > after_us,
                users.c.connected.is_(True),
                users.c.state == ACTIVE,
            )
            .order_by(users.c.state_at_us, users.c.provider, users.c.user_id)
        )
        return [(p.state_at_us or 0, p.config) for p in self._people(query)]

    def set_zone(self, provider: str, user_id: str, timezone: str, since: date) -> list[date]:
        """The person lives in `timezone` from local day `since` on (a move, or a corrected
        setting: `date.min` re-cuts every day). Every stored day whose bounds change is marked
        for publishing, so its aggregates and FHIR are derived again and rows of the old cut go;
        the days marked, in order."""
        with self.write() as conn:
            db.lock(conn, "person", provider, user_id)
            before = self._stored_config(conn, provider, user_id)
            if before is None:
                raise KeyError(f"{provider}/{user_id} is not a connected person")
            after = before.with_zone(timezone, since)
            conn.execute(
                users.update()
                .where(users.c.provider == provider, users.c.user_id == user_id)
                .values(config=orjson.dumps(after.to_json()).decode())
            )
            return self._rezone(conn, before, after)

    def _stored_config(
        self, conn: Connection, provider: str, user_id: str
    ) -> HealthSyncConfig | None:
        row = conn.execute(
            sa.select(users.c.config).where(
                users.c.provider == provider, users.c.user_id == user_id
            )
        ).one_or_none()
        return None if row is None else HealthSyncConfig.from_json(orjson.loads(row.config))

    def _rezone(
        self, conn: Connection, before: HealthSyncConfig, after: HealthSyncConfig
    ) -> list[date]:
        """Mark for publishing every stored day of the person whose bounds differ between the
        two configs' zone histories; the days, in order."""
        old, new = Calendar.of(before), Calendar.of(after)
        if old == new:
            return []
        first, last = self._stored_span(conn, after.provider, after.user_id)
        if first is None or last is None:
            return []
        days = set()
        for calendar in (old, new):
            for day in calendar.days_spanned(first, last + 1):
                if old.day_window(day) != new.day_window(day):
                    days.add(day)
        self._bump_days(conn, after.provider, after.user_id, days)
        return sorted(days)

    @staticmethod
    def _stored_span(
        conn: Connection, provider: str, user_id: str
    ) -> tuple[int | None, int | None]:
        """The first and last instant of the person's stored data."""
        c, m = series_chunks, measurements
        spans = [
            conn.execute(
                sa.select(sa.func.min(c.c.hour_us), sa.func.max(c.c.hour_us) + HOUR_US).where(
                    c.c.provider == provider, c.c.user_id == user_id
                )
            ).one(),
            conn.execute(
                sa.select(sa.func.min(m.c.ts_us), sa.func.max(m.c.ts_us)).where(
                    m.c.provider == provider, m.c.user_id == user_id
                )
            ).one(),
        ]
        firsts = [int(a) for a, _ in spans if a is not None]
        lasts = [int(b) for _, b in spans if b is not None]
        return (min(firsts) if firsts else None), (max(lasts) if lasts else None)

    def stored_until(self, provider: str, user_id: str) -> datetime | None:
        """The end of the person's newest stored data (the end of its series hour, or the time
        of its newest measurement); None when nothing is stored."""
        with self.read() as conn:
            _, last = self._stored_span(conn, provider, user_id)
        return None if last is None else from_us(last)

    def set_state(self, provider: str, user_id: str, state: str, reason: str | None) -> None:
        values: dict[str, Any] = {"state": state, "state_reason": reason, "state_at_us": now_us()}
        if state == DISCONNECTED:
            values["connected"] = False
        with self.write() as conn:
            conn.execute(
                users.update()
                .where(users.c.provider == provider, users.c.user_id == user_id)
                .values(**values)
            )

    # -- records -------------------------------------------------------------------------------

    def commit(
        self,
        provider: str,
        user_id: str,
        zone: HealthSyncConfig | ZoneInfo | Calendar,
        batch: pd.DataFrame,
        *,
        covered: Mapping[str, Sequence[Interval]] | None = None,
        replace: Mapping[str, Sequence[Interval]] | None = None,
        cursors: Mapping[str, str] | None = None,
        asked_at_us: int | None = None,
    ) -> CommitReport:
        """One person's fetch in one transaction: records merged, `covered` added to coverage,
        the changed day partitions marked for publishing, the types' last success noted, and the
        provider's `cursors` moved (only ever with the records they led to).

        `replace`: windows the provider answered in full, whose stored records it did not send
        again are gone (deleted at the provider). `asked_at_us`: when this answer was asked for;
        records another run stored after that came from a later answer, and this one does not
        take them away (two runs of one day overlapping while the provider receives data)."""
        covered = covered or {}
        replace = replace or {}
        dense_rows, sparse = np.zeros(0, dtype=np.int64), batch
        if not batch.empty:
            codes, labels = label_codes(batch["data_type"].to_numpy())
            is_dense = np.isin(codes, [n for n, label in enumerate(labels) if label in DENSE])
            dense_rows, sparse = np.flatnonzero(is_dense), batch[~is_dense]
        report = CommitReport()
        with self.write() as conn:
            db.lock(conn, "person", provider, user_id)
            if not self._known(conn, provider, user_id):
                # Erased (or never connected) while this fetch ran: nothing of theirs is written.
                report.unknown_person = True
                return report
            if asked_at_us is not None and replace:
                replace = self._answered_last(conn, provider, user_id, replace, asked_at_us)
            report.changed += record_tables.write_series(
                conn, provider, user_id, batch, replace, rows=dense_rows
            )
            report.changed += record_tables.write_measurements(
                conn, provider, user_id, sparse, replace
            )
            self._add_coverage(conn, provider, user_id, covered)
            report.days = days_touched(report.changed, zone)
            self._bump_days(conn, provider, user_id, report.days)
            if covered:
                self._succeeded(conn, provider, user_id, covered)
            for name, value in (cursors or {}).items():
                self.set_cursor(conn, provider, user_id, name, value)
        return report

    @staticmethod
    def _answered_last(
        conn: Connection,
        provider: str,
        user_id: str,
        replace: Mapping[str, Sequence[Interval]],
        asked_at_us: int,
    ) -> dict[str, list[Interval]]:
        """The `replace` windows without the stored hours (series) and instants (measurements)
        that another run wrote after `asked_at_us`: a later answer of the provider stands."""
        kept: dict[str, list[Interval]] = {}
        for data_type, intervals in replace.items():
            windows = cov.normalize(intervals)
            if not windows:
                continue
            low, high = windows[0][0], windows[-1][1]
            if data_type in DENSE:
                s = series_chunks
                query = sa.select(s.c.hour_us).where(
                    s.c.provider == provider,
                    s.c.user_id == user_id,
                    s.c.data_type == data_type,
                    s.c.hour_us > low - record_tables.HOUR_US,
                    s.c.hour_us < high,
                    s.c.updated_at_us >= asked_at_us,
                )
                newer = [(h, h + record_tables.HOUR_US) for h in conn.execute(query).scalars()]
            else:
                m = measurements
                query = sa.select(m.c.ts_us).where(
                    m.c.provider == provider,
                    m.c.user_id == user_id,
                    m.c.data_type == data_type,
                    m.c.ts_us >= low,
                    m.c.ts_us < high,
                    m.c.updated_at_us >= asked_at_us,
                )
                newer = [(t, t + 1) for t in conn.execute(query).scalars()]
            holes = cov.normalize(newer)
            kept[data_type] = [g for w in windows for g in cov.gaps(w, holes)] if holes else windows
        return kept

    @staticmethod
    def _known(conn: Connection, provider: str, user_id: str) -> bool:
        query = sa.select(users.c.user_id).where(
            users.c.provider == provider, users.c.user_id == user_id
        )
        return conn.execute(query).first() is not None

    def read_chunks(
        self,
        provider: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
        data_types: Iterable[str] | None = None,
    ) -> list[Chunk]:
        with self.read() as conn:
            return record_tables.read_chunks(
                conn,
                provider,
                to_us(window.start),
                to_us(window.end),
                user_ids=user_ids,
                data_types=data_types,
            )

    def read_records(
        self,
        provider: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
        data_types: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Every record in the window as one batch (one row per sample: for checks and tests;
        the publishing path reads chunks)."""
        start, end = to_us(window.start), to_us(window.end)
        users_ = None if user_ids is None else list(user_ids)
        types = None if data_types is None else [str(t) for t in data_types]
        with self.read(snapshot=True) as conn:
            found = record_tables.read_chunks(
                conn, provider, start, end, user_ids=users_, data_types=types
            )
            sparse = record_tables.read_measurements(
                conn, provider, start, end, user_ids=users_, data_types=types
            )
        batch = concat([record_tables.chunks_to_batch(provider, found), sparse])
        return batch.sort_values(
            ["user_id", "data_type", "ts", "device_id"], ignore_index=True, kind="stable"
        )

    def count_records(self, provider: str | None = None) -> int:
        """Samples and measurements stored (a chunk counts its samples)."""
        s, m = series_chunks, measurements
        dense = sa.select(sa.func.coalesce(sa.func.sum(s.c.samples), 0))
        sparse = sa.select(sa.func.count()).select_from(m)
        if provider is not None:
            dense = dense.where(s.c.provider == provider)
            sparse = sparse.where(m.c.provider == provider)
        with self.read() as conn:
            return int(conn.execute(dense).scalar_one()) + int(conn.execute(sparse).scalar_one())

    def delete_before(self, provider: str, user_id: str, cutoff: datetime) -> tuple[int, int]:
        """Delete a person's records and whole aggregate buckets older than `cutoff`, and the
        coverage before it; returns (records, aggregates) deleted."""
        before = to_us(cutoff)
        s, m, a = series_chunks, measurements, aggregates
        person = (s.c.provider == provider) & (s.c.user_id == user_id)
        with self.write() as conn:
            db.lock(conn, "person", provider, user_id)
            whole = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(s.c.samples), 0)).where(
                    person, s.c.hour_us + record_tables.HOUR_US <= before
                )
            ).scalar_one()
            conn.execute(s.delete().where(person, s.c.hour_us + record_tables.HOUR_US <= before))
            # The hour that straddles the cutoff keeps its later samples only.
            straddling = conn.execute(
                sa.select(s.c.data_type).where(
                    person, s.c.hour_us < before, s.c.hour_us + record_tables.HOUR_US > before
                )
            ).scalars()
            trim = {kind: [(before - record_tables.HOUR_US, before)] for kind in straddling}
            before_trim = self._count_in(conn, provider, user_id, before)
            record_tables.write_series(conn, provider, user_id, pd.DataFrame(), trim)
            trimmed = before_trim - self._count_in(conn, provider, user_id, before)
            sparse = conn.execute(
                m.delete().where(
                    m.c.provider == provider, m.c.user_id == user_id, m.c.ts_us < before
                )
            ).rowcount
            buckets = conn.execute(
                a.delete().where(
                    a.c.provider == provider, a.c.user_id == user_id, a.c.bucket_end_us <= before
                )
            ).rowcount
            self._cut_coverage(conn, provider, user_id, before)
        return int(whole) + int(trimmed) + int(sparse or 0), int(buckets or 0)

    @staticmethod
    def _count_in(conn: Connection, provider: str, user_id: str, before: int) -> int:
        s = series_chunks
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(s.c.samples), 0)).where(
                    s.c.provider == provider,
                    s.c.user_id == user_id,
                    s.c.hour_us > before - record_tables.HOUR_US,
                    s.c.hour_us < before,
                )
            ).scalar_one()
        )

    # -- coverage ------------------------------------------------------------------------------

    def _add_coverage(
        self,
        conn: Connection,
        provider: str,
        user_id: str,
        covered: Mapping[str, Sequence[Interval]],
    ) -> None:
        """The person's coverage of each type with these intervals added: read in one query,
        written back only for the types it changed."""
        if not covered:
            return
        c = coverage
        person = (c.c.provider == provider) & (c.c.user_id == user_id)
        stored: dict[str, list[Interval]] = defaultdict(list)
        query = sa.select(c.c.data_type, c.c.start_us, c.c.end_us).where(
            person, c.c.data_type.in_(sorted(covered))
        )
        for row in conn.execute(query.order_by(c.c.data_type, c.c.start_us)):
            stored[row.data_type].append((row.start_us, row.end_us))
        changed = {}
        for data_type, intervals in covered.items():
            merged = cov.normalize([*stored.get(data_type, []), *intervals])
            if merged != stored.get(data_type, []):
                changed[data_type] = merged
        if not changed:
            return
        conn.execute(c.delete().where(person, c.c.data_type.in_(sorted(changed))))
        conn.execute(
            c.insert(),
            [
                {"provider": provider, "user_id": user_id, "data_type": data_type,
                 "start_us": s, "end_us": e}
                for data_type, merged in sorted(changed.items())
                for s, e in merged
            ],
        )  # fmt: skip

    def uncover(
        self, provider: str, user_id: str, windows: Mapping[str, Sequence[Interval]]
    ) -> None:
        """The provider says these windows changed (a notification): they are no longer covered
        until a run has read them again. A push run that cannot read them leaves a gap that the
        schedules' catch-up finds, instead of a change nobody fetches."""
        c = coverage
        with self.write() as conn:
            db.lock(conn, "person", provider, user_id)
            for data_type, intervals in windows.items():
                holes = cov.normalize(intervals)
                if not holes:
                    continue
                key = (
                    (c.c.provider == provider)
                    & (c.c.user_id == user_id)
                    & (c.c.data_type == data_type)
                )
                stored = [(r.start_us, r.end_us) for r in conn.execute(sa.select(c).where(key))]
                kept = [g for s in cov.normalize(stored) for g in cov.gaps(s, holes)]
                if kept == stored:
                    continue
                conn.execute(c.delete().where(key))
                if kept:
                    conn.execute(
                        c.insert(),
                        [
                            {"provider": provider, "user_id": user_id, "data_type": data_type,
                             "start_us": a, "end_us": b}
                            for a, b in kept
                        ],
                    )  # fmt: skip

    def _cut_coverage(self, conn: Connection, provider: str, user_id: str, before: int) -> None:
        c = coverage
        rows = conn.execute(
            sa.select(c).where(c.c.provider == provider, c.c.user_id == user_id)
        ).all()
        conn.execute(c.delete().where(c.c.provider == provider, c.c.user_id == user_id))
        kept = [
            {**r._asdict(), "start_us": max(r.start_us, before)} for r in rows if r.end_us > before
        ]
        if kept:
            conn.execute(c.insert(), kept)

    def coverage(
        self, provider: str, user_ids: Iterable[str] | None = None
    ) -> dict[tuple[str, str], list[Interval]]:
        """(user, type) -> covered intervals, of the provider's people (or of `user_ids`)."""
        c = coverage
        query = sa.select(c).where(c.c.provider == provider)
        if user_ids is not None:
            query = query.where(c.c.user_id.in_(sorted(user_ids)))
        found: dict[tuple[str, str], list[Interval]] = defaultdict(list)
        with self.read() as conn:
            for row in conn.execute(query.order_by(c.c.user_id, c.c.data_type, c.c.start_us)):
                found[(row.user_id, row.data_type)].append((row.start_us, row.end_us))
        return dict(found)

    def last_synced(self, provider: str, user_id: str, data_type: str) -> datetime | None:
        """The end of the person's latest covered window of the type (for people reading
        status; syncs compute gaps from the whole coverage)."""
        intervals = self.coverage(provider, [user_id]).get((user_id, str(data_type)))
        return None if not intervals else from_us(intervals[-1][1])

    # -- per-type status -----------------------------------------------------------------------

    def _succeeded(
        self, conn: Connection, provider: str, user_id: str, types: Iterable[str]
    ) -> None:
        statement = self._insert(type_status)
        rows = [
            {"provider": provider, "user_id": user_id, "data_type": t, "last_success_us": now_us()}
            for t in types
        ]
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "user_id", "data_type"],
                set_={"last_success_us": statement.excluded.last_success_us},
            ),
            rows,
        )

    def record_errors(
        self,
        provider: str,
        user_id: str,
        errors: Mapping[str, str],
        *,
        refused: bool = False,
        config: HealthSyncConfig | None = None,
    ) -> None:
        """Note failures per type; `refused`: the provider will not serve these types to us (403):
        they are skipped until the person reconnects or `config` changes."""
        if not errors:
            return
        stamp = now_us()
        statement = self._insert(type_status)
        rows = []
        for data_type, message in errors.items():
            row = {
                "provider": provider,
                "user_id": user_id,
                "data_type": data_type,
                "last_error": message[:2000],
                "last_error_us": stamp,
            }
            if refused:
                row |= {
                    "refused_reason": message[:2000],
                    "refused_us": stamp,
                    "refused_config": None if config is None else config_hash(config),
                }
            rows.append(row)
        updated = ["last_error", "last_error_us"]
        if refused:
            updated += ["refused_reason", "refused_us", "refused_config"]
        with self.write() as conn:
            for row in rows:
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["provider", "user_id", "data_type"],
                        set_={name: statement.excluded[name] for name in updated},
                    ),
                    [row],
                )

    def refused_types(self, config: HealthSyncConfig) -> dict[str, str]:
        """Types the provider refused for this person under their current settings."""
        t = type_status
        query = sa.select(t.c.data_type, t.c.refused_reason, t.c.refused_config).where(
            t.c.provider == config.provider,
            t.c.user_id == config.user_id,
            t.c.refused_reason.is_not(None),
        )
        current = config_hash(config)
        with self.read() as conn:
            rows = conn.execute(query).all()
        return {r.data_type: r.refused_reason for r in rows if r.refused_config in (None, current)}

    def refused_types_of(
        self, provider: str, configs: Mapping[str, HealthSyncConfig]
    ) -> dict[str, dict[str, str]]:
        """`refused_types` of each of these people, in one read."""
        t = type_status
        query = sa.select(t.c.user_id, t.c.data_type, t.c.refused_reason, t.c.refused_config).where(
            t.c.provider == provider,
            t.c.user_id.in_(sorted(configs)),
            t.c.refused_reason.is_not(None),
        )
        with self.read() as conn:
            rows = conn.execute(query).all()
        current = {user_id: config_hash(config) for user_id, config in configs.items()}
        found: dict[str, dict[str, str]] = {user_id: {} for user_id in configs}
        for r in rows:
            if r.refused_config in (None, current[r.user_id]):
                found[r.user_id][r.data_type] = r.refused_reason
        return found

    def _clear_refusals(self, conn: Connection, provider: str, user_id: str) -> None:
        t = type_status
        conn.execute(
            t.update()
            .where(t.c.provider == provider, t.c.user_id == user_id)
            .values(refused_reason=None, refused_us=None, refused_config=None)
        )

    def type_statuses(self, provider: str | None = None) -> list[Any]:
        t = type_status
        query = sa.select(t)
        if provider is not None:
            query = query.where(t.c.provider == provider)
        with self.read() as conn:
            return list(conn.execute(query.order_by(t.c.provider, t.c.user_id, t.c.data_type)))

    # -- day partitions to publish -------------------------------------------------------------

    def _bump_days(
        self, conn: Connection, provider: str, user_id: str, days: Iterable[date]
    ) -> None:
        rows = [
            {
                "provider": provider,
                "user_id": user_id,
                "day": day.isoformat(),
                "version": 1,
                "published_version": 0,
                "published_final": False,
                "changed_us": now_us(),
            }
            for day in sorted(days)
        ]
        if not rows:
            return
        t = day_versions
        statement = self._insert(t)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "user_id", "day"],
                set_={"version": t.c.version + 1, "changed_us": statement.excluded.changed_us},
            ),
            rows,
        )

    def day_versions(
        self, conn: Connection, provider: str, day: date, user_ids: Iterable[str] | None
    ) -> dict[str, int]:
        """Current version of each person's day (inside the caller's snapshot)."""
        t = day_versions
        query = sa.select(t.c.user_id, t.c.version).where(
            t.c.provider == provider, t.c.day == day.isoformat()
        )
        if user_ids is not None:
            query = query.where(t.c.user_id.in_(sorted(user_ids)))
        return {r.user_id: int(r.version) for r in conn.execute(query)}

    def mark_published(
        self,
        provider: str,
        day: date,
        versions: Mapping[str, int],
        final: Mapping[str, bool],
    ) -> None:
        """The day's output now reflects these versions (never moves a published version back)."""
        if not versions:
            return
        t = day_versions
        statement = self._insert(t)
        rows = [
            {
                "provider": provider,
                "user_id": user_id,
                "day": day.isoformat(),
                "version": version,
                "published_version": version,
                "published_final": bool(final.get(user_id, False)),
                "published_us": now_us(),
            }
            for user_id, version in sorted(versions.items())
        ]
        newer = statement.excluded.published_version > t.c.published_version
        with self.write() as conn:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["provider", "user_id", "day"],
                    set_={
                        "published_version": sa.case(
                            (newer, statement.excluded.published_version),
                            else_=t.c.published_version,
                        ),
                        "published_final": statement.excluded.published_final,
                        "published_us": statement.excluded.published_us,
                    },
                ),
                rows,
            )

    def unpublished_days(self, provider: str) -> dict[date, set[str]]:
        """Days with changes not yet published, and whose, of the provider's people."""
        t = day_versions
        query = sa.select(t.c.day, t.c.user_id).where(
            t.c.provider == provider, t.c.version > t.c.published_version
        )
        found: dict[date, set[str]] = defaultdict(set)
        with self.read() as conn:
            for row in conn.execute(query):
                found[date.fromisoformat(row.day)].add(row.user_id)
        return dict(found)

    def preliminary_days(self, provider: str, since: date) -> dict[date, set[str]]:
        """Days since `since` last published as preliminary, and whose."""
        t = day_versions
        query = sa.select(t.c.day, t.c.user_id).where(
            t.c.provider == provider,
            t.c.published_final.is_(False),
            t.c.published_version > 0,
            t.c.day >= since.isoformat(),
        )
        found: dict[date, set[str]] = defaultdict(set)
        with self.read() as conn:
            for row in conn.execute(query):
                found[date.fromisoformat(row.day)].add(row.user_id)
        return dict(found)

    # -- provider cursors ----------------------------------------------------------------------

    def holds(
        self, provider: str, user_id: str, data_type: str, start_us: int, end_us: int
    ) -> bool:
        """Whether the store holds any of the person's data of a type in [start, end)."""
        window = DateRange(from_us(start_us), from_us(end_us))
        return not self.read_records(
            provider, window, user_ids=[user_id], data_types=[data_type]
        ).empty

    def cursors(self, provider: str, name: str, user_ids: Iterable[str]) -> dict[str, str]:
        """One cursor of each of these people (those who have it), in one read."""
        t = provider_cursors
        query = sa.select(t.c.user_id, t.c.value).where(
            t.c.provider == provider, t.c.name == name, t.c.user_id.in_(sorted(set(user_ids)))
        )
        with self.read() as conn:
            return {row.user_id: row.value for row in conn.execute(query)}

    def cursor(self, provider: str, user_id: str, name: str) -> str | None:
        t = provider_cursors
        query = sa.select(t.c.value).where(
            t.c.provider == provider, t.c.user_id == user_id, t.c.name == name
        )
        with self.read() as conn:
            return conn.execute(query).scalar_one_or_none()

    def set_cursor(self, conn: Connection, provider: str, user_id: str, name: str, value: str):
        db.upsert(
            conn,
            provider_cursors,
            [{"provider": provider, "user_id": user_id, "name": name, "value": value,
              "updated_at_us": now_us()}],
        )  # fmt: skip

    # -- aggregates ----------------------------------------------------------------------------

    def replace_aggregates(
        self,
        provider: str,
        level: str,
        user_ids: Iterable[str],
        window: DateRange,
        frame: pd.DataFrame,
    ) -> int:
        """The people's `level` buckets starting in the window become exactly `frame`'s rows (a
        bucket whose records are all gone disappears)."""
        t = aggregates
        people = sorted(user_ids)
        rows = db.plain_rows(frame[AGGREGATE_COLUMNS]) if not frame.empty else []
        with self.write() as conn:
            for start in range(0, len(people), 500):
                conn.execute(
                    t.delete().where(
                        t.c.provider == provider,
                        t.c.level == level,
                        t.c.user_id.in_(people[start : start + 500]),
                        t.c.bucket_start_us >= to_us(window.start),
                        t.c.bucket_start_us < to_us(window.end),
                    )
                )
            db.upsert(conn, t, rows)
        return len(rows)

    def read_aggregates(
        self,
        provider: str,
        level: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Aggregates of `level` whose bucket starts inside the window (of `user_ids` only)."""
        t = aggregates
        query = sa.select(t).where(
            t.c.provider == provider,
            t.c.level == level,
            t.c.bucket_start_us >= to_us(window.start),
            t.c.bucket_start_us < to_us(window.end),
        )
        if user_ids is not None:
            query = query.where(t.c.user_id.in_(sorted(user_ids)))
        query = query.order_by(t.c.user_id, t.c.data_type, t.c.bucket_start_us)
        with self.read() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def history_start(config: HealthSyncConfig, connected_at_us: int, now: datetime) -> datetime:
    """Where an automated sync's goal begins for a person: their lookback before connecting,
    never earlier than their retention period allows (what retention deletes is not re-fetched)."""
    lookback = from_us(connected_at_us) - timedelta(days=config.lookback_days)
    return max(lookback, now - timedelta(days=config.retention_days))
