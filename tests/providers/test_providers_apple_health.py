"""The real Apple Health export through the apple_health source: counts and values against the
XML read independently (ElementTree on the whole document, regular expressions on the raw text),
clear errors for broken exports, HealthKit shapes the real file lacks (SpO2 fraction, blood
pressure correlations, beat lists, degF, lb, zip), manual entries, an ECG app CSV written at test
time from the real Polar H10 ECG in ../shared/data, in the ECG app's layout, inside an export.zip
laid out as the Health app writes it, the user's time zone (DST from the samples' offsets,
HKTimeZone metadata, locale), and one day materialized through Dagster."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from apple_health_ecg import ECG_MEMBER, ECG_START, write_apple_ecg

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ProviderError, ValidationError
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.ecg import ecg_reports, read_waveform
from ohx_dagster.providers.apple_health import AppleHealthSource
from ohx_dagster.providers.apple_health.ecg import read_ecg
from ohx_dagster.providers.apple_health.export import device_id
from ohx_dagster.providers.apple_health.zone import zone_offsets
from ohx_dagster.providers.base import HealthSource, Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.quality import implausible_values

RAW_UNITS = {
    "heart_rate": "count/min",
    "steps": "count",
    "weight": "kg",
    "blood_glucose": "mg/dL",
}
MAPPED = {
    "HKQuantityTypeIdentifierHeartRate": "heart_rate",
    "HKQuantityTypeIdentifierStepCount": "steps",
    "HKQuantityTypeIdentifierBodyMass": "weight",
    "HKQuantityTypeIdentifierBloodGlucose": "blood_glucose",
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


@pytest.fixture(scope="module")
def ecg_csv(shared_data: Path) -> bytes:
    return write_apple_ecg(shared_data / "polar-h10" / "polar_h10.csv")


def _when(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z")


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(_when(text)).tz_convert("UTC")


def test_source_follows_the_protocol(
    source: AppleHealthSource, tmp_path: Path, ecg_csv: bytes
) -> None:
    # An export answers one window at a time; the sync reads it through Windowed.
    wrapped = Windowed(source, SUPPORTED_TYPES["apple_health"])
    assert isinstance(wrapped, HealthSource)
    supported = {t.value for t in SUPPORTED_TYPES["apple_health"]}
    assert set(source.records["data_type"]) <= supported
    with_ecg = AppleHealthSource(
        _health_zip(tmp_path, SYNTHETIC, {ECG_MEMBER: ecg_csv}), user_id="ann"
    )
    assert set(with_ecg.records["data_type"]) <= supported and "ecg" in supported
    (user,) = wrapped.discover_users()
    assert user.user_id == "apple-health"  # the export's folder
    # Every date says +0200, but HKTimeZone metadata says Asia/Jerusalem (see the zone tests):
    # the zone follows Israel's DST instead of a fixed UTC+2.
    assert user.timezone == "Asia/Jerusalem"


def test_counts_per_type_equal_the_xml(source: AppleHealthSource, export_xml: Path) -> None:
    root = ET.parse(export_xml).getroot()
    top_level = Counter(r.get("type") for r in root.findall("Record"))
    assert sum(top_level.values()) == 10_939  # SOURCE.md
    summary = source.summary
    assert summary.records == top_level
    assert summary.correlations == Counter(c.get("type") for c in root.findall("Correlation"))
    assert summary.mapped["workout"] == len(root.findall("Workout")) == 61
    assert "Workout" not in summary.other
    sleep = "HKCategoryTypeIdentifierSleepAnalysis"  # nights, not one record each: below
    unmapped = {t: n for t, n in top_level.items() if t not in MAPPED and t != sleep}
    assert summary.skipped == Counter({**unmapped, f"{sleep} (ends as it starts)": 2})
    assert summary.beats == len(root.findall(".//InstantaneousBeatsPerMinute")) == 0
    stored = source.records.groupby("data_type").size().to_dict()
    assert stored == {MAPPED[t]: top_level[t] for t in MAPPED} | {"sleep": 87, "workout": 61}
    # No sample of this export repeats an identity; 119 sleep records with a length are 87 nights.
    assert dict(summary.mapped) == stored | {"sleep": top_level[sleep] - 2}


def test_sleep_records_become_nights_holding_each_record_once(
    source: AppleHealthSource, raw_lines: list[str]
) -> None:
    """The real export's 121 sleep analysis records (7 apps; "in bed", "asleep", "awake"): each
    record with a length lies inside exactly one night of its app, unless its night was "in bed"
    alone; each night's time asleep is the time its "asleep" records cover, each second once;
    nights are stamped at their end with that record's offset."""
    nights = source.records[source.records["data_type"] == "sleep"]
    ends = nights["ts"].dt.as_unit("us").array.asi8
    starts = ends - (nights["duration_s"].to_numpy() * 1e6).round().astype("int64")
    devices = nights["device_id"].to_numpy()
    held: dict[int, list[tuple[int, int, str]]] = {i: [] for i in range(len(nights))}
    in_bed_alone = 0
    for line in raw_lines:
        if "HKCategoryTypeIdentifierSleepAnalysis" not in line:
            continue
        attributes = dict(ATTRIBUTE.findall(line))
        start = int(_when(attributes["startDate"]).timestamp() * 1e6)
        end = int(_when(attributes["endDate"]).timestamp() * 1e6)
        if end == start:
            continue
        device = device_id(attributes["sourceName"], attributes.get("device", ""))
        inside = np.flatnonzero((devices == device) & (starts <= start) & (end <= ends))
        if attributes["value"].endswith("InBed") and not inside.size:
            in_bed_alone += 1
            continue
        assert inside.size == 1, line
        held[int(inside[0])].append((start, end, attributes["value"]))
    assert in_bed_alone == 4
    for index, records in held.items():
        assert records, f"night {index} holds no record"
        assert starts[index] == min(r[0] for r in records)
        assert ends[index] == max(r[1] for r in records)
        covered: set[int] = set()
        for start, end, value in records:
            if value.endswith("Asleep"):
                covered.update(range(start // 1_000_000, end // 1_000_000))
        assert nights["value"].iloc[index] * 60 == pytest.approx(len(covered), abs=1e-6)
    assert set(nights["utc_offset_min"]) == {120}  # every date of the export says +0200


def test_workouts_carry_the_exports_activity_duration_energy_and_distance(
    source: AppleHealthSource, raw_lines: list[str]
) -> None:
    """Each of the real export's 61 <Workout> elements is one workout at its endDate: the type's
    name, `duration` minutes, `totalEnergyBurned` kcal and `totalDistance` km in metres exactly
    as written; the two whose dates span less than their duration (a typed-in run, an LFconnect
    run) begin that long before their end. Published as the IG's panel, valid."""
    from ohx_dagster.core.times import to_us
    from ohx_dagster.fhir.validation import validate_resources
    from ohx_dagster.fhir.workouts import workout_resources

    records = source.records
    workouts = records[records["data_type"] == "workout"].set_index(["ts", "device_id"])
    seen = 0
    for line in raw_lines:
        if "<Workout " not in line:
            continue
        seen += 1
        attributes = dict(ATTRIBUTE.findall(line))
        start, end = _when(attributes["startDate"]), _when(attributes["endDate"])
        device = device_id(attributes["sourceName"], attributes.get("device", ""))
        row = workouts.loc[(pd.Timestamp(end).tz_convert("UTC"), device)]
        assert row["context"] == attributes["workoutActivityType"].removeprefix(
            "HKWorkoutActivityType"
        )
        assert row["value"] == float(attributes["duration"])  # durationUnit "min" throughout
        energy, distance, *_ = row["samples"]
        assert energy == float(attributes["totalEnergyBurned"])
        assert distance == float(attributes["totalDistance"]) * 1000
        lasted = (end - start).total_seconds()
        assert row["duration_s"] == max(lasted, float(attributes["duration"]) * 60)
    assert seen == len(workouts) == 61
    config = HealthSyncConfig("apple-health", "apple_health", timezone="Asia/Jerusalem")
    resources = [
        r
        for _, row in records[records["data_type"] == "workout"].iterrows()
        for r in workout_resources(row.to_dict() | {"ts_us": to_us(row["ts"])}, config)
    ]
    problems = [p for p in validate_resources(resources) if "Device/" not in p.message]
    assert problems == []


def test_a_watch_night_of_stages_is_one_night_with_its_stages(tmp_path: Path) -> None:
    """A watch's night since iOS 16, a record per stage and "in bed" around them, across midnight
    and Berlin's change to summer time (02:00 became 03:00): one night of 430 minutes (the wall
    clock says 490), stamped at its end, its stages in order from the first record, published
    with their durations; awake before sleeping and after the last waking is not wake after
    sleep onset."""
    from ohx_dagster.core.times import to_us
    from ohx_dagster.fhir.sleep import sleep_observation

    rows = [
        ("InBed", "2024-03-30 23:00:00 +0100", "2024-03-31 07:10:00 +0200"),
        ("Awake", "2024-03-30 23:05:00 +0100", "2024-03-30 23:20:00 +0100"),
        ("AsleepCore", "2024-03-30 23:20:00 +0100", "2024-03-31 00:10:00 +0100"),
        ("AsleepDeep", "2024-03-31 00:10:00 +0100", "2024-03-31 01:00:00 +0100"),
        ("Awake", "2024-03-31 01:00:00 +0100", "2024-03-31 01:05:00 +0100"),
        ("AsleepREM", "2024-03-31 01:05:00 +0100", "2024-03-31 01:35:00 +0100"),
        ("AsleepCore", "2024-03-31 01:35:00 +0100", "2024-03-31 06:50:00 +0200"),
        ("Awake", "2024-03-31 06:50:00 +0200", "2024-03-31 07:10:00 +0200"),
    ]
    records = "\n".join(
        f' <Record type="HKCategoryTypeIdentifierSleepAnalysis" {WATCH} '
        f'value="HKCategoryValueSleepAnalysis{value}" startDate="{start}" endDate="{end}"/>'
        for value, start, end in rows
    )
    xml = tmp_path / "ann" / "export.xml"
    xml.parent.mkdir()
    xml.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="de_DE">\n'
        f' <ExportDate value="2024-03-31 12:00:00 +0200"/>\n{records}\n</HealthData>\n'
    )
    source = AppleHealthSource(xml, timezone="Europe/Berlin")
    try:
        nights = source.records
    finally:
        source.close()
    assert len(nights) == 1
    night = nights.iloc[0].to_dict()
    assert night["ts"] == utc("2024-03-31 07:10:00 +0200")
    assert night["duration_s"] == 430 * 60 and night["utc_offset_min"] == 120
    assert night["value"] == 385  # minutes asleep: 50 + 50 + 30 + 255
    config = HealthSyncConfig("ann", "apple_health", timezone="Europe/Berlin")
    resource = sleep_observation(night | {"ts_us": to_us(night["ts"])}, config)
    assert resource["effectivePeriod"] == {
        "start": "2024-03-31T00:00:00+02:00",  # 23:00 +01:00, on the clock of the waking
        "end": "2024-03-31T07:10:00+02:00",
    }
    stages = {c["code"]["coding"][0]["code"]: c for c in resource["component"]}
    assert stages["93831-6"]["valueQuantity"]["value"] == 50
    assert stages["93830-8"]["valueQuantity"]["value"] == 305
    assert stages["93829-0"]["valueQuantity"]["value"] == 30
    assert stages["wakeAfterSleepOnset"]["valueQuantity"]["value"] == 5
    assert stages["numberOfAwakenings"]["valueInteger"] == 1


def test_an_unknown_sleep_value_fails_the_import_naming_its_line(tmp_path: Path) -> None:
    xml = tmp_path / "ann" / "export.xml"
    xml.parent.mkdir()
    xml.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="de_DE">\n'
        f' <Record type="HKCategoryTypeIdentifierSleepAnalysis" {WATCH} value="Napping" '
        'startDate="2024-03-30 23:00:00 +0100" endDate="2024-03-31 06:00:00 +0200"/>\n'
        "</HealthData>\n"
    )
    source = AppleHealthSource(xml)
    with pytest.raises(ValidationError) as failed:
        source.held_days()
    source.close()
    message = str(failed.value)
    assert "line 3" in message and "Napping" in message and "\n" not in message


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
        assert (
            row["unit"]
            == {
                "heart_rate": "/min",
                "steps": "1",
                "weight": "kg",
                "blood_glucose": "mg/dL",
            }[kind]
        )
        assert attributes["unit"] == RAW_UNITS[kind]
        if kind == "steps":
            assert row["duration_s"] == (end - start).total_seconds()
        else:
            assert pd.isna(row["duration_s"])
    assert set(checked) == set(MAPPED.values())


