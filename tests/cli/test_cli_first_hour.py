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
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet

from ohx_dagster.cli import cli
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.providers.api.tokens import OAuthTokens, TokenStore
from ohx_dagster.storage.store import RecordStore

OHX = Path(sys.executable).parent / "ohx"
REPO = Path(__file__).resolve().parents[2]


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
    assert commands.stdout.splitlines() == ["plain,staff", "plain,status"]
    options = run_ohx(COMP_WORDS="ohx status --pro", COMP_CWORD="2", _OHX_COMPLETE="bash_complete")
    assert options.stdout.splitlines() == ["plain,--provider"]


def test_the_readme_says_how_to_enable_completion() -> None:
    readme = (REPO / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_OHX_COMPLETE={shell}_source ohx" in readme
    assert "ohx --version" in readme


# -- configuration validated at start -------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OHX_HOME in tmp_path (not created), no other OHX_* or Dagster setting of the machine."""
    for name in list(os.environ):
        if (name.startswith("OHX_") and name != "OHX_FHIR_PACKAGES") or name == "DAGSTER_HOME":
            monkeypatch.delenv(name)
    folder = tmp_path / "home"
    monkeypatch.setenv("OHX_HOME", str(folder))
    return folder


def ohx(*args: str, **env: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), env=env or None, catch_exceptions=True, prog_name="ohx"
    )


