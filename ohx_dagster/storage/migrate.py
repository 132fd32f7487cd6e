"""Schema revisions with Alembic: `ohx db upgrade` (and the store, when allowed, as it opens).

- A database with the current revision opens at once (checked once per process and URL).
- An empty database, or one at an older revision, is upgraded when the caller allows it (the
  embedded SQLite default does; a server database is upgraded by the deployment running
  `ohx db upgrade` before the code location starts, see docs/deployment.md).
- A database made by release 0.1 (its tables, no version table) is stamped as revision 0001 and
  upgraded from there, keeping its data.
- The revision lives in `ohx_schema_version`, so the store can share a database with Dagster's
  own storage (which keeps its revision in `alembic_version`).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).with_name("migrations")
# The PostgreSQL advisory lock that makes concurrent upgrades of one database take turns.
_UPGRADE_LOCK = ("ohx", "schema-upgrade")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def _made_by_release_0_1(conn: sa.Connection) -> bool:
    tables = set(sa.inspect(conn).get_table_names())
    return VERSION_TABLE not in tables and "health_records" in tables


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade to `revision`; returns the revision the database is at afterwards."""
    config = _config()
    with db.write(engine) as conn:
        db.lock(conn, *_UPGRADE_LOCK)
        config.attributes["connection"] = conn
        if _made_by_release_0_1(conn):
            command.stamp(config, "0001")
        command.upgrade(config, revision)
    found = current(engine)
    assert found is not None
    return found


def ensure(engine: Engine, url: str, *, migrate: bool) -> None:
    """Make sure the database is at the code's revision: upgrade it if allowed, else say how."""
    want = head()
    have = current(engine)
    if have == want:
        return
    if migrate:
        upgrade(engine)
        return
    raise ConfigError(
        f"database {db.redacted(url)} is at schema revision {have or 'none (empty)'}, this "
        f"release needs {want}: run `ohx db upgrade` (with the same OHX_DATABASE_URL)"
    )
