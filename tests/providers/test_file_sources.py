"""Export sources (Fitabase, Polar, Apple Health) pointed at a folder or file without the export
fail their Dagster run loudly, with one line naming the setting and what it expected; never a
green run with "0 records for 0 people".

Each runs the real sync_partition job in process on a Dagster instance, with the settings a
person would get wrong.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ohx_dagster.config.settings import Settings
from ohx_dagster.definitions import build_definitions
from ohx_dagster.storage.store import RecordStore

DAY = "2025-01-02"


def downloads(tmp_path: Path) -> Path:
    """A folder that exists but holds no export (the zip's parent folder, a wrong path)."""
    folder = tmp_path / "Downloads"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here\n")
    (folder / "export.zip.part").write_bytes(b"\0" * 10)
    return folder


def zip_without_export(tmp_path: Path) -> Path:
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
    return path


CASES: dict[str, tuple[Callable[[Path], dict[str, str]], str, list[str]]] = {
    "fitabase": (
        lambda t: {
            "OHX_FITABASE_DIR": str(downloads(t)),
            "OHX_FITABASE_TZ": "America/Chicago",
        },
        "OHX_FITABASE_DIR",
        ["heartrate_seconds_merged.csv", "hourlySteps_merged.csv", "weightLogInfo_merged.csv"],
    ),
    "polar": (
        lambda t: {"OHX_POLAR_CSV": str(downloads(t)), "OHX_POLAR_TZ": "Europe/Helsinki"},
        "OHX_POLAR_CSV",
        ["Polar Sensor Logger"],
    ),
    "apple_health": (
        lambda t: {"OHX_APPLE_HEALTH_EXPORT": str(zip_without_export(t))},
        "export.zip",
        ["apple_health_export/export.xml"],
    ),
}


def failure_lines(result: dg.ExecuteInProcessResult) -> list[str]:
    """The messages of the failed step's error and its causes."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error, lines = failure.step_failure_data.error, []
    while error is not None:
        lines.append(error.message.strip())
        error = error.cause
    return lines


@pytest.mark.parametrize("source", sorted(CASES))
def test_a_source_without_its_export_fails_the_run_in_one_line(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, setting, expected = CASES[source]
    for name in ("OHX_DATABASE_URL", "OHX_FHIR_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    settings = Settings.from_env({"OHX_HOME": str(home), "OHX_SOURCES": source, **make(tmp_path)})
    job = build_definitions(settings).get_job_def("sync_partition")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = job.execute_in_process(
            instance=instance, partition_key=f"{DAY}|{source}", raise_on_error=False
        )
    assert not result.success
    # The error itself: one line with the setting (or the file it names) and what was expected.
    (line,) = [m.split(": ", 1)[1] for m in failure_lines(result) if setting in m]
    assert "\n" not in line and "expected" in line, line
    for part in expected:
        assert part in line, line
    assert not result.get_asset_materialization_events()
    store = RecordStore(settings.database_url)
    assert store.people(source) == []
    store.dispose()
