"""Storage settings: the data directory, the record store and whether opening it migrates its
schema. Read alone by `ohx db` (a migration job's environment names the database and nothing
else) and by the store (ohx_dagster/storage/db.py).

| variable | default | meaning |
|---|---|---|
| OHX_HOME | ~/.ohx | data directory: SQLite store, FHIR NDJSON output, the erasure salt file |
| OHX_DATABASE_URL | sqlite:///$OHX_HOME/ohx.db | record store (sqlite:/// or postgresql://) |
| OHX_DB_AUTO_MIGRATE | (unset: yes for SQLite, no for a server) | whether opening the store migrates its schema (1/true/yes, 0/false/no); production runs `ohx db upgrade` first |
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted

AUTO_MIGRATE_ENV: Final = "OHX_DB_AUTO_MIGRATE"


def ohx_home(env: Mapping[str, str] | None = None) -> Path:
    """OHX_HOME (default ~/.ohx), `~` expanded."""
    env = environment.resolve(env)
    return Path(env.get("OHX_HOME") or Path.home() / ".ohx").expanduser()


@dataclass(frozen=True, slots=True, repr=False)
class StorageSettings(Redacted):
    """Where the data is, and whether opening the store may migrate it."""

    _urls = ("database_url",)

    home: Path
    database_url: str
    # OHX_DB_AUTO_MIGRATE: True or False as set, None unset (the URL decides: auto_migrate).
    auto_migrate_setting: bool | None = None
    # Whether OHX_DATABASE_URL is set (else database_url is the embedded SQLite default).
    database_url_set: bool = False
    # OHX_FHIR_DIR as given, else $OHX_HOME/fhir (Settings.fhir_dir checks and normalizes it).
    fhir_dir: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageSettings:
        env = environment.resolve(env)
        home = ohx_home(env)
        setting = env.get(AUTO_MIGRATE_ENV, "").strip().lower()
        auto: bool | None = None
        if setting in ("1", "true", "yes"):
            auto = True
        elif setting in ("0", "false", "no"):
            auto = False
        return cls(
            home=home,
            database_url=env.get("OHX_DATABASE_URL") or f"sqlite:///{home / 'ohx.db'}",
            auto_migrate_setting=auto,
            database_url_set=bool(env.get("OHX_DATABASE_URL")),
            fhir_dir=env.get("OHX_FHIR_DIR") or str(home / "fhir"),
        )

    def auto_migrate(self, url: str) -> bool:
        """Whether opening the store at `url` may migrate its schema: yes for the embedded SQLite
        default, no for a server database (the deployment runs `ohx db upgrade` first) unless
        OHX_DB_AUTO_MIGRATE says otherwise."""
        if self.auto_migrate_setting is not None:
            return self.auto_migrate_setting
        return url.startswith("sqlite:")
