"""A newcomer's first hour with `ohx`: the version, shell completion, and configuration errors
that are one line naming the setting, with a non-zero exit.

The installed `ohx` entry point runs in real subprocesses (completion is driven by environment
variables the way bash, zsh and fish drive it); configuration errors go through click's
CliRunner with a clean OHX_* environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

OHX = Path(sys.executable).parent / "ohx"
REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("OHX_", "_OHX_")) or k == "DAGSTER_HOME") or k == "OHX_FHIR_PACKAGES"
    }
    return {**env, **extra}


def run_ohx(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OHX), *args], env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_version_is_the_installed_distributions() -> None:
    result = run_ohx("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ohx {version('ohx-dagster')}\n"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'\nversion = "{version("ohx-dagster")}"\n' in pyproject


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_for_each_shell(shell: str) -> None:
    result = run_ohx(_OHX_COMPLETE=f"{shell}_source")
    assert result.returncode == 0, result.stderr
    assert "_OHX_COMPLETE" in result.stdout and f"{shell}_complete" in result.stdout


def test_bash_completes_commands_and_options() -> None:
    commands = run_ohx(COMP_WORDS="ohx st", COMP_CWORD="1", _OHX_COMPLETE="bash_complete")
    assert commands.returncode == 0, commands.stderr
    assert commands.stdout.splitlines() == ["plain,status"]
    options = run_ohx(COMP_WORDS="ohx status --pro", COMP_CWORD="2", _OHX_COMPLETE="bash_complete")
    assert options.stdout.splitlines() == ["plain,--provider"]


def test_the_readme_says_how_to_enable_completion() -> None:
    readme = (REPO / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_OHX_COMPLETE={shell}_source ohx" in readme
    assert "ohx --version" in readme
