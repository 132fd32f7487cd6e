"""A simulated partition with all eight types and every aggregation preference, published as FHIR:
every resource validates (three layers), values read back equal the store, re-runs are identical."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ohx_dagster import aggregate
from ohx_dagster.fhir.ecg import read_waveform
from ohx_dagster.fhir.ndjson import read_ndjson, write_ndjson
from ohx_dagster.fhir.publish import partition_resources, utc_day
from ohx_dagster.fhir.series import read_series
from ohx_dagster.fhir.timefmt import parse_us
from ohx_dagster.fhir.validate import validate_resources
from ohx_dagster.models import AggregationLevel
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import sync_partition

DAY = date(2025, 3, 4)
NOW = datetime(2025, 3, 10, tzinfo=UTC)


def publish_day(store: RecordStore, source: str, day: date) -> list[dict]:
    """What the asset chain does for one partition: aggregates, then partition_resources."""
    zones = {c.user_id: c.zone for c in store.users(source, connected_only=False)}
    store.upsert_aggregates(aggregate.hourly(store.read_records(source, utc_day(day)), zones))
    around = store.read_records(source, aggregate.records_window_for_local_day(day))
    store.upsert_aggregates(aggregate.daily(around, zones, day))
    return partition_resources(store, source, day)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecordStore, list[dict]]:
    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('fhir') / 'ohx.db'}")
    source = SimulatedSource(3, seed=7, clock=lambda: NOW)
    for offset in (-1, 0, 1):
        sync_partition(source, store, utc_day(DAY + timedelta(days=offset)), now=NOW)
    yield store, publish_day(store, "simulated", DAY)
    store.dispose()


def _by_id(resources: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in resources}


def test_partition_has_every_type_and_preference(simulated) -> None:
    store, resources = simulated
    preferences = {c.aggregation for c in store.users("simulated")}
    assert preferences == set(AggregationLevel)
    codes = Counter(c["code"] for r in resources if "code" in r for c in r["code"]["coding"][:1])
    for code in ("8867-4", "55423-8", "8637-1", "85354-9", "29463-7", "8310-5", "59408-5"):
        assert codes[code] > 0, code
    assert codes["41950-7"] >= 1  # daily steps of the daily user
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["DiagnosticReport"] == 3 and kinds["Device"] >= 3


def test_every_resource_of_the_partition_validates(simulated) -> None:
    _, resources = simulated
    problems = validate_resources(resources)
    assert problems == [], "\n".join(map(str, problems[:20]))


def test_ids_are_unique_and_references_resolve_inside_the_partition(simulated) -> None:
    _, resources = simulated
    ids = Counter(f"{r['resourceType']}/{r['id']}" for r in resources)
    assert max(ids.values()) == 1
    devices = {k for k in ids if k.startswith("Device/")}
    assert devices == {r["device"]["reference"] for r in resources if "device" in r}
    for report in (r for r in resources if r["resourceType"] == "DiagnosticReport"):
        results = [ref["reference"] for ref in report["result"]]
        assert all(ref in ids for ref in results)
        linked = [_by_id(resources)[ref.split("/")[1]] for ref in results]
        assert [o["code"]["coding"][0]["code"] for o in linked][:2] == ["131328", "8867-4"]


def test_rr_series_are_published_with_their_heart_rate(simulated) -> None:
    _, resources = simulated
    series = [r for r in resources if "valueSampledData" in r]

    def hours(code: str) -> set[tuple[str, str]]:
        return {
            (r["subject"]["reference"], r["identifier"][0]["value"].split("|")[-2])
            for r in series
            if r["code"]["coding"][0]["code"] == code
        }

    rr = hours("8637-1")
    assert rr and rr <= hours("8867-4")
    rr_sampled = [
        r["valueSampledData"] for r in series if r["code"]["coding"][0]["code"] == "8637-1"
    ]
    assert all("offsets" in s and "interval" not in s for s in rr_sampled)


def test_aggregates_derive_from_published_series(simulated) -> None:
    _, resources = simulated
    ids = {f"Observation/{r['id']}" for r in resources}
    aggregates = [r for r in resources if "component" in r and "derivedFrom" in r]
    assert aggregates
    hourly = [a for a in aggregates if a["effectivePeriod"]["start"][11:13] != "00"]
    for resource in hourly:
        assert all(ref["reference"] in ids for ref in resource["derivedFrom"])


def test_round_trip_series_and_measurements_equal_the_store(simulated) -> None:
    store, resources = simulated
    records = store.read_records("simulated", utc_day(DAY))
    records = records.assign(ts_us=records["ts"].dt.as_unit("us").astype("int64"))
    configs = {c.user_id: c for c in store.users("simulated")}
    patients = {f"Patient/{c.fhir_patient_id}": c.user_id for c in configs.values()}
    type_of = {
        "8867-4": "heart_rate",
        "55423-8": "steps",
        "8637-1": "rr_intervals",
        "85354-9": "blood_pressure",
        "29463-7": "weight",
        "8310-5": "temperature",
        "59408-5": "spo2",
    }
    seen: Counter[str] = Counter()
    for resource in resources:
        if resource["resourceType"] != "Observation":
            continue
        code = resource["code"]["coding"][0]["code"]
        user = patients[resource["subject"]["reference"]]
        if "valueSampledData" in resource and code in type_of:
            ts, values = read_series(resource)
            stored = records[(records.user_id == user) & (records.data_type == type_of[code])]
            stored = stored.set_index("ts_us").loc[ts]
            np.testing.assert_array_equal(stored["value"].to_numpy(), values)
            seen[type_of[code]] += len(values)
        elif "effectiveDateTime" in resource:
            at = parse_us(resource["effectiveDateTime"])
            row = records[
                (records.user_id == user)
                & (records.data_type == type_of[code])
                & (records.ts_us == at)
            ].iloc[0]
            if code == "85354-9":
                systolic, diastolic = (c["valueQuantity"]["value"] for c in resource["component"])
                assert (systolic, diastolic) == pytest.approx((row["value"], row["diastolic"]))
            else:
                assert resource["valueQuantity"]["value"] == pytest.approx(row["value"])
            seen[type_of[code]] += 1
    for kind in ("heart_rate", "steps", "rr_intervals"):  # every sample of every user
        assert seen[kind] == (records.data_type == kind).sum(), kind
    individual = {u for u, c in configs.items() if c.aggregation is AggregationLevel.INDIVIDUAL}
    sparse = records[records.user_id.isin(individual)]
    for kind in ("blood_pressure", "weight", "temperature", "spo2"):
        assert seen[kind] == (sparse.data_type == kind).sum() > 0, kind
    ecg = records[records.data_type == "ecg"].set_index("ts_us")
    waveforms = [
        r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code") == "131328"
    ]
    assert len(waveforms) == len(ecg)
    for waveform in waveforms:
        start, rate, samples = read_waveform(waveform)
        row = ecg.loc[start]
        assert rate == pytest.approx(row["sampling_rate_hz"], rel=1e-12)
        np.testing.assert_allclose(samples, row["samples"], rtol=1e-12, atol=1e-9)


def test_round_trip_aggregates_equal_the_store(simulated) -> None:
    store, resources = simulated
    window = utc_day(DAY)
    hourly = store.read_aggregates("simulated", "hourly", window)
    hourly_user = next(c for c in store.users("simulated") if c.aggregation.value == "hourly")
    rows = hourly[(hourly.user_id == hourly_user.user_id) & (hourly.data_type == "heart_rate")]
    patient = f"Patient/{hourly_user.fhir_patient_id}"
    by_start = {
        parse_us(r["effectivePeriod"]["start"]): r
        for r in resources
        if "component" in r
        and r["subject"]["reference"] == patient
        and r["code"]["coding"][0]["code"] == "8867-4"
    }
    assert len(rows) == 24
    for row in rows.itertuples():
        resource = by_start[row.bucket_start_us]
        stats = {
            c["code"]["coding"][0]["code"]: c.get("valueQuantity", {}).get(
                "value", c.get("valueInteger")
            )
            for c in resource["component"]
        }
        assert resource["valueQuantity"]["value"] == pytest.approx(row.mean)
        assert stats["minimum"] == row.min and stats["maximum"] == row.max
        assert stats["count"] == row.count and stats["average"] == pytest.approx(row.mean)


def test_republishing_is_byte_identical(simulated, tmp_path: Path) -> None:
    store, resources = simulated
    first, second = tmp_path / "a", tmp_path / "b"
    write_ndjson(first, resources)
    write_ndjson(second, partition_resources(store, "simulated", DAY))
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert "manifest.json" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sum(1 for _ in read_ndjson(first / "Observation.ndjson")) == sum(
        r["resourceType"] == "Observation" for r in resources
    )


def test_timestamps_carry_the_users_offset(simulated) -> None:
    store, resources = simulated
    zones = {f"Patient/{c.fhir_patient_id}": c.zone for c in store.users("simulated")}
    for resource in resources:
        start = resource.get("effectiveDateTime") or resource.get("effectivePeriod", {}).get(
            "start"
        )
        if start is None:
            continue
        moment = pd.Timestamp(start)
        assert moment.tzinfo is not None
        expected = pd.Timestamp(moment).tz_convert(zones[resource["subject"]["reference"]])
        assert moment.utcoffset() == expected.utcoffset(), (start, resource["id"])
