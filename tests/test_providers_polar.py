"""The real Polar H10 recording through the store and out as FHIR R5: ECG DiagnosticReport linked
to its heart rate, RR intervals as an irregular series (SampledData offsets), samples as in the
CSV."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ohx_dagster.fhir.ecg import read_waveform
from ohx_dagster.fhir.publish import partition_resources, utc_day
from ohx_dagster.fhir.series import read_series
from ohx_dagster.fhir.validate import validate_resources
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.providers.polar import PolarH10Source
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import sync_partition

DAY = date(2024, 5, 5)


def _code(resource: dict) -> str | None:
    return resource["code"]["coding"][0]["code"] if "code" in resource else None


@pytest.fixture(scope="module")
def polar_csv(shared_data: Path) -> Path:
    return shared_data / "polar-h10" / "polar_h10.csv"


@pytest.fixture(scope="module")
def published(polar_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('polar') / 'ohx.db'}")
    source = PolarH10Source(polar_csv)
    report = sync_partition(source, store, utc_day(DAY), now=datetime(2025, 1, 1, tzinfo=UTC))
    yield report, partition_resources(store, "polar", DAY)
    store.dispose()


def test_source_follows_the_protocol_and_reads_every_row(polar_csv: Path) -> None:
    source = PolarH10Source(polar_csv)
    assert isinstance(source, HealthSource)
    assert 129.5 < source.sampling_rate_hz() < 131.0


def test_recording_is_stored_whole(published) -> None:
    report, _ = published
    assert report.records_by_type == {"ecg": 1, "heart_rate": 600, "rr_intervals": 798}


def test_every_resource_validates(published) -> None:
    _, resources = published
    assert validate_resources(resources) == []


def test_ecg_report_links_the_waveform_and_the_heart_rate(published, polar_csv: Path) -> None:
    _, resources = published
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    (report,) = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert report["category"][0]["coding"][0]["code"] == "EC"
    results = [by_ref[ref["reference"]] for ref in report["result"]]
    waveform, heart_rate = results[0], results[1:]
    assert waveform["code"]["coding"][0]["code"] == "131328"
    assert heart_rate and all(o["code"]["coding"][0]["code"] == "8867-4" for o in heart_rate)
    csv = pd.read_csv(polar_csv)
    start, rate, samples = read_waveform(waveform)
    assert start == csv["time_ns"].iloc[0] // 1000
    np.testing.assert_allclose(samples, csv["ecg"].to_numpy() * 1000.0, rtol=0, atol=1e-9)
    span_s = (csv["time_ns"].iloc[-1] - csv["time_ns"].iloc[0]) / 1e9
    assert rate == pytest.approx((len(csv) - 1) / span_s, rel=1e-9)
    sampled = waveform["valueSampledData"]
    assert sampled["origin"]["code"] == "uV" and sampled["factor"] == 1
    assert waveform["device"]["reference"] in by_ref


def test_heart_rate_and_rr_read_back_equal_the_csv(published, polar_csv: Path) -> None:
    _, resources = published
    csv = pd.read_csv(polar_csv)
    csv["ts_us"] = csv["time_ns"] // 1000
    for code, column in (("8867-4", "hr"), ("8637-1", "rr")):
        series = [r for r in resources if _code(r) == code and "valueSampledData" in r]
        assert len(series) == 1  # ten minutes: one hour, one Observation
        ts, values = read_series(series[0])
        expected = csv[csv[column].notna()]
        np.testing.assert_array_equal(ts, expected["ts_us"].to_numpy())
        np.testing.assert_array_equal(values, expected[column].to_numpy())
    rr = next(r for r in resources if _code(r) == "8637-1")
    sampled = rr["valueSampledData"]
    assert "offsets" in sampled and "interval" not in sampled  # premature beats: irregular
    rr_values = np.array(sampled["data"].split(), dtype=float)
    assert rr_values.min() < 450 and rr_values.max() > 1300