def test_every_blood_glucose_record_is_stored_as_written(
    source: AppleHealthSource, raw_lines: list[str]
) -> None:
    """All 35 meter and typed readings of the real export: value, unit and instant as written,
    glucose in blood (HealthKit names no specimen; SOURCE.md), the two 666 mg/dL kept and
    flagged implausible, not refused."""
    written = []
    for line in raw_lines:
        if 'type="HKQuantityTypeIdentifierBloodGlucose"' in line:
            attributes = dict(ATTRIBUTE.findall(line))
            assert attributes["unit"] == "mg/dL"
            start = pd.Timestamp(_when(attributes["startDate"])).tz_convert("UTC")
            written.append((start, float(attributes["value"])))
    assert len(written) == 35
    stored = source.records[source.records["data_type"] == "blood_glucose"]
    assert sorted(zip(stored["ts"], stored["value"], strict=True)) == sorted(written)
    assert set(stored["unit"]) == {"mg/dL"}
    assert implausible_values(stored) == {"blood_glucose": 2}  # the two 666 mg/dL


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
    assert (
        len(AppleHealthSource(path).records) == 2_177 + 3_980 + 40 + 35 + 87 + 61
    )  # nights, workouts


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
 <Record type="HKQuantityTypeIdentifierBodyMass" sourceName="Health" unit="lb" value="150"
  {_at("2024-03-31 08:05:00 +0200")}>
  <MetadataEntry key="HKWasUserEntered" value="1"/>
 </Record>
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
 <Record type="HKQuantityTypeIdentifierRespiratoryRate" {WATCH} unit="count/min" value="14.5"
  {_at("2024-03-31 03:10:00 +0200")}/>
 <Correlation type="HKCorrelationTypeIdentifierBloodPressure" {CUFF} {BP_AT}>
  <MetadataEntry key="HKWasUserEntered" value="1"/>
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
    # Typed in (HKWasUserEntered="1"): the weight and the pressure; the rest was measured.
    assert (weight["method"], pressure.method) == ("manual", "manual")
    assert set(records.loc["spo2"]["method"]) == {"device"}
    # The SDNN value is an HRV reading (never RR intervals); its beats are heart rate, and the
    # second one is past local midnight (the next day, still +0100 as the sample's clock).
    assert set(records.index.get_level_values(0)) == {
        "spo2",
        "temperature",
        "weight",
        "blood_pressure",
        "heart_rate",
        "hrv_sdnn",
        "respiratory_rate",
        "workout",
    }
    # A walk the cuff's app logged with no times or totals: a workout of no length, its activity.
    walk = records.loc[("workout", utc("2024-03-31 08:10:00 +0200"))]
    assert (walk["value"], walk["duration_s"], walk["context"]) == (0.0, 0.0, "Walking")
    assert np.isnan(walk["samples"]).all()
    hrv = records.loc[("hrv_sdnn", utc("2024-03-30 23:59:58 +0100"))]
    assert (hrv["value"], hrv["unit"], hrv["utc_offset_min"]) == (41.5, "ms", 60)
    breaths = records.loc[("respiratory_rate", utc("2024-03-31 03:10:00 +0200"))]
    assert (breaths["value"], breaths["unit"], breaths["utc_offset_min"]) == (14.5, "/min", 120)
    beats = records.loc["heart_rate"]
    assert beats.index.tolist() == [
        utc("2024-03-30 23:59:59 +0100") + pd.Timedelta("500ms"),
        utc("2024-03-31 00:00:00 +0100") + pd.Timedelta("450ms"),
    ]
    assert beats["value"].tolist() == [61.0, 63.0] and set(beats["utc_offset_min"]) == {60}
    summary = synthetic.summary
    assert summary.beats == 2 and summary.unpaired_blood_pressure == 1  # the lone 140
    assert summary.skipped == Counter()
    assert summary.manual == Counter({"weight": 1, "blood_pressure": 1})
    (user,) = synthetic.discover_users()
    assert user.user_id == "ann"
    # +0100 before and +0200 after 2024-03-31 01:00 UTC, locale de_DE.
    assert user.timezone == "Europe/Berlin"


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
    # The partition publishes the person's local day 2017-10-24 (Asia/Jerusalem, +0300 then):
    # its hours are 2017-10-23T21:00Z .. 2017-10-24T21:00Z.
    zone = ZoneInfo("Asia/Jerusalem")
    window = DateRange(
        datetime(2017, 10, 24, tzinfo=zone).astimezone(UTC),
        datetime(2017, 10, 25, tzinfo=zone).astimezone(UTC),
    )
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
    # The buckets carry the user's zone offset: Asia/Jerusalem, still in summer time (+0300)
    # on 2017-10-24, although every date of the export says +0200.
    assert set(hourly["utc_offset_min"]) == {180}
    store.dispose()


