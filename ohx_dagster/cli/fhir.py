"""`ohx fhir`: the FHIR side of the product.

- `fetch-packages`: the pinned HL7 FHIR packages the validator reads, fetched with npm
  (ohx_dagster/fhir/validation/packages.py says where they are looked for).
- `serve`: the FHIR R5 API for clinical systems (ohx_dagster/fhirapi, docs/fhir-api.md).
- `clients add|list|remove`: the client systems it accepts (SMART Backend Services).
- `groups add|list|remove`: the cohorts clients export (`Group/[id]/$export`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from ohx_dagster.cli import common
from ohx_dagster.core.errors import OhxError


@click.group("fhir")
def fhir() -> None:
    """FHIR: the API server, its client systems, the conformance packages."""


@fhir.command("fetch-packages")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to unpack into (default: $OHX_FHIR_PACKAGES, the checkout's "
    ".fhir-packages/, or ~/.cache/ohx/fhir-packages).",
)
def fetch_packages(dest: Path | None) -> None:
    """Fetch the pinned HL7 FHIR R5 packages with npm (a package already there is kept)."""
    from ohx_dagster.fhir.validation.packages import SPECS, packages_dir
    from ohx_dagster.fhir.validation.packages import fetch_packages as fetch

    folder = dest or packages_dir()
    try:
        fetched = fetch(dest)
    except subprocess.CalledProcessError as exc:
        raise OhxError(
            f"`{' '.join(map(str, exc.cmd))}` failed (exit {exc.returncode}): check access to "
            "the npm registry (npm config get registry) and try again"
        ) from None
    for path in fetched:
        click.echo(f"fetched {path.name} into {path}")
    kept = len(SPECS) - len(fetched)
    if kept:
        click.echo(f"{kept} of {len(SPECS)} packages were already in {folder}")


@fhir.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8790, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--public-url",
    help="The base URL clients reach this server at (through a proxy: the proxy's); the token "
    "URL assertions name as aud. Default: the URL of each request. Env OHX_FHIR_API_URL.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, public_url: str | None) -> None:
    """Serve the FHIR R5 API (SMART Backend Services, Patient read, Observation search) on the
    store and the published NDJSON until stopped (Ctrl-C or SIGTERM)."""
    import uvicorn

    from ohx_dagster.config.environment import environ
    from ohx_dagster.config.receiver import ReceiverLimits
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.fhirapi.app import create_app
    from ohx_dagster.providers.registry import CATALOG
    from ohx_dagster.receiver.serve import server_config

    settings = Settings.from_env(catalog=CATALOG)
    public_url = public_url or environ().get("OHX_FHIR_API_URL") or None
    store = common.open_store(ctx)
    app = create_app(store, FhirOutput(settings.fhir_dir), public_url=public_url)
    config = server_config(app, ReceiverLimits(), host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    click.echo(f"FHIR API on http://{host}:{port}/fhir (metadata: /fhir/metadata)", err=True)
    server.run()


@fhir.group("clients")
def clients_() -> None:
    """Client systems of the FHIR API (SMART Backend Services): add, list, remove."""


@clients_.command("add")
@click.argument("name")
@click.option(
    "--jwks",
    "jwks_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The client's public keys, a JSON Web Key Set (RSA >= 2048 bits or EC P-384, each "
    "with a kid).",
)
@click.option(
    "--scope",
    required=True,
    help="The system scopes it may be granted, e.g. 'system/Observation.rs system/Patient.r'.",
)
@click.pass_context
def clients_add(ctx: click.Context, name: str, jwks_file: Path, scope: str) -> None:
    """Register a client system; prints its client id (the iss and sub of its assertions)."""
    from ohx_dagster.core.errors import ValidationError
    from ohx_dagster.fhirapi import clients
    from ohx_dagster.privacy import audit

    try:
        text = jwks_file.read_bytes()[: 1 << 20]
    except OSError as exc:
        raise ValidationError(
            "--jwks", str(jwks_file), f"a readable file ({exc.strerror})"
        ) from None
    store = common.open_store(ctx)
    client = clients.add_client(store, name, text, scope, actor=audit.login("ohx fhir clients add"))
    click.echo(client.client_id)
    click.echo(f"{name} may ask for {' '.join(map(str, client.scopes))}", err=True)


@clients_.command("list")
@click.pass_context
def clients_list(ctx: click.Context) -> None:
    """The registered client systems: name, client id, key ids, scopes."""
    from ohx_dagster.fhirapi import clients

    found = clients.list_clients(common.open_store(ctx))
    if not found:
        click.echo("no clients: add one with `ohx fhir clients add NAME --jwks FILE --scope ...`")
        return
    for client in found:
        kids = ",".join(k["kid"] for k in client.keys)
        click.echo(
            f"{client.name}\t{client.client_id}\t{kids}\t{' '.join(map(str, client.scopes))}"
        )


@clients_.command("remove")
@click.argument("name_or_id")
@click.pass_context
def clients_remove(ctx: click.Context, name_or_id: str) -> None:
    """Remove a client system; its access tokens stop working at once."""
    from ohx_dagster.core.errors import ValidationError
    from ohx_dagster.fhirapi import clients
    from ohx_dagster.privacy import audit

    store = common.open_store(ctx)
    if not clients.remove_client(store, name_or_id, actor=audit.login("ohx fhir clients remove")):
        raise ValidationError(
            "NAME", name_or_id, "a registered client (see `ohx fhir clients list`)"
        )
    click.echo(f"removed {name_or_id}: its tokens no longer work")


@fhir.group("groups")
def groups_() -> None:
    """Cohorts clients export with Group/[id]/$export: add, list, remove."""


@groups_.command("add")
@click.argument("group_id")
@click.option("--everyone", is_flag=True, help="Every person here when the export runs.")
@click.option("--provider", "providers", multiple=True, help="The people of this provider "
              "(repeat for more).")  # fmt: skip
@click.option("--patient", "patients", multiple=True, help="A person by their Patient id "
              "(repeat for more).")  # fmt: skip
@click.option("--description", default="", help="What the cohort is for.")
@click.pass_context
def groups_add(
    ctx: click.Context,
    group_id: str,
    everyone: bool,
    providers: tuple[str, ...],
    patients: tuple[str, ...],
    description: str,
) -> None:
    """Define a group by exactly one of --everyone, --provider or --patient."""
    from ohx_dagster.fhirapi import groups
    from ohx_dagster.privacy import audit

    group = groups.add_group(
        common.open_store(ctx), group_id, everyone=everyone, providers=providers,
        patients=patients, description=description, actor=audit.login("ohx fhir groups add"),
    )  # fmt: skip
    click.echo(f"Group/{group.group_id}: {group.describe()}")


@groups_.command("list")
@click.pass_context
def groups_list(ctx: click.Context) -> None:
    """The groups: id, who is in it, description."""
    from ohx_dagster.fhirapi import groups

    found = groups.list_groups(common.open_store(ctx))
    if not found:
        click.echo("no groups: add one with `ohx fhir groups add ID --everyone` (or --provider, "
                   "--patient)")  # fmt: skip
        return
    for group in found:
        click.echo(f"{group.group_id}\t{group.describe()}\t{group.description}")


@groups_.command("remove")
@click.argument("group_id")
@click.pass_context
def groups_remove(ctx: click.Context, group_id: str) -> None:
    """Remove a group (exports already kicked off for it fail when they run)."""
    from ohx_dagster.core.errors import ValidationError
    from ohx_dagster.fhirapi import groups
    from ohx_dagster.privacy import audit

    store = common.open_store(ctx)
    if not groups.remove_group(store, group_id, actor=audit.login("ohx fhir groups remove")):
        raise ValidationError("GROUP", group_id, "a group here (see `ohx fhir groups list`)")
    click.echo(f"removed Group/{group_id}")
