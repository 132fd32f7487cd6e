"""`ohx`: the operator's command line (console script `ohx = "ohx_dagster.cli:main"`).

| command | module |
|---|---|
| ohx status [--provider P] [--person ID] [--all] [--json] | status.py |
| ohx users list / show / disconnect / delete / relink / readmit | users.py |
| ohx audit [--since] [--action] [--json] | audit.py |
| ohx connect <provider> --patient ID | connect.py |
| ohx import apple-health / fitabase | imports.py |
| ohx doctor | doctor.py |
| ohx db upgrade / current | db.py |
| ohx fhir fetch-packages | fhir.py |
| ohx dev | dev.py |

`ohx --version` prints the installed package's version; shell completion is click's
(`eval "$(_OHX_COMPLETE=bash_source ohx)"`, zsh_source, fish_source).

The commands that read the settings (status, users, connect, import, dev) validate them first
(doctor.validate_environment: the settings, OHX_TOKEN_KEY, the exports' data); `--help` does not.

An error a person can fix (a setting, an argument, a file, an unreachable database) is one line
on stderr naming what to change, exit code 1; `ohx --debug ...` shows the traceback instead.
`--help` only prints: no command module opens a database or imports pandas or Dagster before
its command runs.
"""

from __future__ import annotations

from typing import Any, Final

import click

from ohx_dagster.cli import (
    audit,
    common,
    connect,
    db,
    dev,
    doctor,
    fhir,
    imports,
    staff,
    status,
    users,
)
from ohx_dagster.core.errors import OhxError


def _user_error(exc: BaseException) -> str | None:
    """The one line for an error a person can cause and fix, None for anything else (a bug)."""
    import sqlalchemy.exc

    if isinstance(exc, OhxError):
        return common.one_line(exc)
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return common.database_error(exc)
    if isinstance(exc, sqlalchemy.exc.ArgumentError):
        return f"OHX_DATABASE_URL: {common.one_line(exc)}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or common.one_line(exc)}"
    return None


# Commands that read the product's settings: the settings are validated before they run (doctor
# reports them as a check; `db` runs in migration jobs whose environment names the database only;
# `fhir fetch-packages` reads none).
VALIDATED: Final = frozenset({"status", "users", "connect", "import", "dev"})
HELP: Final = frozenset({"-h", "--help"})


class UsageLine(click.UsageError):
    """A wrong argument or option, as one line naming it and where the help is."""

    def show(self, file: Any = None) -> None:
        where = f" (see `{self.ctx.command_path} --help`)" if self.ctx is not None else ""
        click.echo(f"ohx: error: {common.one_line(self.format_message())}{where}", err=True)


class OhxGroup(click.Group):
    """The top-level group: validates the configuration of the commands that read it, and turns
    the errors a person can fix into one line."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        # `--help` only prints, whatever the settings say; completion never validates.
        ctx.meta["ohx.validate"] = (
            name in VALIDATED and not ctx.resilient_parsing and not HELP.intersection(rest)
        )
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageLine:
            raise
        except click.UsageError as exc:
            if exc.ctx is None or exc.ctx.command is self:
                raise
            raise UsageLine(exc.format_message(), exc.ctx) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            raise click.exceptions.Exit(1) from None  # `ohx status | head`
        except Exception as exc:
            message = _user_error(exc)
            if message is None or ctx.params.get("debug"):
                raise
            click.echo(f"ohx: error: {message}", err=True)
            raise click.exceptions.Exit(1) from None


@click.group(cls=OhxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of an error, not one line.")
# The installed distribution's version (pyproject.toml), read when the option is given.
@click.version_option(package_name="ohx-dagster", prog_name="ohx", message="%(prog)s %(version)s")
def cli(debug: bool) -> None:
    """Open Health Exchange sync: status, people, connections, imports and checks.

    \b
    Shell completion (click's): add to ~/.bashrc, ~/.zshrc or fish's config
      eval "$(_OHX_COMPLETE=bash_source ohx)"      # bash
      eval "$(_OHX_COMPLETE=zsh_source ohx)"       # zsh
      _OHX_COMPLETE=fish_source ohx | source       # fish
    """
    ctx = click.get_current_context()
    if ctx.meta.get("ohx.validate"):
        doctor.validate_environment()


for command in (
    status.status,
    users.users,
    audit.audit,
    staff.staff,
    connect.connect,
    imports.import_,
    doctor.doctor,
    db.db,
    fhir.fhir,
    dev.dev,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="ohx")
