"""The record store as a Dagster resource (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import dagster as dg
import pydantic

from ohx_dagster.config.settings import Settings
from ohx_dagster.config.storage import StorageSettings
from ohx_dagster.storage.store import RecordStore


@cache
def _store(url: str) -> RecordStore:
    # One engine (connection pool) per process and URL, shared by every asset in the run.
    return RecordStore(url)


class RecordStoreResource(dg.ConfigurableResource):
    """Where records, sync state, people and aggregates live. `database_url` is sqlite:///path
    or postgresql://user:password@host/db; a server URL comes in as EnvVar("OHX_DATABASE_URL"), so
    Dagster stores and shows the variable's name, never the password."""

    database_url: str = pydantic.Field(
        description="OHX_DATABASE_URL: the record store, sqlite:///path or "
        "postgresql://user:password@host/db."
    )

    def get_store(self) -> RecordStore:
        return _store(self.database_url)


def store_resource(settings: Settings, env: Mapping[str, str] | None = None) -> RecordStoreResource:
    """The store resource of these settings: the URL through EnvVar when the environment gives
    it (it may hold a password), else the embedded SQLite path (no secret in it)."""
    if StorageSettings.from_env(env).database_url_set:
        return RecordStoreResource(database_url=dg.EnvVar("OHX_DATABASE_URL"))
    return RecordStoreResource(database_url=settings.database_url)
