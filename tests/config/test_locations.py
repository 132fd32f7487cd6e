"""Export sources without a shared disk: OHX_FITABASE_DIR, OHX_APPLE_HEALTH_EXPORT and
OHX_POLAR_CSV may name s3:// locations, read through fsspec from moto's S3 running as a real HTTP
server (tests/support/s3_test_server.py), and give exactly the records the same files give from a
local
disk; a missing, empty or unreachable location is one line naming its setting."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from apple_health_ecg import ECG_MEMBER, write_apple_ecg
from s3_test_server import S3Server

from ohx_dagster.config.locations import location, split_locations
from ohx_dagster.core.errors import ConfigError, OhxError, ValidationError
from ohx_dagster.providers.apple_health import AppleHealthSource
from ohx_dagster.providers.fitabase import FitabaseSource, parse_dirs
from ohx_dagster.providers.polar import PolarH10Source
from resources import SourcesResource


def upload(s3: S3Server, bucket: str, key: str, body: bytes) -> str:
    s3.client().put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def one_line(error: BaseException, setting: str) -> str:
    text = str(error)
    assert "\n" not in text and setting in text, text
    return text


def test_several_locations_split_on_the_path_separator_but_not_on_a_scheme() -> None:
    assert split_locations("s3://a/x:/data/y: :s3://b") == ["s3://a/x", "/data/y", "s3://b"]
    assert split_locations("/data/y") == ["/data/y"]
    assert isinstance(location("~/exports", "OHX_FITABASE_DIR"), Path)
    with pytest.raises(ConfigError, match="OHX_POLAR_CSV is empty"):
        location("  ", "OHX_POLAR_CSV")


def test_a_fitabase_export_in_a_bucket_reads_like_the_local_one(
    s3: S3Server, bucket: str, fitabase_dir: Path, shared_data: Path
) -> None:
    for path in fitabase_dir.glob("*.csv"):
        upload(s3, bucket, f"exports/fitabase/{path.name}", path.read_bytes())
    may = shared_data / "fitabase-may"
    for path in may.glob("*.csv"):
        upload(s3, bucket, f"exports/may/{path.name}", path.read_bytes())
    local = FitabaseSource([fitabase_dir, may], "America/Chicago")
    # Both prefixes in one variable, as OHX_FITABASE_DIR gives them.
    setting = f"s3://{bucket}/exports/fitabase:s3://{bucket}/exports/may/"
    remote = SourcesResource(fitabase_dir=setting, fitabase_tz="America/Chicago").get("fitabase")
    records = remote.reader.records
    assert len(local.records) > 10_000
    pd.testing.assert_frame_equal(records, local.records)
    assert [str(d) for d in parse_dirs(setting)] == [
        f"s3://{bucket}/exports/fitabase",
        f"s3://{bucket}/exports/may",
    ]


def test_an_apple_health_zip_and_an_unzipped_export_in_a_bucket_read_like_local_ones(
    s3: S3Server, bucket: str, shared_data: Path, tmp_path: Path
) -> None:
    export_xml = shared_data / "apple-health" / "export.xml"
    ecg = write_apple_ecg(shared_data / "polar-h10" / "polar_h10.csv")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(export_xml, "apple_health_export/export.xml")
        zipped.writestr(ECG_MEMBER, ecg)
    (tmp_path / "ada").mkdir()
    (tmp_path / "ada" / "export.zip").write_bytes(archive.getvalue())
    local = AppleHealthSource(tmp_path / "ada" / "export.zip")

    url = upload(s3, bucket, "people/ada/export.zip", archive.getvalue())
    from_zip = AppleHealthSource(url)
    assert from_zip.user_id == local.user_id == "ada"  # the export's folder, as on a disk
    pd.testing.assert_frame_equal(from_zip.records, local.records)
    assert (from_zip.records["data_type"] == "ecg").sum() == 1

    # The archive unzipped into a prefix: export.xml with electrocardiograms/ beside it.
    xml = upload(s3, bucket, "people/bo/export.xml", export_xml.read_bytes())
    upload(s3, bucket, "people/bo/electrocardiograms/ecg_2024-05-05.csv", ecg)
    unzipped = AppleHealthSource(xml, user_id="ada")
    pd.testing.assert_frame_equal(unzipped.records, local.records)


def test_a_polar_recording_in_a_bucket_reads_like_the_local_one(
    s3: S3Server, bucket: str, shared_data: Path
) -> None:
    recording = shared_data / "polar-h10" / "polar_h10.csv"
    url = upload(s3, bucket, "polar/polar_h10.csv", recording.read_bytes())
    local = PolarH10Source(recording)
    remote = PolarH10Source(url)
    assert len(local.records) > 1000
    pd.testing.assert_frame_equal(remote.records, local.records)


def test_a_missing_or_empty_location_is_one_line_naming_its_setting(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError) as missing:
        FitabaseSource([f"s3://{bucket}/nothing-here"], "UTC")
    assert "expected an existing directory" in one_line(missing.value, "OHX_FITABASE_DIR")
    upload(s3, bucket, "other/README.txt", b"not an export")
    with pytest.raises(ValidationError) as empty:
        FitabaseSource([f"s3://{bucket}/other"], "UTC")
    assert "heartrate_seconds_merged.csv" in one_line(empty.value, "OHX_FITABASE_DIR")
    with pytest.raises(ValidationError) as no_export:
        AppleHealthSource(f"s3://{bucket}/people/nobody/export.zip")
    one_line(no_export.value, "OHX_APPLE_HEALTH_EXPORT")
    with pytest.raises(ValidationError) as no_recording:
        PolarH10Source(f"s3://{bucket}/polar/none.csv")
    one_line(no_recording.value, "OHX_POLAR_CSV")
    # A bucket that does not exist, and an endpoint where nothing listens.
    with pytest.raises(OhxError) as no_bucket:
        PolarH10Source("s3://no-such-bucket-ohx/polar.csv")
    one_line(no_bucket.value, "OHX_POLAR_CSV")
    monkeypatch.setenv("OHX_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ConfigError) as unreachable:
        FitabaseSource([f"s3://{bucket}/elsewhere"], "UTC")
    assert "cannot be read" in one_line(unreachable.value, "OHX_FITABASE_DIR")
