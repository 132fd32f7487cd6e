"""What every `ohx` command shares: where the store is, how it is opened, the one line a person
sees for an error they can fix, and how times are shown (ISO 8601 and words, never the epoch
microseconds the tables hold).

Only click is imported at module level: `ohx --help` loads no database driver, pandas or Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ohx_dagster.core.errors import OhxError

if TYPE_CHECKING:
    from rich.console import Console

    from ohx_dagster.storage.store import RecordStore

# The database the command opened, for the error line of a connection failure.
_opened: dict[str, str] = {}


class NoDatabase(OhxError):
    """A command that reads the store found no SQLite file where the settings point."""


def ohx_home(env: Mapping[str, str] | None = None) -> Path:
    """OHX_HOME, as ohx_dagster.config reads it (StorageSettings)."""
    from ohx_dagster.config.storage import StorageSettings

    return StorageSettings.from_env(env).home


def database_url(env: Mapping[str, str] | None = None) -> str:
    """OHX_DATABASE_URL, or the embedded SQLite default under OHX_HOME (StorageSettings).

    Read alone, without Settings.from_env: `ohx db upgrade` runs in deployments (a migration job)
    whose environment holds the database URL and nothing else."""
    from ohx_dagster.config.storage import StorageSettings

    return StorageSettings.from_env(env).database_url


def sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if not path or path == ":memory:" else Path(path)


def redacted(url: str) -> str:
    from ohx_dagster.storage.db import redacted as hide

    return hide(url)


def missing_database(url: str) -> NoDatabase:
    return NoDatabase(
        f"no record store at {sqlite_file(url)} (OHX_DATABASE_URL, default $OHX_HOME/ohx.db, "
        f"OHX_HOME={ohx_home()}): point the variables at the store, or create it with "
        "`ohx db upgrade`"
    )


def remember_database(url: str) -> None:
    _opened["url"] = url


def open_store(ctx: click.Context, *, create: bool = False) -> RecordStore:
    """The record store of the settings, disposed when the command ends. A SQLite file that is
    not there is an error unless `create` (commands that only read do not make databases)."""
    from ohx_dagster.storage.store import RecordStore

    url = database_url()
    remember_database(url)
    path = sqlite_file(url)
    if path is not None and not create and not path.is_file():
        raise missing_database(url)
    store = RecordStore(url)
    ctx.call_on_close(store.dispose)
    return store


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def database_error(exc: BaseException) -> str:
    """A database that cannot be reached, as one line naming the setting."""
    reason = one_line(getattr(exc, "orig", None) or exc)
    reason = reason.split(" (Background on this error at:")[0]
    url = _opened.get("url")
    where = f"database {redacted(url)}" if url else "the database"
    return (
        f"{where} (OHX_DATABASE_URL): {reason}: check that the server is running and reachable "
        "and that the URL's host, database, user and password are right"
    )


def now() -> datetime:
    return datetime.now(UTC)


# -- output ----------------------------------------------------------------------------------------


def console(*, stderr: bool = False) -> Console:
    """A rich console on click's stream; wide when the output is not a terminal (a file, a pipe,
    a test), so that tables are not wrapped into columns of a few characters."""
    from rich.console import Console

    from ohx_dagster.config.cli import CliSettings

    # Deprecated in click 8.5 (served by its module __getattr__, typed object), still the same
    # function until click 9.
    stream = click.get_text_stream("stderr" if stderr else "stdout")  # type: ignore[operator]
    width = None if stream.isatty() else CliSettings.from_env().width
    return Console(file=stream, width=width, highlight=False, soft_wrap=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def check_provider(provider: str | None, param_hint: str = "--provider") -> str | None:
    """A --provider value (or the PROVIDER argument): one of the sources this product knows."""
    if provider is None:
        return None
    from ohx_dagster.providers.registry import KNOWN_SOURCES

    if provider not in KNOWN_SOURCES:
        raise click.BadParameter(
            f"{provider!r}: expected one of {', '.join(KNOWN_SOURCES)}", param_hint=param_hint
        )
    return provider
