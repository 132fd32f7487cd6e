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
        self.admin = sa.make_url(admin_url)

    def _create(self, name: str, template: str | None = None) -> str:
        connection = psycopg2.connect(
            dbname=self.admin.database,
            user=self.admin.username,
            host=self.admin.query.get("host") or self.admin.host,
            port=self.admin.port,
            password=self.admin.password,
        )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute(
                f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")
            )
        connection.close()
        return self.admin.set(drivername="postgresql", database=name).render_as_string(
            hide_password=False
        )

    def url(self, root: Path, label: str) -> str:
        return self._create(f"faults_{label.replace('-', '_').lower()}_{next(_NUMBERS)}")

    def copy(self, url: str, root: Path, label: str) -> str:
        template = sa.make_url(url).database
        return self._create(f"faults_{label.replace('-', '_').lower()}_{next(_NUMBERS)}", template)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the suite (pgserver); yields its admin URL (psycopg2)."""
    import pgserver

    data = Path(tempfile.mkdtemp(prefix="ohx-faults-pg-"))
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
                "WHERE datname LIKE 'faults_%' AND pid <> pg_backend_pid()"
            ))  # fmt: skip
        engine.dispose()
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
