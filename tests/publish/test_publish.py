"""Publishing a day partition: a simulated partition with all eight types and every aggregation
preference, as FHIR in bucket files with a manifest naming exactly one version; values read back
equal the store; a change re-renders only its person's bucket; deleted data is withdrawn as
entered-in-error; preliminary until the day and the re-sync horizon are over."""

from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clock import latest_past

from ohx_dagster.core.datatypes import DATA_TYPES, Shape, of_shape
from ohx_dagster.core.models import AggregationLevel
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.fhir.ecg import read_waveform
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.partition import read_window
from ohx_dagster.fhir.series import read_series
from ohx_dagster.fhir.timefmt import parse_us
from ohx_dagster.fhir.validation import validate_resources
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.aggregate import in_local_day, local_day_window
from ohx_dagster.publish.partitions import bucket_of, partition_dir, publish_partition
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

# Noon of the latest day that has had one: the tests' days read the same at any hour they run.
NOW = latest_past(12)
DAY = NOW.date() - timedelta(days=10)
HORIZON = timedelta(hours=1)
SOURCE = Windowed(
    SimulatedSource(3, seed=7, clock=lambda: NOW), SUPPORTED_TYPES["simulated"], HORIZON
)


def publish(store: RecordStore, output: FhirOutput, *, now=NOW, day=DAY, **kw):
    return publish_partition(
        store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
        day=day, scope=kw.pop("scope", None), now=now, horizon=HORIZON, **kw,
    )  # fmt: skip


def published(output: FhirOutput, day=DAY) -> list[dict]:
    """Every resource the partition's manifest names (read back through the output)."""
    assert output.manifest(partition_dir(day, "simulated")) is not None
    return list(output.listed_resources(partition_dir(day, "simulated")))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("fhir")
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    sync_partition(SOURCE, store, [DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)],
                   strategy="partition", now=NOW)  # fmt: skip
    output = FhirOutput(str(home / "fhir"))
    report = publish(store, output)
    yield store, output, report, published(output)
    store.dispose()


def test_partition_has_every_type_and_preference(simulated) -> None:
    store, _, report, resources = simulated
    assert {c.aggregation for c in store.users("simulated")} == set(AggregationLevel)
    codes = Counter(c["code"] for r in resources if "code" in r for c in r["code"]["coding"][:1])
    for code in ("8867-4", "55423-8", "8637-1", "85354-9", "29463-7", "8310-5", "59408-5"):
        assert codes[code] > 0, code
    assert codes["41950-7"] >= 1  # daily steps of the daily person
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["DiagnosticReport"] == 3 and kinds["Device"] >= 3
    assert report.resources == len(resources)
    assert sorted(report.buckets) == sorted({bucket_of("simulated", u) for u in report.users})


def test_every_resource_validates(simulated) -> None:
    problems = validate_resources(simulated[3])
    assert problems == [], "\n".join(map(str, problems[:20]))


def test_the_manifest_names_exactly_the_files_of_one_version(simulated) -> None:
    _, output, _, resources = simulated
    directory = partition_dir(DAY, "simulated")
    manifest = output.manifest(directory)
    named = {entry["url"].rsplit("/", 1)[-1] for entry in manifest["output"]}
    assert named == set(output.names(directory)) - {"manifest.json"}
    assert sum(entry["count"] for entry in manifest["output"]) == len(resources)
    assert all(entry["url"].startswith("file://") for entry in manifest["output"])
    # transactionTime is when the export was made, not a clinical time.
    assert abs(datetime.fromisoformat(manifest["transactionTime"]) - datetime.now(UTC)) < timedelta(
        minutes=10
    )


def test_ids_are_unique_and_references_resolve_inside_the_partition(simulated) -> None:
    resources = simulated[3]
    ids = Counter(f"{r['resourceType']}/{r['id']}" for r in resources)
    assert max(ids.values()) == 1
    devices = {k for k in ids if k.startswith("Device/")}
    assert devices == {r["device"]["reference"] for r in resources if "device" in r}
    by_id = {r["id"]: r for r in resources}
    for report in (r for r in resources if r["resourceType"] == "DiagnosticReport"):
        results = [ref["reference"] for ref in report["result"]]
        assert all(ref in ids for ref in results)
        linked = [by_id[ref.split("/")[1]] for ref in results]
        assert [o["code"]["coding"][0]["code"] for o in linked][:2] == ["131328", "8867-4"]


