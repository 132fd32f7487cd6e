"""`ohx staff`: the staff who may start connections at the receiver's /connect and pass the
deployment's authenticating proxy (ohx_dagster/privacy/staff.py).

- `add NAME`: issues NAME's bearer token and prints it once (the store keeps only its hash).
- `list`: name, token id, when and by whom issued.
- `remove NAME`: revokes NAME's token at once.

Adding and removing are audited (`ohx audit --action staff-add`).
"""

from __future__ import annotations

import click

from ohx_dagster.cli import common
from ohx_dagster.core import times


@click.group("staff")
def staff() -> None:
    """Staff credentials for /connect and the authenticating proxy: add, list, remove."""


@staff.command("add")
@click.argument("name")
@click.pass_context
def add(ctx: click.Context, name: str) -> None:
    """Issue NAME's bearer token; it is printed once and stored only as a hash."""
    from ohx_dagster.privacy import audit
    from ohx_dagster.privacy import staff as credentials

    credentials.check_name(name)
    store = common.open_store(ctx)
    token = credentials.add(store, name, actor=audit.login("ohx staff add"))
    click.echo(token)
    click.echo(
        f"That is {name}'s token, shown this once: send it as 'Authorization: Bearer <token>' "
        "(or as the password, with the name as user, at the proxy's login); never in a URL.",
        err=True,
    )


@staff.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """The staff with a token: name, token id, issued when and by whom."""
    from ohx_dagster.privacy import staff as credentials

    rows = credentials.members(common.open_store(ctx))
    if not rows:
        click.echo("no staff: add one with `ohx staff add NAME`")
        return
    for row in rows:
        issued = times.from_us(row.created_at_us).isoformat(timespec="seconds")
        click.echo(f"{row.name}\t{row.token_id}\t{issued}\t{row.created_by}")


@staff.command("remove")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Revoke NAME's token at once."""
    from ohx_dagster.core.errors import ValidationError
    from ohx_dagster.privacy import audit
    from ohx_dagster.privacy import staff as credentials

    store = common.open_store(ctx)
    if not credentials.remove(store, name, actor=audit.login("ohx staff remove")):
        raise ValidationError("NAME", name, "a staff member with a token (see `ohx staff list`)")
    click.echo(f"removed {name}: their token no longer authenticates")
