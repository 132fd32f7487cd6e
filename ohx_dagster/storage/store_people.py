"""The record store's people: the `users` table.

Who is registered with a provider, their settings (zone history and link generation included),
whether they are connected, and their connection state (active, needing reauthorization,
disconnected). A zone change re-cuts the person's stored days, so this group also reads the
record tables' span of a person and marks the days that move for publishing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import HOUR_US, from_us, now_us
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import measurements, series_chunks, users
from ohx_dagster.storage.store_base import StoreBase

ACTIVE, NEEDS_REAUTHORIZATION, DISCONNECTED = "active", "needs_reauthorization", "disconnected"


@dataclass(frozen=True, slots=True)
class PersonRow:
    config: HealthSyncConfig
    connected: bool
    connected_at_us: int
    state: str
    state_reason: str | None
    state_at_us: int | None


class PeopleMixin(StoreBase):
    """The people: registering, (re)connecting, settings and zone, connection state."""

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

    def connected_at(self, provider: str, user_ids: Iterable[str]) -> dict[str, int]:
        """When each of these people connected (the start of their history: store.history_start)."""
        query = sa.select(users.c.user_id, users.c.connected_at_us).where(
            users.c.provider == provider, users.c.user_id.in_(sorted(user_ids))
        )
        with self.read() as conn:
            return {r.user_id: int(r.connected_at_us) for r in conn.execute(query)}

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