# --- manual entries ------------------------------------------------------------------------


def test_user_entered_samples_are_manual(source: AppleHealthSource, export_xml: Path) -> None:
    # Independently: the mapped Records whose own metadata says HKWasUserEntered="1".
    root = ET.parse(export_xml).getroot()
    typed = set()
    for record in root.findall("Record"):
        entered = {m.get("key"): m.get("value") for m in record.findall("MetadataEntry")}
        if record.get("type") in MAPPED and entered.get("HKWasUserEntered") == "1":
            typed.add(
                (MAPPED[record.get("type")], utc(record.get("startDate")), record.get("sourceName"))
            )
    # 21 step counts and 6 weights typed into the Health app; 18 blood glucose readings typed
    # into Health (11), One Drop (5) and ACCU-CHEK's app (2).
    assert Counter(kind for kind, _, _ in typed) == {"steps": 21, "weight": 6, "blood_glucose": 18}
    assert Counter(name for kind, _, name in typed if kind == "blood_glucose") == {
        "Health": 11,
        "One Drop": 5,
        "ACCU-CHEK": 2,
    }
    records = source.records
    manual = records[
        (records["method"] == "manual") & ~records["data_type"].isin(["sleep", "workout"])
    ]
    assert set(zip(manual["data_type"], manual["ts"], manual["device_id"], strict=True)) == typed
    assert set(records["method"]) == {"manual", "device"}
    # Every sleep record of the Health app was typed in (30 with a length: asleep, in bed,
    # awake), and no other app's: the Health app's 20 nights are manual, the others' are not.
    nights = records[records["data_type"] == "sleep"]
    by_hand = nights["method"] == "manual"
    assert set(nights[by_hand]["device_id"]) == {"Health"} and by_hand.sum() == 20
    assert (nights[~by_hand]["device_id"] != "Health").all()
    # Workouts whose own metadata says typed in (by the Health app and by running apps).
    typed_workouts = {
        (utc(w.get("endDate")), w.get("sourceName"))
        for w in root.findall("Workout")
        if {m.get("key"): m.get("value") for m in w.findall("MetadataEntry")}.get(
            "HKWasUserEntered"
        )
        == "1"
    }
    workouts = records[(records["data_type"] == "workout") & (records["method"] == "manual")]
    assert set(zip(workouts["ts"], workouts["device_id"], strict=True)) == typed_workouts
    assert len(typed_workouts) == 6
    assert source.summary.manual == Counter(
        {"steps": 21, "weight": 6, "blood_glucose": 18, "sleep": 30, "workout": 6}
    )


