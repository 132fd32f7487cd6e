"""Read-only queries the CLI needs and the store does not offer, in SQLAlchemy on `store.read()`.

The status queries (covered until, records in a window) live in ohx_dagster/sync/status.py, which
the UI's sync_status assets read too; they are named here for the commands that use them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ohx_dagster.storage.schema import oauth_tokens, webhook_subscriptions
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.status import (
    Key,
    covered_until,
    measurement_count_query,
    providers,
    records_between,
    series_count_query,
)

__all__ = [
    "Key",
    "covered_until",
    "measurement_count_query",
    "providers",
    "records_between",
    "series_count_query",
    "subscriptions",
    "token_row",
]


def subscriptions(store: RecordStore, provider: str, user_id: str) -> list[Any]:
    """The person's webhook subscriptions, and the provider's app-wide ones (user id "")."""
    t = webhook_subscriptions
    query = (
        sa.select(t)
        .where(t.c.provider == provider, t.c.user_id.in_([user_id, ""]))
        .order_by(t.c.user_id.desc(), t.c.target)
    )
    with store.read() as conn:
        return list(conn.execute(query))


def token_row(store: RecordStore, provider: str, user_id: str) -> Any | None:
    """Scope and times of the person's stored OAuth tokens (never the ciphertext)."""
    t = oauth_tokens
    query = sa.select(t.c.scope, t.c.expires_at_us, t.c.updated_at_us).where(
        t.c.provider == provider, t.c.user_id == user_id
    )
    with store.read() as conn:
        return conn.execute(query).one_or_none()
