"""The record store's coverage: the `coverage` table.

Per person and type, the intervals a sync has fetched in full. Coverage is added only in the
commit that stores the records it claims (store_records.py), and taken away when the provider
says a window changed (`uncover`) or retention deletes what it covered, so it never claims data
the store does not hold; syncs compute their gaps from it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core import coverage as cov
from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.times import from_us
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import coverage
from ohx_dagster.storage.store_base import StoreBase


class CoverageMixin(StoreBase):
    """Coverage: what has been fetched in full, per person and type."""

    # -- coverage ------------------------------------------------------------------------------

    def _add_coverage(
        self,
        conn: Connection,
        provider: str,
        user_id: str,
        covered: Mapping[str, Sequence[Interval]],
    ) -> dict[str, list[Interval]]:
        """The person's coverage of each type with these intervals added: read in one query,
        written back only for the types it changed. Returns what was not covered before."""
        if not covered:
            return {}
        c = coverage
        person = (c.c.provider == provider) & (c.c.user_id == user_id)
        stored: dict[str, list[Interval]] = defaultdict(list)
        query = sa.select(c.c.data_type, c.c.start_us, c.c.end_us).where(
            person, c.c.data_type.in_(sorted(covered))
        )
        for row in conn.execute(query.order_by(c.c.data_type, c.c.start_us)):
            stored[row.data_type].append((row.start_us, row.end_us))
        changed, gained = {}, {}
        for data_type, intervals in covered.items():
            before = stored.get(data_type, [])
            merged = cov.normalize([*before, *intervals])
            if merged != before:
                changed[data_type] = merged
                gained[data_type] = [g for span in intervals for g in cov.gaps(span, before)]
        if not changed:
            return {}
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
        return gained

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