# --- ECG recordings --------------------------------------------------------------------------


def _ecg_file(data: bytes) -> tuple[dict[str, str], np.ndarray]:
    """The ECG CSV read independently: its header lines (csv module) and its samples."""
    lines = data.decode("utf-8").splitlines()
    header = {row[0]: row[1] for row in csv.reader(lines[:12]) if len(row) == 2}
    samples = np.loadtxt(io.StringIO("\n".join(lines[13:])))
    return header, samples


def _health_zip(tmp_path: Path, xml: Path | str, ecg: dict[str, bytes]) -> Path:
    """An export.zip laid out as the Health app writes it."""
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        if isinstance(xml, Path):
            zipped.write(xml, "apple_health_export/export.xml")
        else:
            zipped.writestr("apple_health_export/export.xml", xml)
        zipped.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
        for member, data in ecg.items():
            zipped.writestr(member, data)
    return archive


def test_an_ecg_csv_in_the_zip_is_one_ecg_record(
    tmp_path: Path, export_xml: Path, source: AppleHealthSource, ecg_csv: bytes
) -> None:
    archive = _health_zip(tmp_path, export_xml, {ECG_MEMBER: ecg_csv})
    from_zip = AppleHealthSource(archive, user_id="apple-health")
    records = from_zip.records
    ecg = records[records["data_type"] == "ecg"]
    pd.testing.assert_frame_equal(
        records[records["data_type"] != "ecg"].reset_index(drop=True), source.records
    )
    header, samples = _ecg_file(ecg_csv)
    assert header["Sample Rate"] == "512 hertz" and header["Unit"] == "µV"
    assert header["Device"] == "Watch7,2"  # quoted in the file, comma and all
    (row,) = ecg.itertuples()
    recorded = datetime.strptime(header["Recorded Date"], "%Y-%m-%d %H:%M:%S %z")
    assert row.ts == pd.Timestamp(recorded).tz_convert("UTC") == pd.Timestamp("2024-05-05T14:51Z")
    assert row.utc_offset_min == -300  # CDT, as "Recorded Date" says
    assert row.sampling_rate_hz == 512.0
    np.testing.assert_array_equal(np.asarray(row.samples), samples)  # uV as written
    assert len(samples) == 15_360 and (samples % 1 != 0).any()  # decimals, as the app writes
    assert row.duration_s == 30.0
    assert (row.device_id, row.unit, row.method, row.user_id) == (
        f"Apple Watch [{header['Device']}]",
        "uV",
        "device",
        "apple-health",
    )
    assert np.isnan(row.value)
    (recording,) = from_zip.ecg_recordings
    assert recording.classification == header["Classification"] == "Sinus Rhythm"
    assert (recording.symptoms, recording.software_version, recording.lead) == (
        "",
        "1.90",
        "Lead I",
    )
    assert recording.name == f"{archive}!{ECG_MEMBER}"
    assert from_zip.summary.ecg_files == 1
    # The person's name and date of birth are in the file but never in a record.
    assert (header["Name"], header["Date of Birth"]) == ("Test Person", "1 Jan 1970")
    assert not records.drop(columns="samples").isin(["Test Person", "1 Jan 1970"]).any().any()


