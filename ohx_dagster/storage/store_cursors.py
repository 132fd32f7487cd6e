"""The record store's provider cursors: the `provider_cursors` table.

Per person, named values a provider's sync keeps between runs (a provider's own cursor, the
windows a notification said to wait for). A commit moves them only together with the records they
led to (store_records.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.times import now_us
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import provider_cursors
from ohx_dagster.storage.store_base import StoreBase


class CursorsMixin(StoreBase):
    """Provider cursors: a provider's named values per person."""

    # -- provider cursors ----------------------------------------------------------------------

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
