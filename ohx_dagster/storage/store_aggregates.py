"""The record store's aggregates: the `aggregates` table.

Statistics of each person's local hours and days. Publishing writes a partition's rows in its own
transaction (ohx_dagster/publish/partitions.py); this group replaces a window's rows and reads
them back.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import sqlalchemy as sa

from ohx_dagster.core.models import DateRange
from ohx_dagster.core.times import to_us
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import AGGREGATE_COLUMNS, aggregates
from ohx_dagster.storage.store_base import StoreBase


class AggregatesMixin(StoreBase):
    """Aggregates: replacing and reading a window's buckets."""

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
