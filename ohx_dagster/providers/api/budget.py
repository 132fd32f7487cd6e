"""A provider application's request budget, shared by every run, shard and process through the
database, so that the documented limits hold however many runs call the provider at once:

| provider | documented limit | counted per |
|---|---|---|
| oura | 5,000 requests per 5 minutes | application |
| withings | 120 requests per minute | application |
| google_health | 300 requests per minute | person |
| polar | 500 requests per 15 minutes (plus 20 per person) | application |
| dexcom | 60,000 requests per hour | application |

Each request takes one from the current window's allowance (one short write transaction); when
none is left, or after the provider answered 429 (`block`: nobody calls before its Retry-After),
the request is not sent and RateLimited is raised: the sync defers the rest of its people and the
run is retried after the wait, with their gaps still open, so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa

from ohx_dagster.core.errors import RateLimited
from ohx_dagster.core.times import to_us
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import request_budget
from ohx_dagster.storage.store import RecordStore

# Wait this long after a 429 that named no Retry-After.
DEFAULT_BLOCK_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class RequestLimit:
    """`requests` per `per_s` seconds, for the application or (`per_person`) for each person."""

    requests: int
    per_s: float
    per_person: bool = False


class RequestBudget:
    """One allowance (an application's, or one person's at a provider that counts per person)."""

    def __init__(
        self,
        store: RecordStore,
        provider: str,
        limit: RequestLimit,
        person: str = "",
        *,
        clock=lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.provider = provider
        self.limit = limit
        self.key = f"{provider}|{person}" if limit.per_person else provider
        self.clock = clock

    def take(self) -> None:
        now = to_us(self.clock())
        window = int(self.limit.per_s * 1_000_000)
        t = request_budget
        with self.store.write() as conn:
            db.lock(conn, "budget", self.key)
            row = conn.execute(sa.select(t).where(t.c.key == self.key)).one_or_none()
            if row is not None and row.blocked_until_us and row.blocked_until_us > now:
                raise RateLimited(self.provider, (row.blocked_until_us - now) / 1e6)
            if row is None or now >= row.window_start_us + window:
                db.upsert(
                    conn,
                    t,
                    [
                        {
                            "key": self.key,
                            "window_start_us": now,
                            "used": 1,
                            "blocked_until_us": None,
                        }
                    ],
                )
                return
            if row.used >= self.limit.requests:
                raise RateLimited(self.provider, (row.window_start_us + window - now) / 1e6)
            conn.execute(t.update().where(t.c.key == self.key).values(used=t.c.used + 1))

    def block(self, retry_after_s: float | None) -> None:
        now = to_us(self.clock())
        until = now + int((retry_after_s if retry_after_s is not None else DEFAULT_BLOCK_S) * 1e6)
        t = request_budget
        with self.store.write() as conn:
            db.lock(conn, "budget", self.key)
            row = conn.execute(sa.select(t).where(t.c.key == self.key)).one_or_none()
            if row is None:
                db.upsert(
                    conn,
                    t,
                    [
                        {
                            "key": self.key,
                            "window_start_us": now,
                            "used": 0,
                            "blocked_until_us": until,
                        }
                    ],
                )
            else:
                later = max(until, row.blocked_until_us or 0)
                conn.execute(t.update().where(t.c.key == self.key).values(blocked_until_us=later))
