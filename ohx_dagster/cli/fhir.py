"""`ohx fhir fetch-packages`: the pinned HL7 FHIR packages the validator reads, fetched with npm
(ohx_dagster/fhir/validation/packages.py says where they are looked for)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from ohx_dagster.core.errors import OhxError


@click.group("fhir")
def fhir() -> None:
    """FHIR conformance packages."""


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
