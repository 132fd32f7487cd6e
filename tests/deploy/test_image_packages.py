"""The image's package list: the Dockerfile installs requirements.lock minus the test and bench
tools (a grep pattern), plus deploy/requirements-deploy.lock. Checked against the installed
packages' own metadata: nothing the product needs at run time is left out, and nothing only the
tests or the benchmarks need goes in."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# Needed in the image by a deployment-only package (deploy/requirements-deploy.lock names
# dagster-aws, which imports boto3), though nothing in pyproject's dependencies pulls them in.
FOR_DEPLOY_PACKAGES = {"boto3", "s3transfer"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def excluded_pattern(text: str) -> re.Pattern[str]:
    found = re.search(r"grep -vE[\s\\#]*'([^']+)'", text)
    assert found, "no grep -vE pattern found"
    return re.compile(found.group(1))


def runtime_closure(roots: list[str]) -> set[str]:
    """Every distribution the roots need when installed without extras, by their metadata."""
    needed: set[str] = set()
    pending = [(Requirement(root).name, frozenset(Requirement(root).extras)) for root in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (canonical(name), extras) in seen:
            continue
        seen.add((canonical(name), extras))
        needed.add(canonical(name))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return needed


def test_the_image_installs_what_runs_the_product_and_no_test_tool() -> None:
    pattern = excluded_pattern((ROOT / "Dockerfile").read_text())
    locked = [
        line.split("==")[0]
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    kept = {canonical(name) for name in locked if not pattern.match(f"{name}==")}
    dropped = {canonical(name) for name in locked} - kept
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = runtime_closure(project["dependencies"])
    assert not dropped & needed, f"the image would miss {sorted(dropped & needed)}"
    assert kept - needed <= FOR_DEPLOY_PACKAGES, f"only tests need {sorted(kept - needed)}"
    tools = {
        Requirement(r).name for extra in project["optional-dependencies"].values() for r in extra
    }
    assert {canonical(t) for t in tools} <= dropped


def test_the_deploy_lock_recipe_excludes_what_the_dockerfile_excludes() -> None:
    dockerfile = excluded_pattern((ROOT / "Dockerfile").read_text())
    recipe = excluded_pattern((ROOT / "deploy" / "requirements-deploy.lock").read_text())
    assert recipe.pattern == dockerfile.pattern