def test_the_ecg_record_becomes_a_diagnostic_report_with_its_waveform(
    tmp_path: Path, ecg_csv: bytes
) -> None:
    archive = _health_zip(tmp_path, SYNTHETIC, {ECG_MEMBER: ecg_csv})
    source = AppleHealthSource(archive, user_id="ann")
    config = HealthSyncConfig(user_id="ann", provider="apple_health")
    waveform, report = ecg_reports(source.records, {"ann": config}, lambda *_: [])
    assert report["resourceType"] == "DiagnosticReport" and report["category"][0]["coding"]
    assert report["result"][0]["reference"].endswith(waveform["id"])
    start_us, rate, samples = read_waveform(waveform)
    _, expected = _ecg_file(ecg_csv)
    assert start_us == pd.Timestamp("2024-05-05T14:51:00Z").value // 1000
    assert rate == pytest.approx(512.0)
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-9)
    assert waveform["effectivePeriod"]["start"].endswith("-05:00")


def test_an_unzipped_export_reads_the_ecg_folder_beside_it(tmp_path: Path, ecg_csv: bytes) -> None:
    folder = tmp_path / "apple_health_export"
    (folder / "electrocardiograms").mkdir(parents=True)
    (folder / "export.xml").write_text(SYNTHETIC, encoding="utf-8")
    (folder / "electrocardiograms" / Path(ECG_MEMBER).name).write_bytes(ecg_csv)
    records = AppleHealthSource(folder / "export.xml").records
    assert records["data_type"].tolist().count("ecg") == 1


def test_decimal_commas_read_as_decimal_points(ecg_csv: bytes) -> None:
    lines = ecg_csv.decode("utf-8").splitlines()
    comma = [*lines[:13], *(v.replace(".", ",") for v in lines[13:])]
    with_fraction = sum("," in v for v in comma[13:])
    assert with_fraction == sum("." in v for v in lines[13:]) > 10_000
    point = read_ecg(ecg_csv, "point.csv")
    other = read_ecg(("\n".join(comma) + "\n").encode(), "comma.csv")
    assert len(other.samples_uv) == 15_360
    np.testing.assert_array_equal(other.samples_uv, point.samples_uv)


def _changed(data: bytes, line: int, text: str | None) -> bytes:
    """The ECG CSV with one line replaced (None: removed)."""
    lines = data.decode("utf-8").splitlines()
    lines[line - 1 : line] = [] if text is None else [text]
    return ("\n".join(lines) + "\n").encode()


def test_a_fractional_sample_rate_is_read_as_written(ecg_csv: bytes) -> None:
    # The watch writes the rate it measured, "512.508 hertz" in real files (SOURCE.md).
    recording = read_ecg(_changed(ecg_csv, 8, "Sample Rate,512.508 hertz"), "ecg.csv")
    assert recording.sampling_rate_hz == 512.508
    assert recording.duration_s == pytest.approx(15_360 / 512.508)


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        (12, "Unit,mmHg", ["Unit='mmHg'", "line 12", "µV"]),
        (12, None, ["Unit=None", "line 13", "'Unit,µV'"]),  # the samples now start at 13
        (8, None, ["Sample Rate=None", "line 13", "hertz"]),
        (8, "Sample Rate,fast", ["Sample Rate='fast'", "line 8", "hertz"]),
        (3, "Recorded Date,2024-05-05 09:51:00", ["Recorded Date=", "line 3", "+hhmm"]),
        (200, "n/a", ["sample='n/a'", "line 200", "a number"]),
        (201, "250000", ["sample='250000'", "line 201", "uV"]),
    ],
)
def test_a_broken_ecg_names_its_file_line_and_value(
    tmp_path: Path, ecg_csv: bytes, line: int, text: str | None, expected: list[str]
) -> None:
    archive = _health_zip(tmp_path, SYNTHETIC, {ECG_MEMBER: _changed(ecg_csv, line, text)})
    with pytest.raises(ValidationError) as error:
        _ = AppleHealthSource(archive).records
    message = str(error.value)
    assert "\n" not in message and f"{archive}!{ECG_MEMBER}" in message
    for part in expected:
        assert part in message


