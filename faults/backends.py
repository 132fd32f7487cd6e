"""Where a scenario's record store lives: a SQLite file, or a fresh database on a real PostgreSQL
server (pgserver, as the tests use)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import sqlalchemy as sa

_NUMBERS = itertools.count(1)


class Backend:
    name = ""

    def url(self, root: Path, label: str) -> str:
        raise NotImplementedError

    def copy(self, url: str, root: Path, label: str) -> str:
        """A new database holding what `url` holds (no connection may be open to it)."""
        raise NotImplementedError


class SQLite(Backend):
    name = "sqlite"

    def url(self, root: Path, label: str) -> str:
        root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{root / f'{label}.db'}"

    def copy(self, url: str, root: Path, label: str) -> str:
        target = self.url(root, label)
        shutil.copyfile(url.removeprefix("sqlite:///"), target.removeprefix("sqlite:///"))
        return target


class Postgres(Backend):
    name = "postgresql"

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, root: Path, label: str) -> str:
        return create_database(self.admin_url, _database_name(label))

    def copy(self, url: str, root: Path, label: str) -> str:
        template = sa.make_url(url).database
        return create_database(self.admin_url, _database_name(label), template)


def _database_name(label: str) -> str:
    return f"faults_{label.replace('-', '_').lower()}_{next(_NUMBERS)}"


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """A new database `name` on the server (a copy of `template` if given), as a plain
    postgresql:// URL; one already there by that name is dropped first."""
    admin = sa.make_url(admin_url)
    connection = psycopg2.connect(
        dbname=admin.database,
        user=admin.username,
        host=admin.query.get("host") or admin.host,
        port=admin.port,
        password=admin.password,
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    connection.close()
    return admin.set(drivername="postgresql", database=name).render_as_string(hide_password=False)


@contextmanager
def postgres_server(prefix: str = "ohx-faults-pg-") -> Iterator[str]:
    """A real PostgreSQL server (pgserver) for a suite or a benchmark; yields its admin URL with
    the pinned driver (psycopg2)."""
    import pgserver

    data = Path(tempfile.mkdtemp(prefix=prefix))
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        url = sa.make_url(server.get_uri()).set(drivername="postgresql+psycopg2")
        yield url.render_as_string(hide_password=False)
    finally:
        # Connections of killed run processes may linger; the server stops without waiting.
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname <> current_database() AND pid <> pg_backend_pid()"
            ))  # fmt: skip
        engine.dispose()
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
