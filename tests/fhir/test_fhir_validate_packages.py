"""Where the validator finds the HL7 packages: $OHX_FHIR_PACKAGES, else the checkout's
.fhir-packages, else (an installed wheel) the per-user cache; a missing package names the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.fhir.validation import packages

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The module as a wheel installs it: under site-packages, no checkout around it."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    module = site / "ohx_dagster" / "fhir" / "validation" / "packages.py"
    monkeypatch.setattr(packages, "__file__", str(module))
    monkeypatch.delenv(packages.SETTING, raising=False)
    return tmp_path


def test_the_setting_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(packages.SETTING, str(tmp_path))
    assert packages.packages_dir() == tmp_path
    with pytest.raises(ConfigError) as error:
        packages.package_path(packages.CORE_PACKAGE)
    message = str(error.value)
    assert f"{tmp_path / packages.CORE_PACKAGE} (from $OHX_FHIR_PACKAGES)" in message
    assert "run scripts/fetch-fhir-packages" in message


def test_a_checkout_reads_its_own_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(packages.SETTING, raising=False)
    assert packages._checkout() == REPO
    assert packages.packages_dir() == REPO / ".fhir-packages"
    assert packages.package_path(packages.CORE_PACKAGE).parent == REPO / ".fhir-packages"


def test_a_wheel_reads_the_user_cache(monkeypatch: pytest.MonkeyPatch, installed: Path) -> None:
    assert packages._checkout() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(installed / "cache"))
    assert packages.packages_dir() == installed / "cache" / "ohx" / "fhir-packages"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(installed / "home"))
    assert packages.packages_dir() == installed / "home" / ".cache" / "ohx" / "fhir-packages"
    with pytest.raises(ConfigError) as error:
        packages.package_path(packages.TERMINOLOGY_PACKAGE)
    message = str(error.value)
    assert "(the per-user cache ($OHX_FHIR_PACKAGES unset, not running from a checkout))" in message
    assert "run `python -m ohx_dagster.fhir.validation.fetch`" in message
    assert "or set OHX_FHIR_PACKAGES to a folder holding hl7.terminology.r5-7.0.1/" in message


def test_the_script_fetches_exactly_the_pinned_packages() -> None:
    script = (REPO / "scripts" / "fetch-fhir-packages").read_text()
    listed = re.search(r"^for spec in (.+); do$", script, re.MULTILINE)
    assert listed is not None
    assert tuple(listed.group(1).split()) == packages.SPECS
    assert "dest=${OHX_FHIR_PACKAGES:-.fhir-packages}" in script


def test_fetching_again_needs_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for spec in packages.SPECS:
        folder = tmp_path / "-".join(spec.rsplit("@", 1))
        folder.mkdir()
        (folder / ".complete").touch()
    monkeypatch.setattr(packages.shutil, "which", lambda name: None)  # no npm either
    assert packages.fetch_packages(tmp_path) == []
    (tmp_path / packages.TERMINOLOGY_PACKAGE / ".complete").unlink()  # an interrupted fetch
    with pytest.raises(ConfigError, match=r"npm is needed to fetch hl7\.terminology\.r5@7\.0\.1"):
        packages.fetch_packages(tmp_path)