# --- the user's time zone ---------------------------------------------------------------------


def test_the_real_export_dates_carry_the_export_offset_not_the_samples(
    source: AppleHealthSource, raw_lines: list[str]
) -> None:
    # Independently of the importer: HKTimeZone metadata names Asia/Jerusalem, which was at
    # +0300 in June 2017, yet the June samples (and every other date) say +0200, the offset of
    # the ExportDate: the Health app stamped every date with the export's offset.
    named = Counter(re.findall(r'key="HKTimeZone" value="([^"]+)"', "\n".join(raw_lines)))
    assert named == Counter({"Asia/Jerusalem": 19})
    june = [line for line in raw_lines if 'startDate="2017-06-19 22:16:16' in line]
    assert june and "+0200" in june[0]
    assert datetime(2017, 6, 19, 22, tzinfo=ZoneInfo("Asia/Jerusalem")).utcoffset() == timedelta(
        hours=3
    )
    choice = source.zone
    assert (choice.zone, choice.fixed) == ("Asia/Jerusalem", False)
    assert "HKTimeZone" in choice.reason and "+0200" in choice.reason and "DST" in choice.reason
    assert "\n" not in choice.reason
    # The offsets alone fit only zones at a constant +0200 through 2017, Jerusalem not among them.
    assert "Africa/Johannesburg" in choice.candidates
    assert "Asia/Jerusalem" not in choice.candidates


def test_without_zone_metadata_the_offsets_decide(tmp_path: Path, raw_lines: list[str]) -> None:
    kept = [line for line in raw_lines if 'key="HKTimeZone"' not in line]
    folder = tmp_path / "jo"
    folder.mkdir()
    (folder / "export.xml").write_text("\n".join(kept) + "\n", encoding="utf-8")
    source = AppleHealthSource(folder / "export.xml")
    choice = source.zone
    assert not choice.fixed and choice.zone != "Asia/Jerusalem"
    instants = source.records["ts"].astype("int64").to_numpy() // 1000
    assert set(zone_offsets(choice.zone, instants).tolist()) == {120}
    assert "match all" in choice.reason


def _dst_export(locale: str, *, stray: datetime | None = None) -> str:
    """Heart rate every 5 h through 2024, each date with the offset of the EU rule (CET, +0100;
    CEST, +0200 from the last Sunday of March to that of October, 01:00 UTC): written from the
    rule, not from a time zone database."""
    summer = (datetime(2024, 3, 31, 1, tzinfo=UTC), datetime(2024, 10, 27, 1, tzinfo=UTC))
    rows = []
    moment = datetime(2024, 1, 3, tzinfo=UTC)
    instants = []
    while moment < datetime(2024, 12, 28, tzinfo=UTC):
        instants.append((moment, 120 if summer[0] <= moment < summer[1] else 60))
        moment += timedelta(hours=5)
    if stray is not None:
        instants.append((stray, 120))  # a summer offset half an hour before the change
    for at, minutes in instants:
        local = (at + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")
        stamp = f"{local} +0{minutes // 60}00"
        rows.append(
            f' <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="Watch" '
            f'unit="count/min" value="60" startDate="{stamp}" endDate="{stamp}"/>'
        )
    body = "\n".join(rows)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="{locale}">\n'
        f' <ExportDate value="2024-12-28 10:00:00 +0100"/>\n{body}\n</HealthData>\n'
    )


@pytest.mark.parametrize("locale", ["de_DE", "en_US", ""])
def test_offsets_across_dst_changes_give_a_zone_with_dst(tmp_path: Path, locale: str) -> None:
    path = tmp_path / "export.xml"
    path.write_text(_dst_export(locale), encoding="utf-8")
    source = AppleHealthSource(path)
    choice = source.zone
    assert not choice.fixed and choice.zone.startswith("Europe/")
    if locale == "de_DE":
        assert choice.zone == "Europe/Berlin" and "locale de_DE" in choice.reason
    # Whatever the name, it keeps local days exactly as Europe/Berlin does over the data.
    instants = source.records["ts"].astype("int64").to_numpy() // 1000
    np.testing.assert_array_equal(
        zone_offsets(choice.zone, instants), zone_offsets("Europe/Berlin", instants)
    )
    assert set(source.records["utc_offset_min"]) == {60, 120}
    assert "+0100" in choice.reason and "+0200" in choice.reason
    (user,) = source.discover_users()
    assert user.timezone == choice.zone


def test_offsets_no_zone_explains_fall_back_to_a_fixed_offset(tmp_path: Path) -> None:
    path = tmp_path / "export.xml"
    stray = datetime(2024, 3, 31, 0, 30, tzinfo=UTC)
    path.write_text(_dst_export("de_DE", stray=stray), encoding="utf-8")
    choice = AppleHealthSource(path).zone
    assert (choice.zone, choice.fixed) == ("Etc/GMT-2", True)  # most samples are in summer
    assert "no IANA zone" in choice.reason and "daylight saving" in choice.reason
    assert "2024-03-31T00:30:00Z says +0200, Europe/Berlin +0100" in choice.reason


