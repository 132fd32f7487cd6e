"""Polar recordings: the real H10 recording in both layouts (the converted ECGLogger CSV, and the
same recording written as Polar Sensor Logger files), its heart rate written as the HR and ACC
files of a Verity Sense session, every way a file can be wrong (one line naming the file, the line
and what was expected), and the recording through the store and out as FHIR R5 with the ECG linked
to its heart rate.

ohx_dagster/providers/polar/SOURCE.md says where every layout fact and fixture comes from."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from ohx_dagster.core.errors import ConfigError, ValidationError
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.fhir.ecg import read_waveform
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.series import read_series
from ohx_dagster.fhir.validation import validate_resources
from ohx_dagster.providers.base import HealthSource, Windowed
from ohx_dagster.providers.polar import PolarFileError, PolarFileSource, PolarH10Source
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.publish.partitions import publish_partition
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

DAY = date(2024, 5, 5)
# detectPVC's own tests read the recording's clock in America/Chicago (09:50 local = 14:50Z).
ZONE = "America/Chicago"
H10 = "Polar_H10_9EE99320_20240505_095000"
H10_DEVICE = "polar-h10-9EE99320"
# The Verity Sense session `write_verity_sense` writes: a made-up device id, its phone set to
# UTC+3 (Istanbul, no DST in 2024) so that a second zone is read; the stamp is its first HR row.
VERITY = "Polar_Sense_0A1B2C3D_20240505_175000"
VERITY_DEVICE = "polar-sense-0A1B2C3D"
VERITY_ZONE = "Europe/Istanbul"
VERITY_HR_HEADER = "Phone timestamp;HR [bpm]"  # the older layout, as Verity Sense files have it
ACC_HEADER = "Phone timestamp;sensor timestamp [ns];X [mg];Y [mg];Z [mg]"
# HR rows written as 0 bpm (no skin contact) instead of the recording's value: synthetic.
NO_CONTACT = np.r_[0:15, 300:330]
ACC_SAMPLES, ACC_RATE_HZ = 260, 52
SENSOR_EPOCH_NS = 946_684_800_000_000_000  # 2000-01-01T00:00:00Z in Unix nanoseconds
ECG_HEADER = "Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]"
HR_HEADER = "Phone timestamp;HR [bpm];HRV [ms];Breathing interval [rpm];"
RR_HEADER = "Phone timestamp;RR-interval [ms]"


def _code(resource: dict) -> str | None:
    return resource["code"]["coding"][0]["code"] if "code" in resource else None


@pytest.fixture(scope="module")
def polar_csv(shared_data: Path) -> Path:
    return shared_data / "polar-h10" / "polar_h10.csv"


@pytest.fixture(scope="module")
def csv(polar_csv: Path) -> pd.DataFrame:
    """The converted recording as plain pandas reads it: the reference every layout must match."""
    return pd.read_csv(polar_csv)


def _phone_times(ns: np.ndarray, zone: str) -> tuple[pd.Series, np.ndarray]:
    """Epoch ns as phone times (`zone` wall clock, to the ms) and as a sensor clock set to it."""
    utc = pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True))
    local = utc.tz_convert(zone)
    offset_ns = (
        local.tz_localize(None).as_unit("ns").asi8 - utc.tz_localize(None).as_unit("ns").asi8
    )
    phone = pd.Series(local.strftime("%Y-%m-%dT%H:%M:%S.%f")).str[:-3]
    return phone, ns + offset_ns - SENSOR_EPOCH_NS


def write_sensor_logger(csv: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The real recording written as the Polar Sensor Logger files an H10 session produces.

    Phone times: the recording's instants as Chicago wall-clock times, truncated to the
    millisecond. Sensor clock: set to local time, nanoseconds from 2000-01-01. ECG in whole uV
    (the CSV holds mV with three decimals). HR in the newer layout, rows stopping after the HR.
    """
    folder.mkdir(parents=True, exist_ok=True)
    phone, sensor = _phone_times(csv["time_ns"].to_numpy(dtype="int64"), ZONE)
    relative_ms = (sensor - sensor[0]) / 1e6
    uv = np.rint(csv["ecg"].to_numpy() * 1000).astype("int64")
    files = {stream: folder / f"{H10}_{stream}.txt" for stream in ("ECG", "HR", "RR")}
    rows = [
        f"{p};{s};{m:.6f};{u}" for p, s, m, u in zip(phone, sensor, relative_ms, uv, strict=True)
    ]
    files["ECG"].write_text("\n".join([ECG_HEADER, *rows]) + "\n")
    for stream, column, header in (("HR", "hr", HR_HEADER), ("RR", "rr", RR_HEADER)):
        has = csv[column].notna().to_numpy()
        lines = [f"{p};{int(v)}" for p, v in zip(phone[has], csv[column][has], strict=True)]
        files[stream].write_text("\n".join([header, *lines]) + "\n")
    return files