def test_aggregates_derive_from_published_series(simulated) -> None:
    resources = simulated[3]
    ids = {f"Observation/{r['id']}" for r in resources}
    hourly = [r for r in resources if "component" in r and "derivedFrom" in r
              and r["effectivePeriod"]["start"][11:13] != "00"]  # fmt: skip
    assert hourly
    for resource in hourly:
        assert all(ref["reference"] in ids for ref in resource["derivedFrom"])


def test_round_trip_series_and_measurements_equal_the_store(simulated) -> None:
    store, _, _, resources = simulated
    configs = {c.user_id: c for c in store.users("simulated")}
    # The partition publishes each person's local day of its date.
    records = in_local_day(store.read_records("simulated", read_window(DAY)), configs, DAY)
    records = records.assign(ts_us=records["ts"].dt.as_unit("us").astype("int64"))
    patients = {f"Patient/{c.fhir_patient_id}": c.user_id for c in configs.values()}
    # LOINC code -> type, from the table of data types (ECG is a recording, not compared here).
    type_of = {facts.code[0]: kind.value for kind, facts in DATA_TYPES.items()}
    seen: Counter[str] = Counter()
    for resource in resources:
        if resource["resourceType"] != "Observation":
            continue
        code = resource["code"]["coding"][0]["code"]
        user = patients[resource["subject"]["reference"]]
        if "valueSampledData" in resource and code in type_of:
            ts, values = read_series(resource)
            stored = records[(records.user_id == user) & (records.data_type == type_of[code])]
            np.testing.assert_array_equal(
                stored.set_index("ts_us").loc[ts, "value"].to_numpy(), values
            )
            seen[type_of[code]] += len(values)
        elif "effectiveDateTime" in resource:
            at = parse_us(resource["effectiveDateTime"])
            row = records[(records.user_id == user) & (records.data_type == type_of[code])
                          & (records.ts_us == at)].iloc[0]  # fmt: skip
            if code == "85354-9":
                systolic, diastolic = (c["valueQuantity"]["value"] for c in resource["component"])
                assert (systolic, diastolic) == pytest.approx((row["value"], row["diastolic"]))
            else:
                assert resource["valueQuantity"]["value"] == pytest.approx(row["value"])
            seen[type_of[code]] += 1
    for kind in of_shape(Shape.SERIES):  # every sample of every person
        assert seen[kind] == (records.data_type == kind).sum() > 0, kind
    # Every measurement is its own Observation, whatever the person's aggregation preference.
    for kind in of_shape(Shape.READING):
        assert seen[kind] == (records.data_type == kind).sum() > 0, kind
    ecg = records[records.data_type == "ecg"].set_index("ts_us")
    waveforms = [
        r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code") == "131328"
    ]
    assert len(waveforms) == len(ecg)
    for waveform in waveforms:
        start, rate, samples = read_waveform(waveform)
        assert rate == pytest.approx(ecg.loc[start, "sampling_rate_hz"], rel=1e-12)
        np.testing.assert_allclose(samples, ecg.loc[start, "samples"], rtol=1e-12, atol=1e-9)


def test_round_trip_aggregates_equal_the_store(simulated) -> None:
    store, _, _, resources = simulated
    person = next(c for c in store.users("simulated") if c.aggregation.value == "hourly")
    # Their local day's hours (Europe/Amsterdam: 23:00Z to 23:00Z).
    hourly = store.read_aggregates("simulated", "hourly", local_day_window(DAY, person))
    rows = hourly[(hourly.user_id == person.user_id) & (hourly.data_type == "heart_rate")]
    by_start = {
        parse_us(r["effectivePeriod"]["start"]): r
        for r in resources
        if "component" in r
        and r["subject"]["reference"] == f"Patient/{person.fhir_patient_id}"
        and r["code"]["coding"][0]["code"] == "8867-4"
    }
    assert len(rows) == 24
    for row in rows.itertuples():
        resource = by_start[row.bucket_start_us]
        stats = {c["code"]["coding"][0]["code"]:
                 c.get("valueQuantity", {}).get("value", c.get("valueInteger"))
                 for c in resource["component"]}  # fmt: skip
        # Heart-rate statistics are published to 0.1 /min; the store keeps them exact.
        assert resource["valueQuantity"]["value"] == round(row.mean, 1)
        assert stats["minimum"] == row.min and stats["maximum"] == row.max
        assert stats["count"] == row.count and stats["average"] == round(row.mean, 1)
        assert resource["method"]["coding"][0]["code"] == "average"


