"""A person's mistakes at the real `dagster` CLI: one line saying what is expected.

Each test runs `dagster` as a subprocess, as a person types it, against this code location
(`-m ohx_dagster.definitions`) and counts the lines they see. Dagster prints a few lines of its
own (SupersessionWarning, BetaWarning: each two lines); the project's answer is one line among
them, and no traceback. Before ohx_dagster/cli/dagster_errors.py: 57-76 lines, a traceback ending in
DagsterInvalidSubsetError / DagsterInvalidConfigError.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"
# Dagster's own warnings in these commands (each a message line and a source line), the
# project's answer and nothing else: well under a screen.
MAX_LINES = 12


def _dagster(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "dagster"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHX_", "DAGSTER_", "PYTEST"))}
    env.update(
        OHX_HOME=str(tmp_path / "ohx"),
        DAGSTER_HOME=str(home),
        OHX_PARTITIONS_START="2025-01-01",
        OHX_SOURCES="simulated",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.run(
        [str(DAGSTER), *args, "-m", "ohx_dagster.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _seen(result: subprocess.CompletedProcess[str]) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


def _one_line(lines: list[str], start: str) -> str:
    answers = [line for line in lines if line.startswith(start)]
    assert len(answers) == 1, lines
    return answers[0]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "2025-13-01|simulated",
            "'2025-13-01' is not a day: expected YYYY-MM-DD|source, such as ",
        ),
        ("2025-06-01|nonsense", "use one of its sources, or add 'nonsense' to OHX_SOURCES"),
        (
            "2024-06-01|simulated",
            "set OHX_PARTITIONS_START=2024-06-01 (or earlier) where Dagster runs",
        ),
    ],
)
def test_materialize_with_a_partition_key_outside_the_partitions(
    tmp_path: Path, key: str, expected: str
) -> None:
    result = _dagster(tmp_path, "asset", "materialize", "--select", "*", "--partition", key)
    lines = _seen(result)
    assert result.returncode == 1
    assert len(lines) <= MAX_LINES, lines
    assert not any("Traceback" in line or line.startswith("  File ") for line in lines), lines
    answer = _one_line(lines, "Error: ")
    assert answer.startswith(
        f"Error: partition {key!r} is not one of this code location's partitions: days "
        "2025-01-01 (OHX_PARTITIONS_START) to "
    )
    assert "x sources simulated (OHX_SOURCES): " in answer
    assert expected in answer
    # Nothing ran: no store was written for a run that should not start.
    assert not (tmp_path / "ohx" / "fhir").exists()


def test_job_config_that_does_not_fit_the_schema(tmp_path: Path) -> None:
    config = tmp_path / "erase.yaml"
    config.write_text(
        json.dumps({"ops": {"erase_person": {"config": {"provider": 3, "subject": "s"}}}})
    )
    result = _dagster(tmp_path, "job", "execute", "-j", "erase_person_job", "-c", str(config))
    lines = _seen(result)
    assert result.returncode == 1
    assert len(lines) <= MAX_LINES, lines
    assert not any("Traceback" in line or line.startswith("  File ") for line in lines), lines
    errors = [line for line in lines if line.startswith("Error: ")]
    # The header and one line per error, each with its path and what is expected there.
    assert errors[0] == "Error: Error in config for job erase_person_job"
    assert any(
        'Missing required config entry "requested_by"' in line
        and "root:ops:erase_person:config" in line
        for line in errors
    ), errors
    assert any(
        "root:ops:erase_person:config:provider" in line and 'expected type "String"' in line
        for line in errors
    ), errors
    assert len(errors) == 3, errors


def test_job_execute_tagged_with_a_partition_outside_the_partitions(tmp_path: Path) -> None:
    """`--tags '{"dagster/partition": ...}'` is not checked by Dagster before the run: the run
    starts and its first step stops, before it fetches or writes anything, on the same line."""
    tags = json.dumps({"dagster/partition": "2025-06-01|nonsense"})
    result = _dagster(tmp_path, "job", "execute", "-j", "sync_partition", "--tags", tags)
    text = result.stdout + result.stderr
    assert result.returncode == 1
    assert "partition '2025-06-01|nonsense' is not one of this code location's partitions" in text
    assert "use one of its sources, or add 'nonsense' to OHX_SOURCES" in text
    assert not (tmp_path / "ohx" / "fhir").exists()


def test_other_exceptions_keep_their_traceback() -> None:
    """The hook answers only the CLI's partition and config errors; anything else is Python's."""
    from datetime import date

    import dagster as dg

    from assets.partitions import health_partitions
    from ohx_dagster.cli.dagster_errors import explain

    partitions = health_partitions(date(2025, 1, 1), ["simulated"])
    assert explain(ValueError("partition key `x|y`"), partitions) is None
    assert explain(dg.DagsterInvalidSubsetError("no key named here"), partitions) is None
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = dg.DagsterInvalidSubsetError("the passed partition key `2025-06-01|x`")
    assert "add 'x' to OHX_SOURCES" in (explain(wrapped, partitions) or "")


def test_every_config_field_the_launchpad_shows_says_what_it_expects(tmp_path: Path) -> None:
    """The launchpad's config editor shows a field's description beside it: every field of the
    project's resources and of its ops' config has one, naming its OHX_ variable where one sets
    it."""
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.definitions import build_definitions

    defs = build_definitions(Settings.from_env({"OHX_HOME": str(tmp_path / "ohx")}))
    repository = defs.get_repository_def()
    schemas = {
        f"resources.{name}": resource.config_schema.config_type
        for name, resource in repository.get_top_level_resources().items()
        if name != "io_manager"  # Dagster's own
    }
    for job in repository.get_all_jobs():
        for node in job.graph.iterate_op_defs():
            if node.config_schema is not None and node.config_schema.config_type is not None:
                schemas[f"ops.{node.name}"] = node.config_schema.config_type
    assert {"resources.store", "resources.sources", "resources.output"} <= set(schemas)
    assert "ops.erase_person" in schemas
    missing = [
        f"{where}.{field}"
        for where, kind in schemas.items()
        for field, spec in getattr(kind, "fields", {}).items()
        if not (spec.description or "").strip()
    ]
    assert missing == []
    assert sum(len(getattr(kind, "fields", {})) for kind in schemas.values()) >= 30
    sources = schemas["resources.sources"].fields
    assert sources["simulated_users"].description.startswith("OHX_SIMULATED_USERS: ")
