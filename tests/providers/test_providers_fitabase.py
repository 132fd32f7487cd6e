"""The Fitabase export reader on the real exports in ../shared/data (and small broken copies)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.providers.base import WindowReader
from ohx_dagster.providers.fitabase import FitabaseSource, parse_dirs

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
MAY_USER = "8877689391"


def csv(directory: Path, name: str, time_column: str) -> pd.DataFrame:
    table = pd.read_csv(directory / name, dtype={"Id": "string"})
    table[time_column] = pd.to_datetime(table[time_column], format=TIME_FORMAT)
    return table


@pytest.fixture(scope="module")
def utc_source(fitabase_dir: Path) -> FitabaseSource:
    return FitabaseSource([fitabase_dir], "UTC")


def test_is_a_health_source(utc_source: FitabaseSource) -> None:
    assert isinstance(utc_source, WindowReader)
    assert utc_source.name == "fitabase"


def test_reads_every_row_of_the_three_exports(utc_source: FitabaseSource, fitabase_dir: Path):
    records = utc_source.records
    for name, time_column, value_column, kind, unit in [
        ("heartrate_seconds_merged.csv", "Time", "Value", "heart_rate", "/min"),
        ("hourlySteps_merged.csv", "ActivityHour", "StepTotal", "steps", "1"),
        ("weightLogInfo_merged.csv", "Date", "WeightKg", "weight", "kg"),
    ]:
        table = csv(fitabase_dir, name, time_column)
        got = records[records["data_type"] == kind]
        assert len(got) == len(table.drop_duplicates(["Id", time_column])), name
        assert (got["unit"] == unit).all()
        expected = table.set_index(["Id", time_column])[value_column].sort_index()
        actual = got.set_index([got["user_id"], got["ts"].dt.tz_localize(None)])["value"]
        pd.testing.assert_series_equal(
            actual.sort_index(),
            expected.astype("float64"),
            check_names=False,
            check_index_type=False,
        )
    assert set(records["data_type"]) == {"heart_rate", "steps", "weight"}
    assert (records["provider"] == "fitabase").all()
    steps = records[records["data_type"] == "steps"]
    assert (steps["duration_s"] == 3600.0).all()


def test_users_are_every_id_in_the_exports(utc_source: FitabaseSource, fitabase_dir: Path):
    ids = set()
    for name in ("heartrate_seconds_merged.csv", "hourlySteps_merged.csv"):
        ids |= set(pd.read_csv(fitabase_dir / name, dtype={"Id": "string"})["Id"])
    users = utc_source.discover_users()
    assert {u.user_id for u in users} == ids
    assert len(ids) == 33  # the heart-rate excerpt's user is one of the 33 hourly-file users
    assert all(u.provider == "fitabase" and u.timezone == "UTC" for u in users)
    assert all(len(u.user_id) == 10 and u.user_id.isdigit() for u in users)


def test_wall_clock_times_take_the_configured_zone(fitabase_dir: Path) -> None:
    source = FitabaseSource([fitabase_dir], "America/Chicago")
    heart_rate = source.records[source.records["data_type"] == "heart_rate"]
    first = heart_rate.iloc[0]
    # 4/1/2016 7:54:00 AM in Chicago (CDT, UTC-5) is 12:54 UTC.
    assert first["ts"] == pd.Timestamp("2016-04-01T12:54:00Z")
    assert first["utc_offset_min"] == -300
    assert (heart_rate["utc_offset_min"] == -300).all()
    assert {u.timezone for u in source.discover_users()} == {"America/Chicago"}


def test_clock_changes_follow_the_device_rule(tmp_path: Path) -> None:
    (tmp_path / "heartrate_seconds_merged.csv").write_text(
        "Id,Time,Value\n"
        "1,11/6/2016 1:30:00 AM,60\n"  # happens twice in Chicago: read as the first (CDT)
        "1,3/13/2016 2:30:00 AM,61\n"  # does not exist in Chicago: moved forward to 3:00 CDT
    )
    records = FitabaseSource([tmp_path], "America/Chicago").records.set_index("value")
    assert records.loc[60.0, "ts"] == pd.Timestamp("2016-11-06T06:30:00Z")
    assert records.loc[60.0, "utc_offset_min"] == -300
    assert records.loc[61.0, "ts"] == pd.Timestamp("2016-03-13T08:00:00Z")
    assert records.loc[61.0, "utc_offset_min"] == -300


def test_several_directories_and_the_crlf_export(shared_data: Path) -> None:
    joined = os.pathsep.join([str(shared_data / "fitabase"), str(shared_data / "fitabase-may")])
    assert parse_dirs(joined) == [shared_data / "fitabase", shared_data / "fitabase-may"]
    source = FitabaseSource(parse_dirs(joined), "UTC")
    records = source.records
    may = records[(records["user_id"] == MAY_USER) & (records["data_type"] == "heart_rate")]
    raw = (shared_data / "fitabase-may" / "heartrate_seconds_merged.csv").read_bytes()
    assert b"\r\n" in raw and raw.endswith(b"\r\n\r\n")  # CRLF and a trailing blank line
    expected = csv(shared_data / "fitabase-may", "heartrate_seconds_merged.csv", "Time")
    expected = expected.dropna(how="all")
    assert len(may) == len(expected) == 17_666
    assert may["ts"].min() == pd.Timestamp("2016-05-10T06:55:26Z")
    assert may["value"].iloc[-1] == float(expected["Value"].iloc[-1])
    assert MAY_USER in {u.user_id for u in source.discover_users()}
    heart_rate = source.records[source.records["data_type"] == "heart_rate"]
    assert len(heart_rate) == 8_418 + 17_666


def test_a_directory_given_twice_yields_each_record_once(fitabase_dir: Path) -> None:
    once = FitabaseSource([fitabase_dir], "UTC").records
    twice = FitabaseSource([fitabase_dir, fitabase_dir], "UTC").records
    pd.testing.assert_frame_equal(once, twice)


def test_fetch_serves_one_user_and_type_in_a_half_open_window(
    utc_source: FitabaseSource,
) -> None:
    user = HealthSyncConfig(user_id="2022484408", provider="fitabase")
    window = DateRange(datetime(2016, 4, 1, 8, tzinfo=UTC), datetime(2016, 4, 1, 9, tzinfo=UTC))
    batch = utc_source.fetch(user, [HealthDataType.HEART_RATE], window, batch_size=1000)
    assert len(batch) == 391  # the CSV's rows from 8:00:00 AM to 8:59:59 AM on 4/1/2016
    assert batch["ts"].min() >= pd.Timestamp(window.start)
    assert batch["ts"].max() < pd.Timestamp(window.end)
    assert set(batch["user_id"]) == {"2022484408"}
    assert utc_source.fetch(user, [HealthDataType.STEPS], window, batch_size=10).empty
    stranger = HealthSyncConfig(user_id="0000000000", provider="fitabase")
    assert utc_source.fetch(stranger, list(HealthDataType), window, batch_size=10).empty


def write(directory: Path, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "hourlySteps_merged.csv").write_text(text)
    return directory


@pytest.mark.parametrize(
    ("text", "field", "where"),
    [
        ('Id,ActivityHour,StepTotal\n1,"2016-04-12 00:00",5\n', "time", "data row 1"),
        ('Id,ActivityHour,StepTotal\n1,"4/12/2016 1:00:00 AM",5\n1,"4/12/2016 25:00:00 PM",5\n',
         "time", "data row 2"),
        ('Id,ActivityHour,StepTotal\n1,"4/12/2016 1:00:00 AM",many\n', "StepTotal", "data row 1"),
        ('Id,ActivityHour,StepTotal\n1,"4/12/2016 1:00:00 AM",-5\n', "value", "row 0"),
        ('Id,Hour,StepTotal\n1,"4/12/2016 1:00:00 AM",5\n', "columns", "hourlySteps"),
    ],
)  # fmt: skip
def test_broken_exports_name_the_file_row_and_column(
    tmp_path: Path, text: str, field: str, where: str
) -> None:
    directory = write(tmp_path / "export", text)
    with pytest.raises(ValidationError) as caught:
        _ = FitabaseSource([directory], "UTC").records
    assert caught.value.field == field
    assert where in caught.value.where


def test_bad_configuration_is_rejected(tmp_path: Path, fitabase_dir: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        FitabaseSource([tmp_path / "missing"], "UTC")
    assert caught.value.field == "OHX_FITABASE_DIR"
    with pytest.raises(ValidationError) as caught:
        FitabaseSource([], "UTC")
    assert caught.value.field == "OHX_FITABASE_DIR"
    with pytest.raises(ValidationError) as caught:
        FitabaseSource([fitabase_dir], "Central Time")
    assert caught.value.field == "timezone"


def test_an_export_whose_files_hold_only_headers_is_an_error_not_zero_people(
    tmp_path: Path,
) -> None:
    directory = write(tmp_path / "export", "Id,ActivityHour,StepTotal\n")
    with pytest.raises(ValidationError, match="data rows in its export files") as caught:
        _ = FitabaseSource([directory], "UTC").records
    assert caught.value.field == "OHX_FITABASE_DIR"
    assert "hourlySteps_merged.csv hold none" in caught.value.where


def _published(tmp_path: Path, export: Path, zone: str) -> list[dict]:
    """The export read in `zone`, synced and published: every resource of its partition."""
    from datetime import timedelta

    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.providers.base import Windowed
    from ohx_dagster.providers.registry import SUPPORTED_TYPES
    from ohx_dagster.publish.partitions import partition_dir, publish_partition
    from ohx_dagster.storage.store import RecordStore
    from ohx_dagster.sync.fetch import sync_partition
    from ohx_dagster.sync.shards import Shard

    day = datetime(2016, 4, 12, tzinfo=UTC).date()
    now = datetime(2016, 5, 1, tzinfo=UTC)
    home = tmp_path / zone.replace("/", "-")
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    source = Windowed(FitabaseSource([export], zone), SUPPORTED_TYPES["fitabase"], timedelta(0))
    sync_partition(source, store, [day], strategy="partition", now=now)
    output = FhirOutput(str(home / "fhir"))
    publish_partition(
        store, output, provider="fitabase", key="fitabase", shard=Shard("fitabase"), day=day,
        scope=None, now=now, horizon=timedelta(0), run_id="run",
    )  # fmt: skip
    store.dispose()
    return list(output.listed_resources(partition_dir(day, "fitabase")))


def test_the_same_file_read_in_two_zones_never_shares_an_id_with_other_content(
    tmp_path: Path,
) -> None:
    """Issue 13: a re-import with another zone must not overwrite the first reading's resources
    on a FHIR server with other content under the same ids. The zone is in the device id (so in
    every series and measurement key), in the aggregates' keys and in the Provenance."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "heartrate_seconds_merged.csv").write_text(
        "Id,Time,Value\n" + "".join(f"7,4/12/2016 {h}:00:05 PM,{60 + h}\n" for h in range(1, 6))
    )
    (export / "weightLogInfo_merged.csv").write_text(
        "Id,Date,WeightKg,WeightPounds,Fat,BMI,IsManualReport,LogId\n"
        '7,"4/12/2016 7:30:00 AM",70.5,155.4,,22.6,True,1460446200000\n'
    )
    utc, chicago = (
        _published(tmp_path, export, "UTC"),
        _published(tmp_path, export, "America/Chicago"),
    )
    by_id = {r["id"]: r for r in utc}
    shared = [r for r in chicago if r["id"] in by_id and r != by_id[r["id"]]]
    assert shared == [], [r["resourceType"] for r in shared]
    assert {r["resourceType"] for r in chicago if r["id"] in by_id} <= {"Patient"}
    (provenance,) = [r for r in chicago if r["resourceType"] == "Provenance"]
    assert "read as America/Chicago" in provenance["entity"][0]["what"]["display"]
    devices = {r["displayName"] for r in chicago if r["resourceType"] == "Device"}
    assert devices == {"fitbit@America/Chicago"}
