"""`ohx db`: the record store's schema revision (Alembic, ohx_dagster/storage/migrate.py).

Reads only OHX_DATABASE_URL (or the SQLite default under OHX_HOME): a deployment's migration job
has the database URL and nothing else.
"""

from __future__ import annotations

import click

from ohx_dagster.cli import common


@click.group("db")
def db() -> None:
    """The record store's schema: upgrade it, or show its revision."""


def _engine(*, create: bool):  # -> sqlalchemy Engine
    from ohx_dagster.storage import db as database

    url = common.database_url()
    common.remember_database(url)
    path = common.sqlite_file(url)
    if path is not None and not create and not path.is_file():
        raise common.missing_database(url)
    return url, database.create_engine(url)


@db.command("upgrade")
def upgrade() -> None:
    """Upgrade the record store (OHX_DATABASE_URL) to this release's schema; idempotent."""
    from ohx_dagster.storage import migrate

    url, engine = _engine(create=True)
    try:
        before = migrate.current(engine)
        after = migrate.upgrade(engine)
    finally:
        engine.dispose()
    where = common.redacted(url)
    if before == after:
        click.echo(f"{where}: already at schema revision {after} (head)")
    else:
        click.echo(f"{where}: schema revision {before or 'none (empty)'} -> {after}")


@db.command("current")
def current() -> None:
    """Show the record store's schema revision and this release's."""
    from ohx_dagster.storage import migrate

    url, engine = _engine(create=False)
    try:
        have = migrate.current(engine)
    finally:
        engine.dispose()
    want = migrate.head()
    where = common.redacted(url)
    if have == want:
        click.echo(f"{where}: schema revision {have} (head)")
    else:
        click.echo(
            f"{where}: schema revision {have or 'none (empty)'}; this release needs {want}: "
            "run `ohx db upgrade`"
        )