def test_timestamps_carry_the_persons_offset(simulated) -> None:
    store, _, _, resources = simulated
    zones = {f"Patient/{c.fhir_patient_id}": c.zone for c in store.users("simulated")}
    for resource in resources:
        start = resource.get("effectiveDateTime") or resource.get("effectivePeriod", {}).get(
            "start"
        )
        if start is None:
            continue
        if len(start) == len("2026-11-10"):
            continue  # a CGM summary's period of whole local days: dates, as the CGM IG has it
        moment = pd.Timestamp(start)
        expected = moment.tz_convert(zones[resource["subject"]["reference"]])
        assert moment.utcoffset() == expected.utcoffset(), (start, resource["id"])


# -- versions, buckets, withdrawals, status --------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path):
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    sync_partition(SOURCE, store, DAY, strategy="partition", now=NOW)
    yield store, FhirOutput(str(tmp_path / "fhir"))
    store.dispose()


def test_publishing_again_without_changes_touches_nothing(fresh) -> None:
    store, output = fresh
    first = publish(store, output)
    names = output.names(partition_dir(DAY, "simulated"))
    again = publish(store, output)
    assert first.buckets and again.buckets == []
    assert output.names(partition_dir(DAY, "simulated")) == names
    forced = publish(store, output, force=True)  # what a `partition` run does: same bytes
    assert sorted(forced.buckets) == sorted(first.buckets)
    assert output.names(partition_dir(DAY, "simulated")) == names


def test_a_change_renders_only_its_persons_bucket(fresh) -> None:
    store, output = fresh
    publish(store, output)
    directory = partition_dir(DAY, "simulated")
    before = set(output.names(directory))
    config = store.user("simulated", "sim-002")
    hour = to_us(utc_day(DAY).start) + 5 * 3_600_000_000
    sync_partition(
        SOURCE, store, DAY, strategy="partition", user_ids=["sim-002"], now=NOW
    )  # no change
    assert publish(store, output).buckets == []
    # A provider deletes an hour of sim-002's heart rate: the next read of the window says so.
    store.commit("simulated", "sim-002", config.zone, SOURCE.fetch_windows(config, {}).batch,
                 replace={"heart_rate": [(hour, hour + 3_600_000_000)]})  # fmt: skip
    report = publish(store, output)
    assert report.buckets == [bucket_of("simulated", "sim-002")]
    after = set(output.names(directory))
    changed = {n for n in after ^ before if n != "manifest.json"}
    assert {int(n.split(".")[1]) for n in changed} == {bucket_of("simulated", "sim-002")}
    withdrawn = [r for r in published(output) if r.get("status") == "entered-in-error"]
    assert report.withdrawn == len(withdrawn) >= 1
    assert all(r["resourceType"] == "Observation" for r in withdrawn)


