"""The real Apple Health export through the apple_health source: counts and values against the
XML read independently (ElementTree on the whole document, regular expressions on the raw text),
clear errors for broken exports, HealthKit shapes the real file lacks (SpO2 fraction, blood
pressure correlations, beat lists, degF, lb, zip), and one day materialized through Dagster."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ohx_dagster.definitions import build_definitions
from ohx_dagster.errors import ProviderError, ValidationError
from ohx_dagster.models import DateRange, HealthDataType
from ohx_dagster.providers.apple_health import AppleHealthSource
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.settings import Settings
from ohx_dagster.store import RecordStore

RAW_UNITS = {"heart_rate": "count/min", "steps": "count", "weight": "kg"}
MAPPED = {
    "HKQuantityTypeIdentifierHeartRate": "heart_rate",
    "HKQuantityTypeIdentifierStepCount": "steps",
    "HKQuantityTypeIdentifierBodyMass": "weight",
}
ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture(scope="module")
def export_xml(shared_data: Path) -> Path:
    return shared_data / "apple-health" / "export.xml"


@pytest.fixture(scope="module")
def source(export_xml: Path) -> AppleHealthSource:
    return AppleHealthSource(export_xml)


@pytest.fixture(scope="module")
def raw_lines(export_xml: Path) -> list[str]:
    return export_xml.read_text(encoding="utf-8").splitlines()


def _when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z")


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(_when(text)).tz_convert("UTC")


def test_source_follows_the_protocol(source: AppleHealthSource) -> None:
    assert isinstance(source, HealthSource)
    (user,) = source.discover_users()
    assert user.user_id == "apple-health"  # the export's folder
    assert user.timezone == "Etc/GMT-2"  # every timestamp is +0200


def test_counts_per_type_equal_the_xml(source: AppleHealthSource, export_xml: Path) -> None:
    root = ET.parse(export_xml).getroot()
    top_level = Counter(r.get("type") for r in root.findall("Record"))
    assert sum(top_level.values()) == 10_939  # SOURCE.md
    summary = source.summary
    assert summary.records == top_level
    assert summary.correlations == Counter(c.get("type") for c in root.findall("Correlation"))
    assert summary.other["Workout"] == len(root.findall("Workout")) == 61
    assert summary.skipped == Counter({t: n for t, n in top_level.items() if t not in MAPPED})
    assert summary.beats == len(root.findall(".//InstantaneousBeatsPerMinute")) == 0
    stored = source.records.groupby("data_type").size().to_dict()
    assert stored == {MAPPED[t]: top_level[t] for t in MAPPED}
    assert dict(summary.mapped) == stored  # no sample of this export repeats an identity


def test_records_carry_the_raw_values_units_and_offsets(
    source: AppleHealthSource, raw_lines: list[str]
) -> None:
    records = source.records.set_index(["data_type", "ts", "device_id"])
    checked = Counter()
    for line in raw_lines:
        found = re.match(r'\s*<Record type="(\w+)"', line)
        if not found or found[1] not in MAPPED:
            continue
        kind = MAPPED[found[1]]
        checked[kind] += 1
        if checked[kind] % 97 != 1:  # a spread of records of each type
            continue
        attributes = dict(ATTRIBUTE.findall(line))
        start, end = _when(attributes["startDate"]), _when(attributes["endDate"])
        hardware = re.search(r"hardware:(\w+,\d+)", attributes.get("device", ""))
        device = attributes["sourceName"] + (f" [{hardware[1]}]" if hardware else "")
        row = records.loc[(kind, pd.Timestamp(start).tz_convert("UTC"), device)]
        assert row["value"] == float(attributes["value"])
        assert row["utc_offset_min"] == start.utcoffset().total_seconds() / 60 == 120
        assert row["unit"] == {"heart_rate": "/min", "steps": "1", "weight": "kg"}[kind]
        assert attributes["unit"] == RAW_UNITS[kind]
        if kind == "steps":
            assert row["duration_s"] == (end - start).total_seconds()
        else:
            assert pd.isna(row["duration_s"])
    assert set(checked) == set(MAPPED.values())


def _broken(tmp_path: Path, raw_lines: list[str], line: int, old: str, new: str) -> Path:
    lines = list(raw_lines)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path = tmp_path / "export.xml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _first_line(raw_lines: list[str], kind: str) -> int:
    return next(n for n, text in enumerate(raw_lines, 1) if f'type="{kind}"' in text)


def test_a_known_type_with_an_unknown_unit_names_the_record(
    tmp_path: Path, raw_lines: list[str]
) -> None:
    line = _first_line(raw_lines, "HKQuantityTypeIdentifierHeartRate")
    path = _broken(tmp_path, raw_lines, line, 'unit="count/min"', 'unit="count/s"')
    with pytest.raises(ValidationError) as error:
        _ = AppleHealthSource(path).records
    message = str(error.value)
    assert "unit='count/s'" in message and f"line {line}" in message
    assert "HKQuantityTypeIdentifierHeartRate" in message and "count/min" in message


def test_an_unknown_unit_of_an_unmapped_type_is_not_an_error(
    tmp_path: Path, raw_lines: list[str]
) -> None:
    line = _first_line(raw_lines, "HKQuantityTypeIdentifierDistanceWalkingRunning")
    path = _broken(tmp_path, raw_lines, line, 'unit="km"', 'unit="furlong"')
    assert len(AppleHealthSource(path).records) == 2_177 + 3_980 + 40


def test_a_date_without_offset_names_the_record(tmp_path: Path, raw_lines: list[str]) -> None:
    line = _first_line(raw_lines, "HKQuantityTypeIdentifierStepCount")
    start = dict(ATTRIBUTE.findall(raw_lines[line - 1]))["startDate"]
    naive = start.removesuffix(" +0200")
    path = _broken(tmp_path, raw_lines, line, f'startDate="{start}"', f'startDate="{naive}"')
    with pytest.raises(ValidationError) as error:
        _ = AppleHealthSource(path).records
    message = str(error.value)
    assert f"startDate='{naive}'" in message and f"line {line}" in message
    assert "HKQuantityTypeIdentifierStepCount" in message and "offset" in message


def test_a_truncated_export_is_an_error_with_its_position(tmp_path: Path, export_xml: Path) -> None:
    data = export_xml.read_bytes()
    cut = data.index(b"<Record", len(data) // 2) + 40  # inside an element, mid-file
    path = tmp_path / "export.xml"
    path.write_bytes(data[:cut])
    with pytest.raises(ProviderError) as error:
        _ = AppleHealthSource(path).records
    line = data[:cut].count(b"\n") + 1
    assert f"line {line}" in str(error.value) and "not a complete Apple Health export" in str(
        error.value
    )


def test_a_missing_export_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="OHX_APPLE_HEALTH_EXPORT"):
        AppleHealthSource(tmp_path / "nothing.xml")


# HealthKit shapes the real file does not hold, written as iOS writes them.
WATCH = (
    'sourceName="Ann’s Apple Watch" sourceVersion="10.1" device="&lt;&lt;HKDevice: 0x2815&gt;, '
    'name:Apple Watch, manufacturer:Apple, model:Watch, hardware:Watch6,2, software:10.1&gt;"'
)
CUFF = 'sourceName="Omron"'


def _at(moment: str) -> str:
    return f'startDate="{moment}" endDate="{moment}"'


SPO2 = "HKQuantityTypeIdentifierOxygenSaturation"
SYS = "HKQuantityTypeIdentifierBloodPressureSystolic"
DIA = "HKQuantityTypeIdentifierBloodPressureDiastolic"
BP_AT = _at("2024-03-31 08:10:00 +0200")
SYNTHETIC = f"""<?xml version="1.0" encoding="UTF-8"?>
<HealthData locale="de_DE">
 <ExportDate value="2024-03-31 12:00:00 +0200"/>
 <Record type="{SPO2}" {WATCH} unit="%" value="0.97" {_at("2024-03-30 23:10:00 +0100")}/>
 <Record type="{SPO2}" sourceName="App" unit="%" value="95" {_at("2024-03-30 23:20:00 +0100")}/>
 <Record type="HKQuantityTypeIdentifierBodyTemperature" sourceName="Kinsa" unit="degF"
  {_at("2024-03-31 08:00:00 +0200")} value="98.6"/>
 <Record type="HKQuantityTypeIdentifierBodyMass" sourceName="Scale" unit="lb" value="150"
  {_at("2024-03-31 08:05:00 +0200")}/>
 <Record type="{SYS}" {CUFF} unit="mmHg" value="121" {BP_AT}/>
 <Record type="{DIA}" {CUFF} unit="mmHg" value="79" {BP_AT}/>
 <Record type="{SYS}" {CUFF} unit="mmHg" value="140" {_at("2024-03-31 09:00:00 +0200")}/>
 <Record type="HKQuantityTypeIdentifierHeartRateVariabilitySDNN" {WATCH} unit="ms" value="41.5"
  {_at("2024-03-30 23:59:58 +0100")}>
  <HeartRateVariabilityMetadataList>
   <InstantaneousBeatsPerMinute bpm="61" time="11:59:59.50\u202fPM"/>
   <InstantaneousBeatsPerMinute bpm="63" time="12:00:00.45 AM"/>
  </HeartRateVariabilityMetadataList>
 </Record>
 <Correlation type="HKCorrelationTypeIdentifierBloodPressure" {CUFF} {BP_AT}>
  <Record type="{SYS}" {CUFF} unit="mmHg" value="121" {BP_AT}/>
  <Record type="{DIA}" {CUFF} unit="mmHg" value="79" {BP_AT}/>
 </Correlation>
 <Workout workoutActivityType="HKWorkoutActivityTypeWalking" {CUFF} {BP_AT}/>
