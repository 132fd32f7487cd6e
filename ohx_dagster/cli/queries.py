"""Read-only queries the CLI needs and the store does not offer, in SQLAlchemy on `store.read()`.

Each reads one provider at a time, so the (provider, time) indexes of series_chunks and
measurements bound the 24-hour counts to the last day's rows, whatever the history holds.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ohx_dagster.schema import (
    coverage,
    measurements,
    oauth_tokens,
    series_chunks,
    users,
    webhook_subscriptions,
)
from ohx_dagster.store import RecordStore

Key = tuple[str, str]  # (user id, data type)


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