def test_two_peoples_offsets_in_one_export_fall_back_and_say_why(
    tmp_path: Path, export_xml: Path, ecg_csv: bytes
) -> None:
    # The real export (+0200, 2017) with an ECG of someone else recorded in Chicago (-0500,
    # 2024): no zone, and not the export's Asia/Jerusalem either, explains both.
    archive = _health_zip(tmp_path, export_xml, {ECG_MEMBER: ecg_csv})
    choice = AppleHealthSource(archive).zone
    assert (choice.zone, choice.fixed) == ("Etc/GMT-2", True)
    assert "2024-05-05T14:51:00Z says -0500" in choice.reason


def test_a_configured_zone_wins(tmp_path: Path, export_xml: Path) -> None:
    source = AppleHealthSource(export_xml, timezone="Europe/Berlin")
    assert source.discover_users()[0].timezone == "Europe/Berlin"
    assert "configuration" in source.zone.reason
    with pytest.raises(ValidationError, match="timezone"):
        AppleHealthSource(export_xml, timezone="Mars/Olympus")


# --- files that are not an export -------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _zip_of(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return path


NO_RECORD = b"""<?xml version="1.0" encoding="UTF-8"?>
<HealthData locale="en_US">
 <ExportDate value="2024-01-01 10:00:00 +0100"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth=""/>
</HealthData>
"""
UNMAPPED_ONLY = NO_RECORD.replace(
    b" <Me ",
    b' <Record type="HKQuantityTypeIdentifierDistanceWalkingRunning" sourceName="Phone" unit="km"'
    b' value="1" startDate="2024-01-01 09:00:00 +0100" endDate="2024-01-01 09:10:00 +0100"/>\n'
    b" <Me ",
)


@pytest.mark.parametrize(
    ("make", "error", "expected"),
    [
        (
            lambda t, _: _zip_of(t, {"apple_health_export/export_cda.xml": b"<ClinicalDocument/>"}),
            ValidationError,
            ["export.zip", "apple_health_export/export.xml", "export_cda.xml"],
        ),
        (
            lambda t, _: _write(t, "export.zip", b"not a zip"),
            ValidationError,
            ["export.zip", "a zip archive"],
        ),
        (
            lambda t, _: _write(t, "export.xml", b'<?xml version="1.0"?>\n<ClinicalDocument/>\n'),
            ValidationError,
            ["<ClinicalDocument>", "line 2", "<HealthData>"],
        ),
        (
            lambda t, ecg: _write(t, "export.xml", ecg),
            ProviderError,
            ["export.xml", "not an Apple Health export.xml", "line 1", "Export All Health Data"],
        ),
        (
            lambda t, _: _write(t, "export.xml", b""),
            ProviderError,
            ["export.xml", "not an Apple Health export.xml"],
        ),
        (
            lambda t, _: _zip_of(t, {"apple_health_export/export.xml": NO_RECORD}),
            ValidationError,
            ["export.zip!apple_health_export/export.xml", "Record", "holds none", "Me 1"],
        ),
        (
            lambda t, _: _write(t, "export.xml", UNMAPPED_ONLY),
            ValidationError,
            ["export.xml", "holds 1 Records", "DistanceWalkingRunning", "StepCount"],
        ),
    ],
    ids=[
        "zip-without-xml",
        "not-a-zip",
        "not-healthkit",
        "not-xml",
        "empty",
        "no-record",
        "nothing-mapped",
    ],
)
def test_a_file_without_an_export_fails_in_one_line(
    tmp_path: Path, ecg_csv: bytes, make, error: type[Exception], expected: list[str]
) -> None:
    path = make(tmp_path, ecg_csv)
    with pytest.raises(error) as raised:
        _ = AppleHealthSource(path).records
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    for part in expected:
        assert part in message


def test_many_ecg_recordings_cost_no_memory_until_a_window_reads_them(
    tmp_path: Path, ecg_csv: bytes
) -> None:
    """A watch that took an ECG every day for years: the export is read and checked once, and
    what stays in memory between windows is each recording's name, start and offset, not its
    15,360 samples (123 KB each as float64): memory does not grow with the number of recordings.
    A window still gets its recordings whole."""
    import tracemalloc

    stamp = ECG_START.strftime("%Y-%m-%d %H:%M:%S %z")
    recordings = {}
    for n in range(120):
        day = ECG_START + timedelta(days=n)
        text = ecg_csv.replace(stamp.encode(), day.strftime("%Y-%m-%d %H:%M:%S %z").encode())
        recordings[f"apple_health_export/electrocardiograms/ecg_{day:%Y-%m-%d}.csv"] = text

    def retained(count: int) -> tuple[int, AppleHealthSource]:
        folder = tmp_path / str(count)
        folder.mkdir()
        archive = _health_zip(folder, SYNTHETIC, dict(list(recordings.items())[:count]))
        tracemalloc.start()
        source = AppleHealthSource(archive, user_id="ann")
        source.held_days()  # parsed and checked, every recording read once
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return held, source

    one, _ = retained(1)
    many, source = retained(120)
    assert source.summary.ecg_files == 120
    assert (many - one) / 119 < 8_000  # bytes a recording; its samples alone are 122,880
    window = DateRange(ECG_START + timedelta(days=10), ECG_START + timedelta(days=12))
    ecg = source.fetch(source.discover_users()[0], [HealthDataType.ECG], window)
    assert len(ecg) == 2 and all(len(s) == 15_360 for s in ecg["samples"])
    source.close()


