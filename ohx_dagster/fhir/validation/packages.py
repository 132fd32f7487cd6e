"""Where the official HL7 FHIR packages are, and their conformance resources by canonical URL.

The packages (npm tarballs, pinned versions) are fetched by scripts/fetch-fhir-packages and never
copied into this repository. They are looked for in, first to last:

1. $OHX_FHIR_PACKAGES, when set (ohx_dagster/config/fhir.py reads it and XDG_CACHE_HOME);
2. the checkout's .fhir-packages/, when this code runs from a checkout of the repository;
3. a per-user cache, $XDG_CACHE_HOME/ohx/fhir-packages (~/.cache/ohx/fhir-packages), when it runs
   from an installed wheel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson

from ohx_dagster.config.fhir import PACKAGES_ENV, FhirPackageSettings
from ohx_dagster.core.errors import ConfigError

SETTING: Final = PACKAGES_ENV
# The pinned npm packages (name@version), each unpacked into a folder "name-version".
SPECS: Final = ("hl7.fhir.r5.core@5.0.0", "hl7.fhir.r5.examples@5.0.0", "hl7.terminology.r5@7.0.1")
CORE_PACKAGE: Final = "hl7.fhir.r5.core-5.0.0"
TERMINOLOGY_PACKAGE: Final = "hl7.terminology.r5-7.0.1"
EXAMPLES_PACKAGE: Final = "hl7.fhir.r5.examples-5.0.0"
# Searched in this order for CodeSystems and ValueSets (core first: it defines the FHIR ones).
TERMINOLOGY_SOURCES: Final = (CORE_PACKAGE, TERMINOLOGY_PACKAGE)
FETCH_SCRIPT: Final = "scripts/fetch-fhir-packages"


def _checkout() -> Path | None:
    """The repository this code runs from, or None when it is installed (e.g. as a wheel)."""
    root = Path(__file__).resolve().parents[3]
    if (root / FETCH_SCRIPT).is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def user_cache() -> Path:
    return FhirPackageSettings.from_env().user_cache


def _where() -> tuple[Path, str]:
    """(folder, how it was chosen)."""
    settings = FhirPackageSettings.from_env()
    if settings.configured is not None:
        return settings.configured, f"from ${SETTING}"
    checkout = _checkout()
    if checkout is not None:
        return checkout / ".fhir-packages", f"the checkout's folder (${SETTING} unset)"
    return user_cache(), f"the per-user cache (${SETTING} unset, not running from a checkout)"


def packages_dir() -> Path:
    """The folder holding the unpacked packages (see the module docstring)."""
    return _where()[0]


def package_path(name: str = CORE_PACKAGE) -> Path:
    """The unpacked package `name` ("hl7.fhir.r5.core-5.0.0"); ConfigError naming the fix."""
    folder, how = _where()
    path = folder / name
    if (path / ".complete").is_file():
        return path
    if _checkout() is not None:
        fix = f"run {FETCH_SCRIPT} (it fetches the pinned packages into ${SETTING} or {folder})"
    else:
        fix = (
            "run `python -m ohx_dagster.fhir.validation.fetch` (npm fetches the pinned "
            f"packages into {folder}; --dest DIR for another folder), or set {SETTING} to a "
            f"folder holding {name}/"
        )
    raise ConfigError(f"FHIR package {name} not found at {path} ({how}): {fix}")


def fetch_packages(dest: Path | None = None) -> list[Path]:
    """Fetches the pinned packages (SPECS) from the npm registry with `npm pack` into `dest`
    (default: packages_dir()), each unpacked to dest/name-version/ and marked complete last, so
    an interrupted fetch is redone. Idempotent: a complete package is not fetched again."""
    dest = dest or packages_dir()
    dest.mkdir(parents=True, exist_ok=True)
    fetched = []
    for spec in SPECS:
        name, version = spec.rsplit("@", 1)
        target = dest / f"{name}-{version}"
        if (target / ".complete").is_file():
            continue
        npm = shutil.which("npm")
        if npm is None:
            raise ConfigError(f"npm is needed to fetch {spec} (Node.js 18+), or set {SETTING}")
        with tempfile.TemporaryDirectory() as work:
            subprocess.run(
                [npm, "pack", "--silent", spec], cwd=work, check=True, stdout=subprocess.DEVNULL
            )
            staging = dest / f"{target.name}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(Path(work) / f"{name}-{version}.tgz") as archive:
                archive.extractall(staging, filter="data")
            shutil.rmtree(target, ignore_errors=True)
            (staging / "package").rename(target)
            shutil.rmtree(staging)
        (target / ".complete").touch()
        fetched.append(target)
    return fetched


def read_json(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def _last_segment(url: str) -> str:
    return re.split(r"[/:]", url.rstrip("/"))[-1]


@cache
def _irregular(kind: str) -> dict[str, Path]:
    """Canonical URL -> file of the resources of a kind whose URL does not end in their id (a few
    dozen: urn:oid systems, renamed code systems). Found with a byte search, not a full parse."""
    found: dict[str, Path] = {}
    for name in TERMINOLOGY_SOURCES:
        for path in sorted(package_path(name).glob(f"{kind}-*.json")):
            resource_id = path.name[len(kind) + 1 : -len(".json")]
            ending = re.compile(rb'"url" ?: ?"[^"]*[/:]' + re.escape(resource_id.encode()) + rb'"')
            if not ending.search(path.read_bytes()):
                url = read_json(path).get("url")
                if isinstance(url, str):
                    found.setdefault(url, path)
    return found


@cache
def _by_segment(kind: str) -> dict[str, list[Path]]:
    candidates: dict[str, list[Path]] = defaultdict(list)
    for name in TERMINOLOGY_SOURCES:
        for path in sorted(package_path(name).glob(f"{kind}-*.json")):
            candidates[path.name[len(kind) + 1 : -len(".json")]].append(path)
    return candidates


@cache
def conformance(kind: str, url: str) -> dict[str, Any] | None:
    """The CodeSystem or ValueSet with this canonical URL (a '|version' suffix is ignored) from
    the core or terminology package, or None when neither has it."""
    url = url.split("|", 1)[0]
    for path in _by_segment(kind).get(_last_segment(url), []):
        resource = read_json(path)
        if resource.get("url") == url:
            return resource
    irregular = _irregular(kind).get(url)
    return read_json(irregular) if irregular is not None else None