</HealthData>
"""


@pytest.fixture
def synthetic(tmp_path: Path) -> AppleHealthSource:
    folder = tmp_path / "ann"
    folder.mkdir()
    path = folder / "export.xml"
    path.write_text(SYNTHETIC, encoding="utf-8")
    return AppleHealthSource(path)


def test_healthkit_shapes_map_to_canonical_records(synthetic: AppleHealthSource) -> None:
    records = synthetic.records.set_index(["data_type", "ts"])
    spo2 = records.loc["spo2"]
    assert spo2["value"].tolist() == pytest.approx([97.0, 95.0])  # fraction and percent
    assert spo2.iloc[0]["device_id"] == "Ann’s Apple Watch [Watch6,2]"
    temperature = records.loc[("temperature", utc("2024-03-31 08:00:00 +0200"))]
    assert temperature["value"] == pytest.approx(37.0) and temperature["unit"] == "Cel"
    weight = records.loc[("weight", utc("2024-03-31 08:05:00 +0200"))]
    assert weight["value"] == pytest.approx(150 * 0.45359237)
    (pressure,) = records.loc["blood_pressure"].itertuples()
    assert pressure.Index == utc("2024-03-31 08:10:00 +0200")
    assert (pressure.value, pressure.diastolic, pressure.unit) == (121.0, 79.0, "mm[Hg]")
    assert pressure.utc_offset_min == 120
    # The SDNN value is not RR and is not stored; its beats are heart rate, and the second one
    # is past local midnight (the next day, still +0100 as the sample's clock).
    assert set(records.index.get_level_values(0)) == {
        "spo2",
        "temperature",
        "weight",
        "blood_pressure",
        "heart_rate",
    }
    beats = records.loc["heart_rate"]
    assert beats.index.tolist() == [
        utc("2024-03-30 23:59:59 +0100") + pd.Timedelta("500ms"),
        utc("2024-03-31 00:00:00 +0100") + pd.Timedelta("450ms"),
    ]
    assert beats["value"].tolist() == [61.0, 63.0] and set(beats["utc_offset_min"]) == {60}
    summary = synthetic.summary
    assert summary.beats == 2 and summary.unpaired_blood_pressure == 1  # the lone 140
    assert summary.skipped == Counter({"HKQuantityTypeIdentifierHeartRateVariabilitySDNN": 1})
    (user,) = synthetic.discover_users()
    assert user.user_id == "ann"


def test_a_zip_export_reads_like_its_xml(
    tmp_path: Path, export_xml: Path, source: AppleHealthSource
) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(export_xml, "apple_health_export/export.xml")
        zipped.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
    from_zip = AppleHealthSource(archive, user_id="apple-health")
    pd.testing.assert_frame_equal(from_zip.records, source.records)


def test_fetch_selects_the_window_and_types(source: AppleHealthSource) -> None:
    (user,) = source.discover_users()
    window = DateRange(datetime(2017, 10, 24, tzinfo=UTC), datetime(2017, 10, 25, tzinfo=UTC))
    batch = source.fetch(user, [HealthDataType.HEART_RATE], window)
    assert set(batch["data_type"]) == {"heart_rate"}
    assert batch["ts"].min() >= window.start and batch["ts"].max() < window.end


def _xml_heart_rate(raw_lines: list[str]) -> pd.DataFrame:
    """HeartRate records of the raw text: UTC instant and value, by regular expression."""
    rows = [
        dict(ATTRIBUTE.findall(line))
        for line in raw_lines
        if 'type="HKQuantityTypeIdentifierHeartRate"' in line
    ]
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["startDate"], format="%Y-%m-%d %H:%M:%S %z", utc=True)
    frame["value"] = frame["value"].astype(float)
    return frame


def test_materialize_a_day_partition(
    tmp_path: Path, export_xml: Path, raw_lines: list[str]
) -> None:
    day = "2017-10-24"
    settings = Settings.from_env(
        {
            "OHX_HOME": str(tmp_path / "home"),
            "OHX_PARTITIONS_START": "2017-01-01",
            "OHX_SOURCES": "apple_health",
            "OHX_APPLE_HEALTH_EXPORT": str(export_xml),
        }
    )
    defs = build_definitions(settings)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        job = defs.resolve_job_def("sync_partition")
        result = job.execute_in_process(partition_key=f"{day}|apple_health", instance=instance)
    assert result.success
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == []

    store = RecordStore(settings.database_url)
    window = DateRange(datetime(2017, 10, 24, tzinfo=UTC), datetime(2017, 10, 25, tzinfo=UTC))
    hourly = store.read_aggregates("apple_health", "hourly", window)
    hourly = hourly[hourly["data_type"] == "heart_rate"].set_index("bucket_start_us")

    xml = _xml_heart_rate(raw_lines)
    xml = xml[(xml["ts"] >= window.start) & (xml["ts"] < window.end)]
    expected = xml.groupby(xml["ts"].dt.floor("h"))["value"].agg(["count", "min", "max", "mean"])
    expected.index = (expected.index - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1us")
    assert expected["count"].sum() > 500
    assert hourly.index.tolist() == expected.index.tolist()
    assert hourly["count"].tolist() == expected["count"].tolist()
    assert hourly["min"].tolist() == expected["min"].tolist()
    assert hourly["max"].tolist() == expected["max"].tolist()
    assert hourly["mean"].tolist() == pytest.approx(expected["mean"].tolist(), rel=1e-12)
    assert set(hourly["utc_offset_min"]) == {120}
    store.dispose()
