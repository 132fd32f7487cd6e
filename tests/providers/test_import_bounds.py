"""Hostile files refused cheaply (issue 19): implausible dates, zip bombs, files without line
breaks, symbolic links out of an export folder.

Every hostile file is the real data in ../shared/data (the Apple Health export, the Fitabase
export, the Polar H10 recording) with one thing changed: a record's date, the line breaks, a
member inflated, a file swapped for a link. Times are never asserted tighter than a minute: that
an import stays small is shown by what it touches (the days it spans, its sync_partition calls),
and memory by the peak RSS of a real `ohx` process. Large exports are written in the real
export's shapes (bench/apple_health.write_export): an import's memory is the same whatever the
number of samples (the spill file, providers/apple_health/spill.py).
"""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zipfile
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.apple_health import write_export
from ohx_dagster.cli import cli, common, imports
from ohx_dagster.core.errors import ProviderError, ValidationError
from ohx_dagster.core.models import DateRange, HealthDataType
from ohx_dagster.providers.apple_health import AppleHealthSource
from ohx_dagster.providers.apple_health import export as apple_export
from ohx_dagster.providers.apple_health import source as apple_source
from ohx_dagster.providers.apple_health.export import parse_export
from ohx_dagster.providers.base import ReadOnce, Windowed
from ohx_dagster.providers.bounds import MAX_RATIO, PlausibleDates, RefusedDates
from ohx_dagster.providers.fitabase import EXPORT_FILES, FitabaseSource, read_export_file
from ohx_dagster.providers.polar import PolarFileSource
from ohx_dagster.providers.registry import RESYNC_HORIZON, SUPPORTED_TYPES
from ohx_dagster.storage.store import RecordStore

