"""The record store as a Dagster resource (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from functools import cache

import dagster as dg

from ohx_dagster.store import RecordStore


@cache
def _store(url: str) -> RecordStore:
    # One engine (connection pool) per process and URL, shared by every asset in the run.
    return RecordStore(url)


class RecordStoreResource(dg.ConfigurableResource):
    """Where records, sync state, users and aggregates live. `database_url` is sqlite:///path
    or postgresql://user:password@host/db (credentials from OHX_DATABASE_URL, never in code)."""

    database_url: str

    def get_store(self) -> RecordStore:
        return _store(self.database_url)