def write_verity_sense(csv: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The real recording's heart rate written as the HR and ACC files of a Verity Sense session.

    No Verity Sense recording is in ../shared/data: the HR rows are the H10's 600 HR values at
    their own instants, as a phone at UTC+3 writes them, in the older HR layout (2 fields), with
    the rows of NO_CONTACT written as 0 bpm. The ACC file, whose samples are only checked and
    counted, is synthetic: ACC_SAMPLES samples at ACC_RATE_HZ from the recording's first instant
    on a sensor clock set to local time, a sensor lying still (0, 0, 1000 mg).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = csv[csv["hr"].notna()]
    phone, _ = _phone_times(rows["time_ns"].to_numpy(dtype="int64"), VERITY_ZONE)
    bpm = rows["hr"].to_numpy(dtype="int64")
    bpm[NO_CONTACT] = 0
    files = {stream: folder / f"{VERITY}_{stream}.txt" for stream in ("HR", "ACC")}
    lines = [f"{p};{v}" for p, v in zip(phone, bpm, strict=True)]
    files["HR"].write_text("\n".join([VERITY_HR_HEADER, *lines]) + "\n")
    start_ns = int(csv["time_ns"].iloc[0])
    acc_ns = start_ns + np.arange(ACC_SAMPLES, dtype="int64") * 1_000_000_000 // ACC_RATE_HZ
    phone, sensor = _phone_times(acc_ns, VERITY_ZONE)
    lines = [f"{p};{s};0;0;1000" for p, s in zip(phone, sensor, strict=True)]
    files["ACC"].write_text("\n".join([ACC_HEADER, *lines]) + "\n")
    return files


@pytest.fixture(scope="module")
def verity_folder(csv: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sensor-logger") / "verity-sense"
    write_verity_sense(csv, folder)
    (folder / "README.md").write_text("Files written by tests/providers/test_providers_polar.py\n")
    return folder


@pytest.fixture(scope="module")
def h10_folder(csv: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sensor-logger") / "h10"
    write_sensor_logger(csv, folder)
    return folder


def _floor_ms_us(ns: np.ndarray) -> np.ndarray:
    """Epoch ns as the epoch us a millisecond phone time keeps."""
    return ns // 1_000_000 * 1000


def _us(stamps: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(stamps).as_unit("us").asi8


def _batch(source: PolarFileSource, kind: HealthDataType) -> pd.DataFrame:
    records = source.records
    return records[records["data_type"] == kind.value].reset_index(drop=True)


# --- the real recording in both layouts -------------------------------------------------------


def test_converted_csv_is_one_ecg_record_with_its_heart_rate_and_rr(
    polar_csv: Path, csv: pd.DataFrame
) -> None:
    source = PolarH10Source(polar_csv)  # the name the resources import
    (ecg,) = _batch(source, HealthDataType.ECG).itertuples()
    np.testing.assert_allclose(ecg.samples, csv["ecg"].to_numpy() * 1000.0, rtol=0, atol=1e-9)
    span_s = (csv["time_ns"].iloc[-1] - csv["time_ns"].iloc[0]) / 1e9
    assert ecg.sampling_rate_hz == pytest.approx((len(csv) - 1) / span_s, rel=1e-12)
    assert 130.1 < ecg.sampling_rate_hz < 130.2  # not the nominal 130 Hz
    assert (ecg.user_id, ecg.device_id, ecg.utc_offset_min) == ("polar_h10", "polar-h10", 0)
    for kind, column in ((HealthDataType.HEART_RATE, "hr"), (HealthDataType.RR_INTERVALS, "rr")):
        batch, rows = _batch(source, kind), csv[csv[column].notna()]
        np.testing.assert_array_equal(_us(batch["ts"]), rows["time_ns"].to_numpy() // 1000)
        np.testing.assert_array_equal(batch["value"], rows[column].to_numpy())
    assert source.summary.rows == {"converted": 78_096}


def test_sensor_logger_files_of_the_real_recording_read_as_the_converted_csv(
    h10_folder: Path, polar_csv: Path, csv: pd.DataFrame
) -> None:
    logged = PolarFileSource(h10_folder, timezone=ZONE)
    converted = PolarFileSource(polar_csv)
    assert [u.user_id for u in logged.discover_users()] == [H10_DEVICE]
    assert logged.discover_users()[0].timezone == ZONE
    (ecg,) = _batch(logged, HealthDataType.ECG).itertuples()
    (reference,) = _batch(converted, HealthDataType.ECG).itertuples()
    # The same samples (whole uV = the CSV's mV x 1000), rate and duration: the sensor clock
    # steps exactly as the CSV's clock does.
    np.testing.assert_allclose(ecg.samples, reference.samples, rtol=0, atol=1e-9)
    assert ecg.sampling_rate_hz == pytest.approx(reference.sampling_rate_hz, rel=1e-12)
    assert ecg.duration_s == pytest.approx(reference.duration_s, rel=1e-12)
    assert _us(pd.Series([ecg.ts]))[0] == _floor_ms_us(csv["time_ns"].to_numpy())[0]
    assert (ecg.device_id, ecg.user_id, ecg.unit) == (H10_DEVICE, H10_DEVICE, "uV")
    assert ecg.utc_offset_min == -300  # CDT: the phone's local offset is kept
    for kind in (HealthDataType.HEART_RATE, HealthDataType.RR_INTERVALS):
        got, want = _batch(logged, kind), _batch(converted, kind)
        np.testing.assert_array_equal(got["value"], want["value"])
        np.testing.assert_array_equal(_us(got["ts"]), _us(want["ts"]) // 1000 * 1000)
        assert set(got["device_id"]) == {H10_DEVICE}
    assert len(_batch(logged, HealthDataType.HEART_RATE)) == 600
    assert len(_batch(logged, HealthDataType.RR_INTERVALS)) == 798
    summary = logged.summary
    assert summary.recordings == [H10]
    assert summary.rows == {"ECG": 78_096, "HR": 600, "RR": 798}
    assert summary.ecg_runs == 1


def test_an_ecg_gap_starts_a_new_record(tmp_path: Path, h10_folder: Path) -> None:
    lines = (h10_folder / f"{H10}_ECG.txt").read_text().splitlines()
    # 1000 samples, of which the 20 from sample 500 never arrived (a lost Bluetooth packet).
    kept = [lines[0], *lines[1:501], *lines[521:1001]]
    (tmp_path / f"{H10}_ECG.txt").write_text("\n".join(kept) + "\n")
    source = PolarFileSource(tmp_path, timezone=ZONE)
    ecg = _batch(source, HealthDataType.ECG)
    assert [len(s) for s in ecg["samples"]] == [500, 480]
    assert ecg["sampling_rate_hz"].between(130.1, 130.2).all()
    gap_us = _us(ecg["ts"])[1] - _us(ecg["ts"])[0]
    assert 520 / 130.2 < gap_us / 1e6 < 520 / 130.1 + 0.002  # the second run starts after the gap
    assert source.summary.ecg_runs == 2


# --- a Verity Sense session (HR and ACC files written from the real recording) ----------------


def test_verity_sense_heart_rate_and_accelerometer(verity_folder: Path, csv: pd.DataFrame) -> None:
    source = PolarFileSource(verity_folder, timezone=VERITY_ZONE)
    hr_file = verity_folder / f"{VERITY}_HR.txt"
    rows = [line.split(";") for line in hr_file.read_text().splitlines()[1:]]
    measured = [(t, int(v)) for t, v in rows if v != "0"]
    heart_rate = _batch(source, HealthDataType.HEART_RATE)
    assert heart_rate["value"].tolist() == [v for _, v in measured]
    expected = pd.DatetimeIndex([t for t, _ in measured]).tz_localize(VERITY_ZONE)
    np.testing.assert_array_equal(_us(heart_rate["ts"]), expected.as_unit("us").asi8)
    # The recording's own heart rate and instants (to the ms), less the rows of no contact.
    real = csv[csv["hr"].notna()]
    np.testing.assert_array_equal(heart_rate["value"], np.delete(real["hr"], NO_CONTACT))
    np.testing.assert_array_equal(
        _us(heart_rate["ts"]), np.delete(_floor_ms_us(real["time_ns"].to_numpy()), NO_CONTACT)
    )
    assert set(heart_rate["device_id"]) == {VERITY_DEVICE}
    assert set(heart_rate["utc_offset_min"]) == {180}
    assert set(source.records["data_type"]) == {"heart_rate"}  # nothing from the ACC file
    summary = source.summary
    assert summary.no_contact == len(rows) - len(measured) == len(NO_CONTACT) == 45
    assert summary.rows == {"HR": 600, "ACC": 260}
    assert summary.not_stored == {"ACC samples": 260}
    assert summary.skipped == {"README.md": "not a Polar Sensor Logger file name"}
    text = summary.lines()
    assert (
        "ACC samples: 260 read to check the layout, not stored (no data type for acceleration)"
        in text
    )
    assert "HR: 45 rows of 0 bpm (no skin contact), not stored" in text


def test_a_folder_with_two_recordings(
    tmp_path: Path, h10_folder: Path, verity_folder: Path
) -> None:
    for path in [*h10_folder.iterdir(), *verity_folder.glob("Polar_*.txt")]:
        shutil.copy(path, tmp_path / path.name)
    # One zone per source: both phones in Chicago for this test.
    source = PolarFileSource(tmp_path, timezone=ZONE)
    assert source.summary.recordings == [H10, VERITY]
    assert [u.user_id for u in source.discover_users()] == [H10_DEVICE, VERITY_DEVICE]
    counts = source.records.groupby(["user_id", "device_id", "data_type"]).size().to_dict()
    assert counts == {
        (H10_DEVICE, H10_DEVICE, "ecg"): 1,
        (H10_DEVICE, H10_DEVICE, "heart_rate"): 600,
        (H10_DEVICE, H10_DEVICE, "rr_intervals"): 798,
        (VERITY_DEVICE, VERITY_DEVICE, "heart_rate"): 555,
    }
    one_person = PolarFileSource(tmp_path, timezone=ZONE, user_id="patient-7")
    assert [u.user_id for u in one_person.discover_users()] == ["patient-7"]
    assert set(one_person.records["user_id"]) == {"patient-7"}
    assert set(one_person.records["device_id"]) == {H10_DEVICE, VERITY_DEVICE}


# --- layout details ----------------------------------------------------------------------------


def _hr_file(folder: Path, header: str, *rows: str) -> Path:
    path = folder / f"{H10}_HR.txt"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_locale_decimals_and_ragged_heart_rate_rows(tmp_path: Path) -> None:
    # Rows as third-party readers quote them: HRV and breathing present or not, `,` or `.`.
    _hr_file(
        tmp_path,
        HR_HEADER,
        "2025-11-17T17:26:16.058;90",
        "2025-11-17T17:26:17.052;94;12,1",
        "2025-11-17T17:26:18.049;65;5.4",
        "2025-11-17T17:26:19.047;66;42,5;14,2;",
    )
    source = PolarFileSource(tmp_path, timezone="Europe/Lisbon")
    assert _batch(source, HealthDataType.HEART_RATE)["value"].tolist() == [90, 94, 65, 66]
    assert source.summary.not_stored == {"HRV [ms]": 3, "Breathing interval [rpm]": 1}
    # The older layout: RR intervals after the HR, as many as the notification carried.
    _hr_file(tmp_path, "Phone timestamp;HR [bpm]", "2025-11-17T17:26:16.058;90;652;648")
    source = PolarFileSource(tmp_path, timezone="Europe/Lisbon")
    assert _batch(source, HealthDataType.HEART_RATE)["value"].tolist() == [90]
    assert source.summary.not_stored == {"RR-interval in an HR row": 2}


def test_rr_rows_of_one_notification_keep_their_own_instants(tmp_path: Path) -> None:
    (tmp_path / f"{H10}_RR.txt").write_text(
        f"{RR_HEADER}\n2024-05-05T09:50:00.200;800\n2024-05-05T09:50:02.500;700\n"
        "2024-05-05T09:50:02.500;650\n2024-05-05T09:50:02.500;900\n"
    )
    rr = _batch(PolarFileSource(tmp_path, timezone=ZONE), HealthDataType.RR_INTERVALS)
    assert rr["value"].tolist() == [800, 700, 650, 900]
    local = [t.tz_convert(ZONE).strftime("%H:%M:%S.%f")[:-3] for t in rr["ts"]]
    assert local == ["09:50:00.200", "09:50:00.950", "09:50:01.600", "09:50:02.500"]


def test_clock_changes_are_read_in_the_phone_zone(tmp_path: Path) -> None:
    path = tmp_path / f"{H10}_RR.txt"
    # 2024-10-27 in Amsterdam: 02:00-03:00 happens twice; the row order tells them apart.
    path.write_text(f"{RR_HEADER}\n2024-10-27T02:59:59.500;800\n2024-10-27T02:00:00.300;800\n")
    rr = _batch(PolarFileSource(tmp_path, timezone="Europe/Amsterdam"), HealthDataType.RR_INTERVALS)
    assert rr["utc_offset_min"].tolist() == [120, 60]
    assert (rr["ts"].iloc[1] - rr["ts"].iloc[0]) == pd.Timedelta("800ms")
    # 2024-03-31 02:30 does not exist in Amsterdam: the zone is not the phone's.
    path.write_text(f"{RR_HEADER}\n2024-03-31T01:59:59.500;800\n2024-03-31T02:30:00.300;800\n")
    with pytest.raises(PolarFileError) as failed:
        _ = PolarFileSource(tmp_path, timezone="Europe/Amsterdam").records
    assert str(failed.value) == (
        f"{H10}_RR.txt line 3: phone time 2024-03-31T02:30:00.300 is skipped or repeated by a "
        "clock change in Europe/Amsterdam (expected the zone the phone was set to during the "
        "recording)"
    )


# --- files that are not in their layout --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            f"{H10}_ECG.txt",
            "x;y\n",
            f"{H10}_ECG.txt line 1: header 'x;y' is not a Polar Sensor Logger ECG header "
            f"(expected '{ECG_HEADER}')",
        ),
        (
            f"{H10}_RR.txt",
            "Phone timestamp,RR-interval [ms]\n",
            f"{H10}_RR.txt line 1: header 'Phone timestamp,RR-interval [ms]' is not a Polar "
            f"Sensor Logger RR header (expected '{RR_HEADER}')",
        ),
        (
            f"{H10}_HR.txt",
            "Phone timestamp;HR [bpm];RR [ms]\n",
            f"{H10}_HR.txt line 1: header 'Phone timestamp;HR [bpm];RR [ms]' is not a Polar "
            "Sensor Logger HR header (expected 'Phone timestamp;HR [bpm];HRV [ms];Breathing "
            "interval [rpm]' or 'Phone timestamp;HR [bpm]')",
        ),
        (
            "polar_h10.csv",
            "time,ecg,hr,rr\n1714920600006020096,-0.098,,\n",
            "polar_h10.csv line 1: header 'time,ecg,hr,rr' is not a converted ECGLogger header "
            "(expected 'time_ns,time_utc,ecg,hr,rr')",
        ),
        (
            "ecg.txt",
            f"{ECG_HEADER}\n",
            "ecg.txt line 1: a Polar Sensor Logger ECG file renamed to 'ecg.txt' (expected its "
            "original name Polar_<model>_<device id>_<yyyymmdd>_<hhmmss>_<STREAM>.txt: the "
            "device id comes from it)",
        ),
    ],
)
def test_a_wrong_header_is_one_line_naming_file_line_and_layout(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolarFileError) as failed:
        PolarFileSource(path, timezone=ZONE)
    assert str(failed.value) == message


@pytest.mark.parametrize(
    ("stream", "text", "message"),
    [
        (
            "RR",
            f"{RR_HEADER}\n2024-05-05T09:50:00.436;421\n2024-05-05T09:50:01.557;379;12\n",
            f"line 3: 3 fields (expected 2 fields separated by ';' as in the header '{RR_HEADER}')",
        ),
        (
            "RR",
            f"{RR_HEADER}\n2024-05-05T09:50:00.436;abc\n",
            "line 2: RR-interval [ms] 'abc' is not a number (expected a number such as 812, "
            "12.1 or 12,1)",
        ),
        (
            "RR",
            f"{RR_HEADER}\n2024-05-05T09:50:00.436;421\n2024-05-05T09:50:01.557;0\n",
            "line 3: RR-interval [ms] 0 is outside 150..3000 ms (expected a value a working "
            "sensor measures for rr_intervals)",
        ),
        (
            "RR",
            f"{RR_HEADER}\n2024-05-05T14:50:00.436Z;421\n",
            "line 2: Phone timestamp '2024-05-05T14:50:00.436Z' is not a phone time (expected "
            "local time as YYYY-MM-DDThh:mm:ss.mmm, without an offset)",
        ),
        (
            "RR",
            f"{RR_HEADER}\n2024-05-05T09:50:00.436;421\n\n2024-05-05T09:50:01.557;379\n",
            f"line 3: 1 field (expected 2 fields separated by ';' as in the header '{RR_HEADER}')",
        ),
        (
            "HR",
            f"{HR_HEADER}\n2025-11-17T17:26:16.058;90;12.1.5\n",
            "line 2: HRV [ms] '12.1.5' is not a number (expected a number such as 812, 12.1 or "
            "12,1)",
        ),
        (
            "HR",
            f"{HR_HEADER}\n2025-11-17T17:26:16.058;90;12,1;14;7\n",
            "line 2: 5 fields (expected 2 to 4 fields separated by ';' as in the header "
            "'Phone timestamp;HR [bpm];HRV [ms];Breathing interval [rpm]')",
        ),
        (
            "ECG",
            f"{ECG_HEADER}\n2024-05-05T09:50:00.006;768149400006020096;0.0;-98\n"
            "2024-05-05T09:50:00.013;768149400013702400;7.682;200000\n",
            "line 3: ecg [uV] 200000 is outside -100000..100000 uV (expected a value a working "
            "sensor measures for ecg)",
        ),
        (
            "ECG",
            f"{ECG_HEADER}\n2024-05-05T09:50:00.006;768149400006020096;0.0;\n",
            "line 2: ecg [uV] is empty (expected a number such as 812, 12.1 or 12,1)",
        ),
        (
            "ECG",
            f"{ECG_HEADER}\n2024-05-05T09:50:00.006;-768149400006020096;0.0;-98\n",
            "line 2: sensor timestamp [ns] '-768149400006020096' is not a whole number "
            "(expected a count of nanoseconds such as 768149460000000000)",
        ),
        (
            "ACC",
            "Phone timestamp;sensor timestamp [ns];X [mg];Y [mg];Z [mg]\n"
            "2024-05-05T17:50:00.006;768246600006020096;0;0\n",
            "line 2: 4 fields (expected 5 fields separated by ';' as in the header "
            "'Phone timestamp;sensor timestamp [ns];X [mg];Y [mg];Z [mg]')",
        ),
        ("RR", "", f"line 1: the file is empty (expected the header '{RR_HEADER}')"),
    ],
)
def test_a_wrong_row_is_one_line_naming_file_line_and_value(
    tmp_path: Path, stream: str, text: str, message: str
) -> None:
    (tmp_path / f"{H10}_{stream}.txt").write_text(text)
    if text:
        source = PolarFileSource(tmp_path, timezone=ZONE)  # the header is right
    with pytest.raises(PolarFileError) as failed:
        _ = PolarFileSource(tmp_path, timezone=ZONE).records
    assert str(failed.value) == f"{H10}_{stream}.txt {message}"
    assert "\n" not in str(failed.value)
    if text:
        assert source.discover_users()  # users are known without reading the rows


def test_a_file_that_is_not_text_names_its_line(tmp_path: Path) -> None:
    (tmp_path / f"{H10}_RR.txt").write_bytes(
        f"{RR_HEADER}\n2024-05-05T09:50:00.436;421\n".encode() + b"\xff\xfe;12\n"
    )
    with pytest.raises(PolarFileError) as failed:
        _ = PolarFileSource(tmp_path, timezone=ZONE).records
    assert str(failed.value) == (
        f"{H10}_RR.txt line 3: byte 0xff is not UTF-8 text (expected a text file)"
    )


# --- configuration -----------------------------------------------------------------------------


def test_sensor_logger_files_need_the_phone_zone(h10_folder: Path, polar_csv: Path) -> None:
    for path in (h10_folder, h10_folder / f"{H10}_HR.txt"):
        with pytest.raises(ConfigError, match="phone's IANA zone"):
            PolarFileSource(path)
    with pytest.raises(ValidationError, match="timezone"):
        PolarFileSource(h10_folder, timezone="Chicago")
    # The converted recording holds UTC instants: no zone needed; a zone sets the local offset.
    assert set(PolarFileSource(polar_csv).records["utc_offset_min"]) == {0}
    assert set(PolarFileSource(polar_csv, timezone=ZONE).records["utc_offset_min"]) == {-300}


def test_a_folder_without_a_recording_fails_loudly(tmp_path: Path, verity_folder: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here\n")
    (tmp_path / "MARKER_20240505_175100.txt").write_text("Phone timestamp;Marker start/stop\n")
    (tmp_path / f"{VERITY}_PPG.txt").write_text("x\n")
    with pytest.raises(ValidationError, match="a folder holding a Polar Sensor Logger recording"):
        PolarFileSource(tmp_path, timezone=ZONE)
    # A Polar file that lost its name (published copies are sometimes shortened so) cannot say
    # which sensor it is.
    shutil.copy(verity_folder / f"{VERITY}_HR.txt", tmp_path / "Polar_Sense_HR.txt")
    with pytest.raises(ValidationError, match=r"'Polar_Sense_HR\.txt'.*Polar_<model>_<device id>"):
        PolarFileSource(tmp_path, timezone=ZONE)
    with pytest.raises(ValidationError, match="a Polar recording file or a folder"):
        PolarFileSource(tmp_path / "missing", timezone=ZONE)


# --- through the store and out as FHIR R5, both layouts ---------------------------------------


@pytest.fixture(scope="module", params=["converted", "sensor_logger"])
def published(
    request: pytest.FixtureRequest,
    polar_csv: Path,
    h10_folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """The real recording synced for its day and published; `stamp` maps the CSV's epoch ns to
    the epoch us each layout keeps (the Sensor Logger's phone times hold milliseconds)."""
    if request.param == "converted":
        reader, stamp = PolarFileSource(polar_csv), lambda ns: ns // 1000
    else:
        reader, stamp = PolarFileSource(h10_folder, timezone=ZONE), _floor_ms_us
    source = Windowed(reader, SUPPORTED_TYPES["polar"])  # as resources/sources.py builds it
    assert isinstance(source, HealthSource)
    root = tmp_path_factory.mktemp("polar")
    store = RecordStore(f"sqlite:///{root / 'ohx.db'}")
    now = datetime(2025, 1, 1, tzinfo=UTC)
    report = sync_partition(source, store, DAY, now=now)
    published = publish_partition(
        store,
        FhirOutput(str(root / "fhir")),
        provider="polar",
        key="polar",
        shard=Shard("polar"),
        day=DAY,
        scope=None,
        now=now,
        horizon=timedelta(0),
        validate=validate_resources,
    )
    assert published.invalid_buckets == {}
    resources = [
        orjson.loads(line)
        for path in sorted((root / "fhir").rglob("*.ndjson"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    yield report, resources, stamp
    store.dispose()


def test_recording_is_stored_whole(published) -> None:
    report, _, _ = published
    assert report.records_by_type == {"ecg": 1, "heart_rate": 600, "rr_intervals": 798}
    assert report.failures == {}


def test_every_resource_validates(published) -> None:
    _, resources, _ = published
    assert resources and validate_resources(resources) == []


def test_ecg_report_links_the_waveform_its_heart_rate_and_rr(published, csv: pd.DataFrame) -> None:
    _, resources, stamp = published
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    (report,) = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert report["category"][0]["coding"][0]["code"] == "EC"
    results = [by_ref[ref["reference"]] for ref in report["result"]]
    waveform, linked = results[0], results[1:]
    assert waveform["code"]["coding"][0]["code"] == "131328"
    # The heart rate and the RR intervals recorded with the ECG, and nothing else.
    codes = [o["code"]["coding"][0]["code"] for o in linked]
    assert set(codes) == {"8867-4", "8637-1"}
    start, rate, samples = read_waveform(waveform)
    assert start == stamp(csv["time_ns"].to_numpy())[0]
    np.testing.assert_allclose(samples, csv["ecg"].to_numpy() * 1000.0, rtol=0, atol=1e-9)
    span_s = (csv["time_ns"].iloc[-1] - csv["time_ns"].iloc[0]) / 1e9
    assert rate == pytest.approx((len(csv) - 1) / span_s, rel=1e-9)
    sampled = waveform["valueSampledData"]
    assert sampled["origin"]["code"] == "uV" and sampled["factor"] == 1
    assert waveform["device"]["reference"] in by_ref


def test_heart_rate_and_rr_read_back_equal_the_csv(published, csv: pd.DataFrame) -> None:
    _, resources, stamp = published
    for code, column in (("8867-4", "hr"), ("8637-1", "rr")):
        series = [r for r in resources if _code(r) == code and "valueSampledData" in r]
        assert len(series) == 1  # ten minutes: one hour, one Observation
        ts, values = read_series(series[0])
        expected = csv[csv[column].notna()]
        np.testing.assert_array_equal(ts, stamp(expected["time_ns"].to_numpy()))
        np.testing.assert_array_equal(values, expected[column].to_numpy())
    rr = next(r for r in resources if _code(r) == "8637-1")
    sampled = rr["valueSampledData"]
    assert "offsets" in sampled and "interval" not in sampled  # premature beats: irregular
    rr_values = np.array(sampled["data"].split(), dtype=float)
    assert rr_values.min() < 450 and rr_values.max() > 1300