OHX = Path(sys.executable).parent / "ohx"
REAL_RECORDS = 6380  # of the real export: 6,232 samples, 87 nights, 61 workouts (test_cli.py too)
# Two heart-rate Records of the real export (lines 309 and 310), as the export writes them.
HR_DATES = (
    'startDate="2017-10-09 17:46:00 +0200" endDate="2017-10-09 17:46:00 +0200"',
    'startDate="2017-10-09 17:06:00 +0200" endDate="2017-10-09 17:06:00 +0200"',
)
EVERYTHING = DateRange(datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
WINDOW = PlausibleDates.at(datetime(2026, 12, 6, 20, 0, tzinfo=UTC))
HR_FILE = EXPORT_FILES[0]  # heartrate_seconds_merged.csv
FIXTURES = HealthCheck.function_scoped_fixture


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OHX_HOME in tmp_path, no other OHX_* setting of the machine's environment."""
    for name in list(os.environ):
        if name.startswith("OHX_") and name not in ("OHX_FHIR_PACKAGES", "OHX_ERASURE_SALT"):
            monkeypatch.delenv(name)
    folder = tmp_path / "home"
    monkeypatch.setenv("OHX_HOME", str(folder))
    monkeypatch.setenv("COLUMNS", "200")
    return folder


def ohx(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ohx: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def export_xml_path(shared_data: Path) -> Path:
    return shared_data / "apple-health" / "export.xml"


@pytest.fixture(scope="module")
def export_text(shared_data: Path) -> str:
    return (shared_data / "apple-health" / "export.xml").read_text(encoding="utf-8")


def with_dates(text: str, *days: str) -> str:
    """The real export with its two heart-rate Records of HR_DATES dated on `days` instead."""
    for original, day in zip(HR_DATES, days, strict=False):
        assert text.count(original) == 1
        text = text.replace(original, original.replace("2017-10-09", day))
    return text


def stored(home: Path, source: str) -> pd.DataFrame:
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    try:
        return store.read_records(source, EVERYTHING)
    finally:
        store.dispose()


# -- plausible dates -------------------------------------------------------------------------------


def test_apple_health_9999_and_1900_are_refused_and_only_the_real_days_are_synced(
    home: Path, tmp_path: Path, export_text: str
) -> None:
    folder = tmp_path / "ada"
    folder.mkdir()
    export = folder / "export.xml"
    export.write_text(with_dates(export_text, "9999-12-31", "1900-01-01"), encoding="utf-8")
    started = time.monotonic()
    result = ohx("import", "apple-health", str(export))
    took = time.monotonic() - started
    assert result.exit_code == 0, (result.output, result.exception)
    refused = [line for line in result.stdout.splitlines() if line.startswith("Refused")]
    assert len(refused) == 1, result.stdout
    assert "Refused 2 samples dated outside the plausible dates 2000-01-01 .. " in refused[0]
    assert "heart_rate 2" in refused[0] and "9999-12-31" in refused[0] and "line 309" in refused[0]
    # The span is the real data's: the import never walked the centuries between.
    assert "Days (UTC): 2017-01-22 .. 2017-11-06, 289 days" in result.stdout
    records = stored(home, "apple_health")
    assert len(records) == REAL_RECORDS - 2
    assert records["ts"].min() >= pd.Timestamp("2000-01-01", tz=UTC)
    assert records["ts"].max() < pd.Timestamp(datetime.now(UTC).date() + timedelta(days=2), tz=UTC)
    assert took < 120  # was over 240 s; loose on purpose: the bound is the span above


def test_fitabase_9999_and_1900_are_refused_without_a_traceback(
    home: Path, tmp_path: Path, fitabase_dir: Path
) -> None:
    folder = tmp_path / "fitabase"
    folder.mkdir()
    rows = (fitabase_dir / HR_FILE.name).read_text().splitlines()[:201]  # header + 200 rows
    person = rows[1].split(",")[0]
    hostile = [f"{person},12/31/9999 11:00:00 PM,70", f"{person},1/1/1900 7:54:00 AM,93"]
    (folder / HR_FILE.name).write_text("\n".join(rows[:100] + hostile + rows[100:]) + "\n")
    started = time.monotonic()
    result = ohx("import", "fitabase", str(folder), "--timezone", "America/Chicago")
    took = time.monotonic() - started
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    refused = [line for line in result.stdout.splitlines() if line.startswith("Refused")]
    assert len(refused) == 1 and "Refused 2 samples" in refused[0] and "heart_rate 2" in refused[0]
    assert "12/31/9999 11:00:00 PM" in refused[0] and "data row 100" in refused[0]
    assert re.search(r"Days \(UTC\): 2016-04-\d\d \.\. 2016-04-\d\d, \d days", result.stdout)
    records = stored(home, "fitabase")
    assert len(records) == 200
    assert records["ts"].dt.year.unique().tolist() == [2016]
    assert took < 120


def test_a_file_of_nothing_but_implausible_dates_stores_nothing(
    home: Path, tmp_path: Path, fitabase_dir: Path
) -> None:
    folder = tmp_path / "fitabase"
    folder.mkdir()
    header, row = (fitabase_dir / HR_FILE.name).read_text().splitlines()[:2]
    person = row.split(",")[0]
    (folder / HR_FILE.name).write_text(f"{header}\n{person},12/31/9999 11:00:00 PM,70\n")
    line = one_error_line(ohx("import", "fitabase", str(folder), "--timezone", "UTC"))
    assert "Refused 1 sample dated outside the plausible dates" in line
    assert not (home / "ohx.db").exists() or stored(home, "fitabase").empty


def test_the_window_follows_the_runs_clock_and_the_setting(
    home: Path, tmp_path: Path, fitabase_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real heart rate spans 2016-04-01 .. 04-03 (UTC). On a run's clock of 2016-04-01
    20:00 UTC (common.now), tomorrow is the 2nd: the rows of the 3rd are refused;
    OHX_EARLIEST_SAMPLE_DATE=2016-04-02 refuses those of the 1st."""
    table = pd.read_csv(fitabase_dir / HR_FILE.name, dtype={"Id": str})
    folder = tmp_path / "fitabase"
    folder.mkdir()
    table.to_csv(folder / HR_FILE.name, index=False)
    stamps = pd.to_datetime(table["Time"], format="%m/%d/%Y %I:%M:%S %p")
    utc = stamps.dt.tz_localize("America/Chicago", ambiguous=True).dt.tz_convert("UTC")
    second, third = pd.Timestamp("2016-04-02", tz=UTC), pd.Timestamp("2016-04-03", tz=UTC)
    early, late = int((utc < second).sum()), int((utc >= third).sum())
    assert early and late and early + late < len(table)
    monkeypatch.setattr(common, "now", lambda: datetime(2016, 4, 1, 20, 0, tzinfo=UTC))
    result = ohx("import", "fitabase", str(folder), "--timezone", "America/Chicago")
    assert result.exit_code == 0, (result.output, result.exception)
    assert (
        f"Refused {late:,} samples" in result.stdout and "2000-01-01 .. 2016-04-02" in result.stdout
    )
    (home / "ohx.db").unlink()  # a fresh store: the first import stored the 1st until 20:00
    monkeypatch.setattr(common, "now", lambda: datetime(2016, 4, 5, 20, 0, tzinfo=UTC))
    monkeypatch.setenv("OHX_EARLIEST_SAMPLE_DATE", "2016-04-02")
    result = ohx("import", "fitabase", str(folder), "--timezone", "America/Chicago")
    assert result.exit_code == 0, (result.output, result.exception)
    assert (
        f"Refused {early:,} samples" in result.stdout
        and "2016-04-02 .. 2016-04-06" in result.stdout
    )
    records = stored(home, "fitabase")
    assert len(records) == len(table) - early and records["ts"].min() >= second
    monkeypatch.setenv("OHX_EARLIEST_SAMPLE_DATE", "last year")
    line = one_error_line(ohx("import", "fitabase", str(folder), "--timezone", "America/Chicago"))
    assert "OHX_EARLIEST_SAMPLE_DATE='last year': expected a day YYYY-MM-DD" in line


def test_a_sparse_file_spanning_years_is_synced_in_a_few_calls(
    tmp_path: Path, export_text: str
) -> None:
    """A sample on 2000-01-02 (plausible) and the real data of 2017: 6,519 days spanned, but
    sync_partition is called once per week of days that hold records, not once per week."""
    folder = tmp_path / "ada"
    folder.mkdir()
    (folder / "export.xml").write_text(with_dates(export_text, "2000-01-02"), encoding="utf-8")
    reader = AppleHealthSource(folder / "export.xml", dates=WINDOW)
    records = reader.records
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    try:
        source = Windowed(reader, SUPPORTED_TYPES[reader.name], RESYNC_HORIZON[reader.name])
        days, held = imports.spanned_days(records), imports.held_days(records)
        assert len(days) == 6519 and len(held) < 300
        outcome = imports.sync_file(store, source, [reader.user_id], days, held=held)
        assert outcome.syncs <= len(held) // imports.DAYS_PER_SYNC + 2
        assert not outcome.failures
        assert store.count_records("apple_health") == REAL_RECORDS
    finally:
        store.dispose()


def test_sync_calls_hold_at_most_records_per_sync_unless_one_day_holds_more() -> None:
    """Given the records of each day (an Apple Health export's spill file counts them), a call
    holds at most RECORDS_PER_SYNC records, so its memory is bounded: a day holding more is a
    call of its own; the days, in order, are those of the calls without sizes."""
    first = date(2016, 1, 1)
    days = [first + timedelta(days=n) for n in range(30)]
    most = imports.RECORDS_PER_SYNC
    sizes = {day: most // 3 for day in days[:10]} | {days[10]: most * 2}
    sizes |= {day: 1 for day in days[20:]}  # days 11 .. 19 hold nothing
    calls = imports.sync_calls(days, set(sizes), sizes)
    assert [day for call in calls for day in call] == days
    assert [len(set(sizes) & set(call)) for call in calls] == [3, 3, 3, 1, 1, 7, 3]
    assert all(sum(sizes.get(d, 0) for d in call) <= most for call in calls if days[10] not in call)
    assert imports.sync_calls(days, set(sizes)) == imports.sync_calls(days, set(sizes), {})


def test_sync_calls_hold_at_most_a_week_of_days_with_records() -> None:
    first = date(2016, 1, 1)
    days = [first + timedelta(days=n) for n in range(400)]
    held = {days[0], days[3], *days[100:120], days[399]}
    calls = imports.sync_calls(days, held)
    assert [day for call in calls for day in call] == days  # every day once, in order
    assert all(1 <= len(held.intersection(call)) <= imports.DAYS_PER_SYNC for call in calls)
    assert len(calls) == 4  # 23 days with records, 7 a call; the 380 empty ones join them
    assert imports.sync_calls(days[:10], set()) == [days[:10]]


def _hr_record(text: str) -> str:
    """The real export's first heart-rate Record line (line 309), alone in an export."""
    return next(line for line in text.splitlines() if HR_DATES[0] in line)


def _one_record_export(text: str, start: str) -> bytes:
    """The real export's prolog (DTD, ExportDate, Me) with only its line-309 Record, dated
    `start`."""
    head = text[: text.index("<Record ")]
    record = _hr_record(text).replace(HR_DATES[0][11:36], start).replace(HR_DATES[0][48:73], start)
    return (head + record + "\n</HealthData>\n").encode("utf-8")


def moments() -> st.SearchStrategy[datetime]:
    """Any time of the years 1000 .. 9999, three in four of them within days of either end of
    WINDOW or inside it (uniform ones almost never are)."""

    def between(first: datetime, last: datetime) -> st.SearchStrategy[datetime]:
        return st.datetimes(min_value=first, max_value=last)

    return st.one_of(
        between(datetime(1000, 1, 2), datetime(9999, 12, 30)),
        between(datetime(1999, 12, 29), datetime(2000, 1, 3)),
        between(datetime(2000, 1, 1), datetime(2026, 12, 6)),
        between(datetime(2026, 12, 5), datetime(2026, 12, 10)),
    )


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[FIXTURES])
@given(moment=moments(), offset=st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_any_date_outside_is_refused_and_any_inside_kept(
    export_text: str, moment: datetime, offset: int
) -> None:
    moment = moment.replace(microsecond=0)
    sign = "-" if offset < 0 else "+"
    start = f"{moment:%Y-%m-%d %H:%M:%S} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    reader = parse_export(io.BytesIO(_one_record_export(export_text, start)), "export.xml", WINDOW)
    utc = moment - timedelta(minutes=offset)
    plausible = datetime(2000, 1, 1) <= utc < datetime(2026, 12, 8)
    assert sum(reader.summary.mapped.values()) == int(plausible)
    assert reader.refused.total == int(not plausible)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[FIXTURES])
@given(moment=moments())
def test_any_fitabase_time_outside_is_refused_and_any_inside_kept(
    tmp_path_factory: pytest.TempPathFactory, fitabase_dir: Path, moment: datetime
) -> None:
    header, row = (fitabase_dir / HR_FILE.name).read_text().splitlines()[:2]
    person, _, value = row.split(",")
    path = tmp_path_factory.mktemp("fitabase") / HR_FILE.name
    stamp = moment.strftime("%m/%d/%Y %I:%M:%S %p").lstrip("0").replace("/0", "/")
    path.write_text(f"{header}\n{person},{stamp},{value}\n")
    refused = RefusedDates(WINDOW)
    batch = read_export_file(path, HR_FILE, "UTC", refused)
    plausible = datetime(2000, 1, 1) <= moment.replace(microsecond=0) < datetime(2026, 12, 8)
    assert len(batch) == int(plausible) and refused.total == int(not plausible)


def test_polar_samples_outside_are_refused(shared_data: Path) -> None:
    """The real H10 recording (May 2024) read on a clock of 2024-05-01: all of it is after
    tomorrow, so all of it is refused; on today's clock none is."""
    path = shared_data / "polar-h10" / "polar_h10.csv"
    early = PolarFileSource(path, dates=PlausibleDates.at(datetime(2024, 5, 1, tzinfo=UTC)))
    assert early.records.empty
    today = PolarFileSource(path, dates=WINDOW)
    assert early.refused.total == len(today.records) > 0 and today.refused.total == 0


def test_a_polar_sensor_logger_time_of_9999_is_refused_not_a_traceback(
    tmp_path: Path, shared_data: Path
) -> None:
    """The real recording written as Sensor Logger files (tests/providers/test_providers_polar.py),
    one HR
    row's phone time made 9999-12-31 23:00 in America/Chicago: an instant of the year 10000."""
    from test_providers_polar import H10, ZONE, write_sensor_logger

    files = write_sensor_logger(pd.read_csv(shared_data / "polar-h10" / "polar_h10.csv"), tmp_path)
    rows = files["HR"].read_text().splitlines()
    assert rows[5].startswith("2024-05-05T")
    rows[5] = "9999-12-31T23:00:00.000" + rows[5][23:]
    files["HR"].write_text("\n".join(rows) + "\n")
    source = PolarFileSource(tmp_path, timezone=ZONE, dates=WINDOW)
    hr = source.records[source.records["data_type"] == "heart_rate"]
    assert len(hr) == len(rows) - 2  # the header and the refused row
    assert source.refused.by_type == {"heart_rate": 1}
    assert f"{H10}_HR.txt line 6" in source.refused.line()


def test_an_empty_fitabase_file_is_one_line(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fitabase"
    folder.mkdir()
    (folder / HR_FILE.name).write_bytes(b"")  # was pandas' EmptyDataError, a traceback
    line = one_error_line(ohx("import", "fitabase", str(folder), "--timezone", "UTC"))
    assert f"{folder / HR_FILE.name}: not a readable CSV export" in line
    assert not (home / "ohx.db").exists()


def test_a_ten_thousand_character_person_id_is_one_line_and_stores_nothing(
    home: Path, tmp_path: Path, fitabase_dir: Path, export_text: str
) -> None:
    """The ids of a file obey the rule of every entry point (ohx_dagster/core/ids.py): a real
    Fitabase row whose Id is 10,000 digits was stored as a person; an export folder whose name
    (the default person) holds a line break."""
    folder = tmp_path / "fitabase"
    folder.mkdir()
    header, row = (fitabase_dir / HR_FILE.name).read_text().splitlines()[:2]
    (folder / HR_FILE.name).write_text(f"{header}\n{'9' * 10_000}{row[row.index(',') :]}\n")
    line = one_error_line(ohx("import", "fitabase", str(folder), "--timezone", "UTC"))
    assert "Id='9999" in line and "(10000 characters)" in line and "data row 1" in line
    assert not (home / "ohx.db").exists()
    odd = tmp_path / "ada\nbob"
    odd.mkdir()
    (odd / "export.xml").write_text(export_text, encoding="utf-8")
    line = one_error_line(ohx("import", "apple-health", str(odd / "export.xml")))
    assert "user_id=" in line and "--user" in line
    assert not (home / "ohx.db").exists()


def test_an_interrupted_import_says_what_is_stored_and_importing_again_completes_it(
    home: Path, tmp_path: Path, export_xml_path: Path
) -> None:
    """Ctrl-C (SIGINT) to a real `ohx import` once its first week is committed (of about 40):
    one line saying which days are stored and that importing again completes it; the second
    import does."""
    store_file = home / "ohx.db"
    child = subprocess.Popen(
        [str(OHX), "import", "apple-health", str(export_xml_path)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def committed() -> bool:
        if not store_file.exists():
            return False
        try:
            with closing(sqlite3.connect(store_file, timeout=0.05)) as db:
                return db.execute("SELECT count(*) FROM coverage").fetchone()[0] > 0
        except sqlite3.OperationalError:  # not created yet, or locked by a commit
            return False

    deadline = time.monotonic() + 120
    while not committed() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 1, err
    lines = [line for line in err.splitlines() if line.startswith("ohx: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "the import stopped at 2017-" in lines[0] and "(interrupted)" in lines[0]
    assert "import the same file again to complete it" in lines[0]
    partial = len(stored(home, "apple_health")) if store_file.exists() else 0
    assert 0 < partial < REAL_RECORDS
    again = subprocess.run(
        [str(OHX), "import", "apple-health", str(export_xml_path)],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert len(stored(home, "apple_health")) == REAL_RECORDS


# -- memory: zip bombs and files without line breaks -----------------------------------------------


def peak_rss_mib(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> tuple[subprocess.CompletedProcess, float]:
    """Run `ohx args` as a child of a fresh Python and return its result and peak RSS (MiB):
    RUSAGE_CHILDREN of a process whose only child it is."""
    probe = textwrap.dedent(
        """
        import resource, subprocess, sys
        done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"PEAK_KIB={peak} RC={done.returncode}")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(OHX), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    found = re.search(r"PEAK_KIB=(\d+) RC=(\d+)", done.stdout)
    assert found, (done.stdout, done.stderr)
    return done, int(found[1]) / 1024


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHX_")}
    env.update(OHX_HOME=str(home), OHX_ERASURE_SALT="test-salt-0123456789abcdef", COLUMNS="200")
    return env


def test_a_zip_bomb_is_refused_by_its_sizes_in_one_line_under_300_mib(
    home: Path, tmp_path: Path, export_text: str
) -> None:
    """export.zip of about 1 MB whose export.xml inflates to 1 GiB: the real export's prolog,
    then one line of spaces (the shape that took the line-based parser to 3.2 GB)."""
    bomb = tmp_path / "ada" / "export.zip"
    bomb.parent.mkdir()
    head = export_text[: export_text.index("<Record ")].encode("utf-8")
    member = "apple_health_export/export.xml"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open(member, "w", force_zip64=True) as written,
    ):
        written.write(head)
        block = b" " * (1 << 20)
        for _ in range(1024):
            written.write(block)
    assert bomb.stat().st_size < 1_500_000
    done, peak = peak_rss_mib(["import", "apple-health", str(bomb)], _env(home))
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ohx: error: archive="), done.stderr
    assert f"at most {MAX_RATIO}:1" in lines[0] and "zip bomb" in lines[0]
    assert "RC=1" in done.stdout
    assert peak < 300, peak
    assert not (home / "ohx.db").exists()


def test_an_export_without_line_breaks_is_read_in_pieces_under_300_mib(
    home: Path, tmp_path: Path, export_text: str
) -> None:
    """One 'line' of 64 MiB that never ends a tag (a comment left open after the real
    prolog): read in pieces and refused once 16 MiB are pending; the line-based parser held it
    whole, and any length beyond fails the same way."""
    big = tmp_path / "ada" / "export.xml"
    big.parent.mkdir()
    head = export_text[: export_text.index("<Record ")]
    with big.open("wb") as out:
        out.write(head.encode("utf-8") + b"<!--")
        block = b"x" * (1 << 20)
        for _ in range(64):
            out.write(block)
    done, peak = peak_rss_mib(["import", "apple-health", str(big)], _env(home))
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "without a tag ending" in lines[0] and "16 MiB" in lines[0], done
    assert peak < 300, peak


# -- memory: the number of samples ----------------------------------------------------------------

WEEK = 7 * 8640  # heart rates of a week, one every 10 s
TEN_WEEKS = 600_000


def import_written(folder: Path, records: int, timeout: float = 600) -> tuple[str, float, int]:
    """`ohx import` by a real process of an export of `records` heart rates written in the real
    export's shapes (bench/apple_health.write_export: one every 10 s), into a store of its own:
    its output, its peak RSS (MiB) and the records stored."""
    export = folder / "ada" / "export.xml"
    export.parent.mkdir(parents=True)
    write_export(export, records)
    home = folder / "home"
    done, peak = peak_rss_mib(["import", "apple-health", str(export)], _env(home), timeout)
    assert "RC=0" in done.stdout, done.stderr[-3000:]
    export.unlink()
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    try:
        return done.stdout, peak, store.count_records("apple_health")
    finally:
        store.dispose()


def test_ten_times_the_samples_import_whole_in_the_same_memory(tmp_path: Path) -> None:
    """A week of heart rates and ten weeks (600,000 Records, 141 MB), each imported by a real
    `ohx` process: every Record is stored, and the ten weeks take at most 20 MiB more than the
    week (the spill file's page cache, the validator's bounded memories), under 300 MiB. Before
    the spill file the samples were columns in memory and the validator's memory kept 4 KiB a
    value: 38.6 MiB more (224.0 against 185.4), and 6 million took 699.5 MiB (the next test)."""
    _, week, stored = import_written(tmp_path / "week", WEEK)
    assert stored == WEEK
    output, weeks, stored = import_written(tmp_path / "weeks", TEN_WEEKS)
    assert stored == TEN_WEEKS
    assert f"Records: {TEN_WEEKS:,} (heart_rate {TEN_WEEKS:,})." in output
    assert weeks < 300 and weeks - week < 20, (week, weeks)


@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("OHX_LARGE_IMPORT") != "1",
    reason="6 million heart rates (1.4 GB, about 10 minutes on 2 cores): set OHX_LARGE_IMPORT=1",
)
def test_six_million_heart_rates_import_whole_under_300_mib(tmp_path: Path) -> None:
    """A genuine export's size (real ones hold 5 to 20 million Records): 6,000,000 heart rates
    over 696 days, all stored, under 300 MiB (699.5 MiB before the spill file)."""
    output, peak, stored = import_written(tmp_path, 6_000_000, timeout=3000)
    assert stored == 6_000_000, output
    assert peak < 300, peak


def test_any_spill_batch_reads_the_same(
    export_xml_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The samples reach the spill file in batches: batches of 7 samples (the real export in
    about 900) give the same records, windows, days, zone and summary as the default."""
    usual = AppleHealthSource(export_xml_path, dates=WINDOW)
    original = apple_source.parse_export
    monkeypatch.setattr(
        apple_source, "parse_export", lambda *a, **k: original(*a, spill_batch=7, **k)
    )
    small = AppleHealthSource(export_xml_path, dates=WINDOW)
    assert small.day_sizes() == usual.day_sizes()
    assert small.zone == usual.zone
    assert vars(small.summary) == vars(usual.summary)
    pd.testing.assert_frame_equal(small.records, usual.records)
    user = usual.discover_users()[0]
    for day in usual.held_days()[::20]:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        window = DateRange(start, start + timedelta(days=7))
        pd.testing.assert_frame_equal(
            small.fetch(user, list(HealthDataType), window),
            usual.fetch(user, list(HealthDataType), window),
        )


def _spill_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("ohx-apple-health-*"))


def test_the_spill_file_is_deleted_when_closed_and_when_the_export_fails(
    tmp_path: Path, export_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    folder = tmp_path / "ada"
    folder.mkdir()
    export = folder / "export.xml"
    export.write_text(export_text, encoding="utf-8")
    source = AppleHealthSource(export, dates=WINDOW)
    assert len(source.held_days()) == 207 and len(_spill_files(scratch)) == 1
    source.close()
    assert _spill_files(scratch) == []
    assert len(source.held_days()) == 207  # read again when asked again
    del source
    assert _spill_files(scratch) == []
    # Cut short: the XML error ends the parse and its spill file.
    export.write_text(export_text[: len(export_text) // 2], encoding="utf-8")
    with pytest.raises(ProviderError, match="not a complete Apple Health export"):
        AppleHealthSource(export, dates=WINDOW).held_days()
    assert _spill_files(scratch) == []


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        ("MAX_DEVICES", 5, "at most 5 devices and apps"),
        ("MAX_KINDS", 10, "at most 10 element names, sample types and HKTimeZone zones"),
        ("MAX_OBSERVATIONS", 100, "at most 100: samples of one quarter hour carry one offset"),
    ],
)
def test_what_the_parse_keeps_beside_the_spill_file_is_bounded(
    home: Path,
    export_xml_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
    value: int,
    message: str,
) -> None:
    """Devices, kinds (element names, types, zones) and (quarter hour, offset) pairs are what
    the parse keeps whole; beyond their limits (far above any real export's: lowered here to
    below the real export's own) a file is one line, with nothing stored."""
    monkeypatch.setattr(apple_export, limit, value)
    line = one_error_line(ohx("import", "apple-health", str(export_xml_path)))
    assert message in line
    assert not (home / "ohx.db").exists()


def test_the_real_export_reads_the_same_in_pieces_and_on_one_line(export_text: str) -> None:
    """Pieces of 4 KiB cut tags and attribute values anywhere; the real export without its
    line breaks is one 3.8 MB line: the records are the same, only line numbers differ."""
    data = export_text.encode("utf-8")
    whole = parse_export(io.BytesIO(data), "export.xml", WINDOW)
    pieces = parse_export(io.BytesIO(data), "export.xml", WINDOW, piece=4096)
    flat = parse_export(io.BytesIO(data.replace(b"\n", b" ")), "export.xml", WINDOW, piece=4096)
    assert whole.summary.lines == data.count(b"\n") and flat.summary.lines == 1
    for reader in (pieces, flat):
        assert reader.summary.mapped == whole.summary.mapped
        assert reader.summary.records == whole.summary.records
        assert sorted(reader.keys) == sorted(whole.keys)
        for key, number in whole.keys.items():
            read, expected = reader.spill.read(reader.keys[key]), whole.spill.read(number)
            for column in ("utc_us", "offset_min", "value", "device"):
                np.testing.assert_array_equal(read[column], expected[column])
    for key, number in whole.keys.items():
        np.testing.assert_array_equal(
            pieces.spill.read(pieces.keys[key])["line"], whole.spill.read(number)["line"]
        )
    assert sum(whole.summary.mapped.values()) >= REAL_RECORDS


def test_a_window_is_built_alone_and_equals_selecting_it_from_every_record(
    export_xml_path: Path,
) -> None:
    """A sync reads an export a window at a time: AppleHealthSource.fetch builds the window's
    records from the compact columns, and they are exactly ReadOnce's selection from `records`
    (the whole export as records, which an import no longer builds)."""
    source = AppleHealthSource(export_xml_path, dates=WINDOW)
    user = source.discover_users()[0]
    every = list(HealthDataType)
    day, total = datetime(2017, 1, 16, tzinfo=UTC), 0
    while day < datetime(2017, 11, 13, tzinfo=UTC):
        window = DateRange(day, day + timedelta(days=7))
        for types in (
            every,
            [HealthDataType.STEPS],
            [HealthDataType.HEART_RATE],
            [HealthDataType.SLEEP],
        ):
            built = source.fetch(user, types, window)
            selected = ReadOnce.fetch(source, user, types, window)
            if built.empty or selected.empty:  # (an empty batch's dtypes are empty_batch's)
                assert built.empty and selected.empty
                continue
            pd.testing.assert_frame_equal(built, selected)
        total += len(source.fetch(user, every, window))
        day += timedelta(days=7)
    assert total == len(source.records) == REAL_RECORDS
    assert source.held_days()[0] == date(2017, 1, 22) and len(source.held_days()) < 289
    assert source.held_types() == {HealthDataType(t) for t in source.records["data_type"]}


def test_an_element_with_too_many_descendants_is_refused(export_text: str) -> None:
    head = export_text[: export_text.index("<Record ")]
    record = _hr_record(export_text).removesuffix("/>")
    entry = '<MetadataEntry key="HKWasUserEntered" value="0"/>'
    body = f"{head}{record}>{entry * 100_001}</Record>\n</HealthData>\n".encode()
    with pytest.raises(ValidationError, match="at most 100,000 elements inside one child"):
        parse_export(io.BytesIO(body), "export.xml", WINDOW)


@pytest.mark.parametrize("at", [0.25, 0.5, 0.9])
def test_a_damaged_zip_is_one_line(
    home: Path, tmp_path: Path, shared_data: Path, at: float
) -> None:
    """The real export zipped, 200 bytes of its deflate stream overwritten: whether zlib (at 0.9
    of the file, "invalid block type": was a traceback) or the XML parser notices first, the
    import ends in one line and stores nothing."""
    archive = tmp_path / "ada" / "export.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(shared_data / "apple-health" / "export.xml", "apple_health_export/export.xml")
    data = bytearray(archive.read_bytes())
    start = int(len(data) * at)
    data[start : start + 200] = b"\xff" * 200
    archive.write_bytes(bytes(data))
    line = one_error_line(ohx("import", "apple-health", str(archive)))
    assert str(archive) in line
    assert not (home / "ohx.db").exists()


# -- symbolic links --------------------------------------------------------------------------------


def test_fitabase_refuses_a_link_leading_out_of_the_folder(
    home: Path, tmp_path: Path, fitabase_dir: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    rows = (fitabase_dir / HR_FILE.name).read_text().splitlines()[:50]
    (outside / HR_FILE.name).write_text("\n".join(rows) + "\n")
    folder = tmp_path / "fitabase"
    folder.mkdir()
    (folder / HR_FILE.name).symlink_to(outside / HR_FILE.name)
    line = one_error_line(ohx("import", "fitabase", str(folder), "--timezone", "UTC"))
    assert f"{folder / HR_FILE.name}" in line and "symbolic link leading out of it" in line
    assert not (home / "ohx.db").exists()
    with pytest.raises(ValidationError, match="symbolic link"):
        FitabaseSource([folder], "UTC")
    # A link that stays inside the folder is the folder's own file.
    (folder / HR_FILE.name).unlink()
    (folder / "original.csv").write_text("\n".join(rows) + "\n")
    (folder / HR_FILE.name).symlink_to(folder / "original.csv")
    assert len(FitabaseSource([folder], "UTC", dates=WINDOW).records) == 49
    # Another CSV of the folder linking out is listed, never opened.
    (folder / "hourlyCalories_merged.csv").symlink_to("/etc/passwd")
    skipped = imports.fitabase_skipped(folder, {s.name: s for s in EXPORT_FILES})
    link = [s for s in skipped if s.what == "hourlyCalories_merged.csv"]
    assert link and link[0].count == 0 and "symbolic link" in link[0].why


def test_polar_and_apple_health_folders_refuse_links_leading_out(
    tmp_path: Path, shared_data: Path, export_text: str
) -> None:
    polar = tmp_path / "polar"
    polar.mkdir()
    (polar / "Polar_H10_9EE99320_20240326_173049_HR.txt").symlink_to("/etc/hostname")
    with pytest.raises(ValidationError, match="symbolic link leading out"):
        PolarFileSource(polar, timezone="UTC")
    ada = tmp_path / "ada"
    (ada / "electrocardiograms").mkdir(parents=True)
    (ada / "export.xml").write_text(export_text, encoding="utf-8")
    (ada / "electrocardiograms" / "ecg_2024-05-05.csv").symlink_to(
        shared_data / "polar-h10" / "polar_h10.csv"
    )
    with pytest.raises(ValidationError, match="symbolic link leading out"):
        _ = AppleHealthSource(ada / "export.xml", dates=WINDOW).records
