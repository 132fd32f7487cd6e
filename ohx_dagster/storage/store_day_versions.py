"""The record store's day partitions to publish: the `day_versions` table.

Per person and local day, a version that every change of the day's data bumps (in the
transaction that changes it) and the version last published, final or preliminary: a day whose
version is ahead of its published one is left to publish, so no change goes unpublished.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.times import now_us
from ohx_dagster.storage.schema import day_versions
from ohx_dagster.storage.store_base import StoreBase


class DayVersionsMixin(StoreBase):
    """Day partitions to publish: each person's day version and what was published."""

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

    def _bump_known_days(
        self, conn: Connection, provider: str, user_id: str, days: Iterable[date]
    ) -> None:
        """Of these days, the person's days the store knows (data stored or published) are
        marked changed; a day it does not know yet (in the future, or without data) is published
        when its own data comes. A known day not published yet is bumped too: a publisher may
        be writing it from a snapshot taken before this change, and would otherwise mark the
        version it read as published, this change left out."""
        names = sorted(day.isoformat() for day in days)
        if not names:
            return
        t = day_versions
        conn.execute(
            t.update()
            .where(t.c.provider == provider, t.c.user_id == user_id, t.c.day.in_(names))
            .values(version=t.c.version + 1, changed_us=now_us())
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