def test_a_day_is_preliminary_until_its_local_day_and_the_horizon_are_over(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    output = FhirOutput(str(tmp_path / "fhir"))
    day = NOW.date() - timedelta(days=1)
    sync_partition(SOURCE, store, day, strategy="partition", now=NOW)
    early = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(
        hours=1
    )
    report = publish(store, output, day=day, now=early)
    new_york = next(c for c in store.users("simulated") if c.timezone == "America/New_York")
    assert new_york.user_id in report.preliminary_users  # their day is still going on

    def complete(resource: dict) -> bool:  # an ECG waveform, a night's sleep, a workout
        key = resource["identifier"][0]["value"]
        return resource["code"]["coding"][0]["code"] == "131328" or any(
            f"|{kind}|" in key for kind in ("sleep", "workout")
        )

    statuses = {r["status"] for r in published(output, day) if r["resourceType"] == "Observation"
                and "effectivePeriod" in r and not complete(r)
                and r["subject"]["reference"] == f"Patient/{new_york.fhir_patient_id}"}  # fmt: skip
    # Series and aggregates; single measurements and ECG recordings are complete: final.
    assert statuses == {"preliminary"}
    later = early + timedelta(days=1)
    # A gap in the ledger inside their local day (its last hour, 04:00-05:00Z of the next UTC
    # day, forgotten): however late, not final.
    end = to_us(local_day_window(day, new_york).end)
    store.uncover("simulated", new_york.user_id, {"heart_rate": [(end - 3_600_000_000, end)]})
    waiting = publish(store, output, day=day, now=later, force=True)
    assert new_york.user_id in waiting.preliminary_users
    assert publish(store, output, day=day, now=later).buckets == []  # nothing new: nothing done
    sync_partition(SOURCE, store, day, strategy="incremental", now=NOW)  # asks for the gap
    final = publish(store, output, day=day, now=later)
    assert new_york.user_id in final.users and final.preliminary_users == []
    mine = [r for r in published(output, day) if r["resourceType"] == "Observation"
            and r["subject"]["reference"] == f"Patient/{new_york.fhir_patient_id}"]  # fmt: skip
    # The 14-day CGM summary waits for the 13 days before, never synced here
    # (tests/publish/test_cgm_summary.py); everything of the day itself is final.
    of_day = [r for r in mine if r.get("effectivePeriod", {}).get("start", "9")[:10] >= str(day)]
    assert {r["status"] for r in of_day} == {"final"} and len(of_day) < len(mine)
    store.dispose()


def test_two_publishers_of_one_partition_at_once_leave_one_consistent_version(
    fresh, tmp_path
) -> None:
    store, output = fresh
    alone = FhirOutput(str(tmp_path / "alone"))
    publish(store, alone, force=True)
    expected = sorted((r["resourceType"], r["id"]) for r in published(alone))
    errors = []

    def run() -> None:
        try:
            publish(store, output, force=True)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted((r["resourceType"], r["id"]) for r in published(output)) == expected


def test_a_committed_version_with_a_file_gone_is_not_taken_for_the_whole(fresh) -> None:
    """The committed Provenance file is lost (an output moved or restored, an object expired):
    the next publication must not take the remaining files for the previous version and keep
    its (missing) Provenance; every person's Provenance is published again. Two publishers at
    once met this when one read the files another was still writing."""
    store, output = fresh
    publish(store, output, force=True)
    before = sorted((r["resourceType"], r["id"]) for r in published(output))
    directory = partition_dir(DAY, "simulated")
    lost = [n for n in output.names(directory) if n.startswith("Provenance.")]
    assert lost
    for name in lost:
        output.delete(f"{directory}/{name}")
    publish(store, output, force=True)
    assert sorted((r["resourceType"], r["id"]) for r in published(output)) == before


def test_files_of_a_writer_that_died_are_collected(fresh) -> None:
    store, output = fresh
    directory = partition_dir(DAY, "simulated")
    dead = Path(output.root) / directory / "Observation.07.deadbeef.ndjson"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"{}\n")  # written, never committed
    stale = Path(output.root) / directory / ".tmp-abc-Observation.07.x.ndjson"
    stale.write_bytes(b"torn")
    old = datetime.now(UTC).timestamp() - 7200
    for path in (dead, stale):
        os.utime(path, (old, old))
    publish(store, output)
    names = output.names(directory)
    assert dead.name not in names and stale.name not in names


def test_another_publishers_uncommitted_file_survives_the_collection(fresh) -> None:
    """Race: publisher B wrote its new file and has not committed it when publisher A collects
    garbage. Deleting it would leave B's manifest naming a missing file: a young file no manifest
    names is left for a later collection."""
    store, output = fresh
    directory = partition_dir(DAY, "simulated")
    publish(store, output)
    uncommitted = "Observation.07.0123456789abcdef0123.ndjson"
    output.write_fresh(f"{directory}/{uncommitted}", b"{}\n")
    assert output.collect_garbage(directory, keep=[]) == 0
    assert uncommitted in output.names(directory)
    manifest = output.manifest(directory)
    assert all(
        output.exists(f"{directory}/{e['url'].rsplit('/', 1)[-1]}") for e in manifest["output"]
    )


def test_a_file_that_vanishes_between_listing_and_collection_is_skipped(
    fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Race: another writer renames its temporary file into place after the listing."""
    store, output = fresh
    directory = partition_dir(DAY, "simulated")
    publish(store, output)
    listed = output.names(directory)
    monkeypatch.setattr(output, "names", lambda d: [*listed, ".tmp-gone-Observation.07.x.ndjson"])
    assert output.collect_garbage(directory, keep=[], grace_s=0) == 0