# A real Apple Watch run as iOS 26 exports it (NicolasReyrolle/apple-health-analyzer
# tests/test_export_parser.py, TestComplexRealWorldWorkout): no totals as attributes, its figures
# in WorkoutStatistics children; a WorkoutActivity segment with statistics of its own.
IOS26_RUN = """\
 <Workout workoutActivityType="HKWorkoutActivityTypeRunning" duration="119.2710362156232" \
durationUnit="min" sourceName="Apple Watch de Nicolas" sourceVersion="26.2" \
device="&lt;&lt;HKDevice: 0xc936a3f60&gt;, name:Apple Watch, manufacturer:Apple Inc., \
model:Watch, hardware:Watch7,2, software:26.2, creation date:2025-12-13 12:48:57 +0000&gt;" \
creationDate="2025-12-20 14:51:19 +0100" startDate="2025-12-20 12:51:00 +0100" \
endDate="2025-12-20 14:50:16 +0100">
  <MetadataEntry key="HKIndoorWorkout" value="0"/>
  <MetadataEntry key="HKTimeZone" value="Europe/Paris"/>
  <WorkoutEvent type="HKWorkoutEventTypeSegment" date="2025-12-20 12:51:00 +0100" \
duration="8.048923822244008" durationUnit="min"/>
  <WorkoutActivity uuid="936B9E1D-52B9-41CA-BCA9-9654D43F004E" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" \
duration="119.2710362156232" durationUnit="min">
   <WorkoutStatistics type="HKQuantityTypeIdentifierStepCount" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" sum="17599" \
unit="count"/>
  </WorkoutActivity>
  <WorkoutStatistics type="HKQuantityTypeIdentifierStepCount" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" sum="17599" unit="count"/>
  <WorkoutStatistics type="HKQuantityTypeIdentifierRunningPower" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" average="222.789" \
minimum="61" maximum="479" unit="W"/>
  <WorkoutStatistics type="HKQuantityTypeIdentifierActiveEnergyBurned" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" sum="1389.98" \
unit="kcal"/>
  <WorkoutStatistics type="HKQuantityTypeIdentifierDistanceWalkingRunning" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" sum="16.1244" unit="km"/>
  <WorkoutStatistics type="HKQuantityTypeIdentifierHeartRate" \
startDate="2025-12-20 12:51:00 +0100" endDate="2025-12-20 14:50:16 +0100" average="140.139" \
minimum="75" maximum="157" unit="count/min"/>
  <WorkoutRoute sourceName="Apple Watch de Nicolas" sourceVersion="26.2" \
creationDate="2025-12-20 14:51:25 +0100" startDate="2025-12-20 12:51:00 +0100" \
endDate="2025-12-20 14:50:16 +0100">
   <MetadataEntry key="HKMetadataKeySyncVersion" value="2"/>
   <FileReference path="/workout-routes/route_2025-12-20_2.50pm.gpx"/>
  </WorkoutRoute>
 </Workout>
"""


def _one_workout(tmp_path: Path, workout: str) -> pd.DataFrame:
    xml = tmp_path / "nicolas" / "export.xml"
    xml.parent.mkdir()
    xml.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="fr_FR">\n'
        f' <ExportDate value="2025-12-21 09:00:00 +0100"/>\n{workout}</HealthData>\n'
    )
    source = AppleHealthSource(xml, timezone="Europe/Paris")
    try:
        return source.records
    finally:
        source.close()


def test_a_workout_of_ios_26_has_its_statistics_heart_rate_energy_and_distance(
    tmp_path: Path,
) -> None:
    """The figures iOS 16 on writes as WorkoutStatistics: the heart rate's average and maximum,
    the active energy and the distance, exactly as written (km in metres); the segment's own
    statistics and the types a workout has no measure for (steps, power) are not read."""
    from ohx_dagster.core.times import to_us
    from ohx_dagster.fhir.validation import validate_resources
    from ohx_dagster.fhir.workouts import workout_resources

    (row,) = _one_workout(tmp_path, IOS26_RUN).to_dict("records")
    assert row["ts"] == utc("2025-12-20 14:50:16 +0100") and row["utc_offset_min"] == 60
    assert row["context"] == "Running" and row["value"] == 119.2710362156232
    assert list(row["samples"]) == [1389.98, 16.1244 * 1000, 140.139, 157.0]  # km in metres
    config = HealthSyncConfig("nicolas", "apple_health", timezone="Europe/Paris")
    panel, *members = workout_resources(row | {"ts_us": to_us(row["ts"])}, config)
    values = {m["code"]["coding"][0]["code"]: m.get("valueQuantity", {}).get("value")
              for m in members}  # fmt: skip
    assert values["55425-3"] == 140.139 and values["55426-1"] == 157
    assert values["55424-6"] == 1389.98
    assert [p for p in validate_resources([panel, *members]) if "Device/" not in p.message] == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (('unit="count/min"', 'unit="Hz"'), "unit"),
        (('average="140.139"', 'average="lots"'), "average"),
        (('average="140.139"', 'average="170"'), "mean_heart_rate"),  # above its maximum
    ],
)
def test_a_workout_statistic_not_as_healthkit_writes_it_is_named(
    tmp_path: Path, change: tuple[str, str], named: str
) -> None:
    with pytest.raises(ValidationError) as failed:
        _one_workout(tmp_path, IOS26_RUN.replace(*change))
    message = str(failed.value)
    assert message.startswith(named) and "\n" not in message