def one_line(result: Result, exit_code: int = 1) -> str:
    """A failed command's error: exactly one line on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ohx: error: "), result.stderr
    return lines[0]


def fitabase_headers_only(folder: Path) -> Path:
    folder.mkdir()
    (folder / "heartrate_seconds_merged.csv").write_text("Id,Time,Value\n\n")
    (folder / "hourlySteps_merged.csv").write_text("Id,ActivityHour,StepTotal\n")
    return folder


# (environment, what the one line must say): each names its setting and what is wrong.
CONFIG_ERRORS = {
    "unknown source": ({"OHX_SOURCES": "nonsense"}, ["OHX_SOURCES", "'nonsense'", "known:"]),
    "unknown provider in a per-source setting": (
        {"OHX_MAX_SYNC_LAG": "fitbit=6h"},
        ["OHX_MAX_SYNC_LAG", "'fitbit=6h'", "sources: simulated"],
    ),
    "malformed shard count": ({"OHX_SOURCES": "simulated:x"}, ["OHX_SOURCES", "name:N"]),
    "malformed date": (
        {"OHX_PARTITIONS_START": "last year"},
        ["OHX_PARTITIONS_START='last year'", "YYYY-MM-DD"],
    ),
    "malformed number": (
        {"OHX_SIMULATED_USERS": "three"},
        ["OHX_SIMULATED_USERS='three'", "whole number"],
    ),
    "malformed zone": (
        {"OHX_POLAR_TZ": "Mars/Olympus"},
        ["OHX_POLAR_TZ='Mars/Olympus'", "IANA zone"],
    ),
    "malformed token key": ({"OHX_TOKEN_KEY": "not-a-key"}, ["OHX_TOKEN_KEY", "Fernet keys"]),
    "missing export folder": (
        {"OHX_FITABASE_DIR": "{tmp}/no-such-export", "OHX_FITABASE_TZ": "America/Chicago"},
        ["OHX_FITABASE_DIR='{tmp}/no-such-export'", "an existing directory"],
    ),
    "empty export folder": (
        {"OHX_FITABASE_DIR": "{tmp}/empty", "OHX_FITABASE_TZ": "America/Chicago"},
        ["OHX_FITABASE_DIR='{tmp}/empty'", "heartrate_seconds_merged.csv"],
    ),
    "export files without data": (
        {"OHX_FITABASE_DIR": "{tmp}/headers", "OHX_FITABASE_TZ": "America/Chicago"},
        ["OHX_FITABASE_DIR='{tmp}/headers'", "no data rows"],
    ),
    "missing Apple Health export": (
        {"OHX_APPLE_HEALTH_EXPORT": "{tmp}/export.zip"},
        ["OHX_APPLE_HEALTH_EXPORT='{tmp}/export.zip'", "does not exist"],
    ),
    "empty Apple Health export": (
        {"OHX_APPLE_HEALTH_EXPORT": "{tmp}/empty.xml"},
        ["OHX_APPLE_HEALTH_EXPORT='{tmp}/empty.xml'", "is empty"],
    ),
    "empty Polar folder": (
        {"OHX_POLAR_CSV": "{tmp}/empty", "OHX_SOURCES": "simulated,polar"},
        ["OHX_POLAR_CSV='{tmp}/empty'", "no recording with data"],
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=str)
@pytest.mark.parametrize("command", [["status"], ["users", "list"], ["dev"]], ids=" ".join)
def test_a_configuration_error_is_one_line_naming_the_setting(
    home: Path, tmp_path: Path, case: str, command: list[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.xml").touch()
    fitabase_headers_only(tmp_path / "headers")
    env, phrases = CONFIG_ERRORS[case]
    line = one_line(ohx(*command, **{k: v.format(tmp=tmp_path) for k, v in env.items()}))
    for phrase in phrases:
        assert phrase.format(tmp=tmp_path) in line, (phrase, line)
    assert not home.exists()  # nothing opened or created before the settings were checked


def test_help_prints_whatever_the_settings(home: Path) -> None:
    result = ohx("status", "--help", OHX_SOURCES="nonsense")
    assert result.exit_code == 0 and result.output.startswith("Usage: ohx status")


def test_an_unknown_provider_option_is_one_line(home: Path) -> None:
    line = one_line(ohx("status", "--provider", "fitbit"), exit_code=2)
    assert "--provider" in line and "'fitbit'" in line and "oura" in line
    assert "ohx status --help" in line


def test_the_installed_ohx_refuses_an_unknown_source(tmp_path: Path) -> None:
    result = run_ohx("status", OHX_SOURCES="nonsense", OHX_HOME=str(tmp_path / "home"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("ohx: error: OHX_SOURCES: unknown source 'nonsense'")
    assert len(result.stderr.splitlines()) == 1, result.stderr


# -- ohx doctor: export data and stored tokens ---------------------------------------------------


def doctor_lines(result: Result) -> dict[str, str]:
    return {line.split(":")[0][5:]: line for line in result.stdout.strip().splitlines()}


def test_doctor_fails_an_export_without_data(
    home: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OHX_FITABASE_TZ", "America/Chicago")
    (tmp_path / "empty").mkdir()
    for folder, says in (
        (tmp_path / "empty", "heartrate_seconds_merged.csv"),
        (fitabase_headers_only(tmp_path / "headers"), "no data rows"),
    ):
        result = ohx("doctor", OHX_FITABASE_DIR=str(folder))
        assert result.exit_code == 1, result.output
        line = doctor_lines(result)["fitabase export"]
        assert line.startswith("FAIL fitabase export: OHX_FITABASE_DIR=") and says in line, line
        assert "-> fix: point OHX_FITABASE_DIR at an export with data" in line
    fine = doctor_lines(ohx("doctor", OHX_FITABASE_DIR=str(shared_data / "fitabase")))
    assert fine["fitabase export"].startswith("OK   fitabase export"), fine
    # Several folders: each one must hold data.
    both = f"{shared_data / 'fitabase'}:{tmp_path / 'headers'}"
    line = doctor_lines(ohx("doctor", OHX_FITABASE_DIR=both))["fitabase export"]
    assert line.startswith("FAIL") and str(tmp_path / "headers") in line


def test_doctor_skips_exports_when_none_is_configured(home: Path) -> None:
    line = doctor_lines(ohx("doctor"))["export data"]
    assert line.startswith("SKIP export data: no export configured (OHX_FITABASE_DIR")


def test_doctor_decrypts_the_stored_tokens(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved_with, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    home.mkdir()
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}", migrate_schema=True)
    try:
        store.add_users([HealthSyncConfig(user_id="u-1", provider="oura")])
        tokens = TokenStore(store, key=saved_with)
        tokens.save("oura", "u-1", OAuthTokens("access-secret", "refresh-secret"))
    finally:
        store.dispose()

    def token_line(key: str | None) -> str:
        if key is None:
            monkeypatch.delenv("OHX_TOKEN_KEY", raising=False)
        else:
            monkeypatch.setenv("OHX_TOKEN_KEY", key)
        result = ohx("doctor")
        assert "access-secret" not in result.output and "refresh-secret" not in result.output
        return doctor_lines(result)["token key"]

    wrong = token_line(other)
    assert wrong.startswith("FAIL token key: 1 of 1 stored token(s) do not decrypt"), wrong
    assert "oura/u-1" in wrong and "-> fix: put the key they were saved with" in wrong
    unset = token_line(None)  # no provider configured, but the store holds tokens
    assert unset.startswith("FAIL token key: OHX_TOKEN_KEY is not set") and "1 stored" in unset
    assert token_line(saved_with).startswith("OK   token key: OHX_TOKEN_KEY: 1 Fernet key(s)")
    rotating = token_line(f"{other},{saved_with}")
    assert rotating.startswith("OK   token key: OHX_TOKEN_KEY: 2 Fernet key(s); 1 stored token")
