"""Subjects and every other reference resolve on a FHIR server: a published simulated partition
(three people, one of them named by the clinical system's Patient id) delivered in small
transactions to the local FHIR test server, which resolves fullUrls and conditional references
inside each transaction and refuses a literal reference to anything it does not hold.

Invariant: after delivery, every reference of every resource the server holds points at a
resource the server holds, and each subject is the Patient of the person the data belongs to."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fhir_test_server import FhirServer, running_fhir_server

from ohx_dagster.core.records import empty_batch
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.fhir.codes import PERSON_SYSTEM
from ohx_dagster.fhir.delivery.auth import BearerToken
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import enqueue_partition, owner
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.privacy.identity import relink
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import partition_dir, partition_key, publish_partition
from ohx_dagster.storage.schema import fhir_outbox
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

NOW = datetime(2025, 3, 20, 12, tzinfo=UTC)
DAY = NOW.date() - timedelta(days=10)
HORIZON = timedelta(hours=1)
CLINICAL_ID = "clinical-7"
PARTITION = partition_key(DAY, "simulated")
DAY_US = 86_400_000_000


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordStore, FhirOutput]]:
    home = tmp_path_factory.mktemp("refs")
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    source = Windowed(
        SimulatedSource(3, seed=11, clock=lambda: NOW), SUPPORTED_TYPES["simulated"], HORIZON
    )
    sync_partition(source, store, [DAY], strategy="partition", now=NOW)
    first = sorted(store.users("simulated"), key=lambda c: c.user_id)[0]
    store.upsert_user(dataclasses.replace(first, fhir_patient_id=CLINICAL_ID))
    output = FhirOutput(str(home / "fhir"))
    publish_partition(
        store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
        day=DAY, scope=None, now=NOW, horizon=HORIZON, run_id="run-1",
    )  # fmt: skip
    yield store, output
    store.dispose()


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


def _deliver(store: RecordStore, output: FhirOutput, server: FhirServer) -> None:
    """Deliver the whole partition to this (new) server."""
    enqueue_partition(store, output, PARTITION)
    with store.write() as conn:
        conn.execute(fhir_outbox.update().values(delivered_hash=None))
    FhirClient(server.url, auth=BearerToken(server.token), batch_size=40).deliver(store, PARTITION)


def _references(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        if "reference" in node:
            yield node
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _seed_clinical_patient(server: FhirServer) -> None:
    """The clinical system's own Patient, which it holds before we send anything."""
    server.resources[("Patient", CLINICAL_ID)] = {
        "resourceType": "Patient",
        "id": CLINICAL_ID,
        "meta": {"versionId": "1"},
    }


def test_every_reference_resolves_on_the_server(published, server: FhirServer) -> None:
    store, output = published
    _seed_clinical_patient(server)
    _deliver(store, output, server)
    assert server.transactions > 3 and server.refusals == []

    dangling = [
        (key, ref["reference"])
        for key, resource in server.resources.items()
        for ref in _references(resource)
        if server.resolve(ref) is None
    ]
    assert dangling == []

    # Each subject is the Patient of the person whose data it is: ours found by the person's
    # identifier, the clinical one by its id.
    people = {c.user_id: c for c in store.users("simulated")}
    for resource in server.resources.values():
        subject = resource.get("subject") or resource.get("patient")
        if subject is None:
            continue
        user_id = subject["identifier"]["value"]
        patient = server.resolve(subject)
        assert patient is not None and patient["resourceType"] == "Patient"
        if people[user_id].fhir_patient_id == CLINICAL_ID:
            assert patient["id"] == CLINICAL_ID
        else:
            assert patient["identifier"] == [subject["identifier"]]
    patients = Counter(k[0] for k in server.resources)["Patient"]
    assert patients == 3  # two of ours and the clinical one, none doubled


def test_transactions_carry_conditional_references_not_our_ids(published, server) -> None:
    store, output = published
    _seed_clinical_patient(server)
    _deliver(store, output, server)
    ours = {
        f"{r['resourceType']}/{r['id']}"
        for r in output.listed_resources(partition_dir(DAY, "simulated"))
    }
    kinds: Counter = Counter()
    for bundle in server.received:
        full_urls = {e.get("fullUrl") for e in bundle["entry"]}
        for entry in bundle["entry"]:
            for ref in _references(entry.get("resource", {})):
                target = ref["reference"]
                assert target not in ours, f"a literal reference to our own id: {target}"
                if target.startswith("urn:uuid:"):
                    assert target in full_urls
                    kinds["in the same transaction"] += 1
                elif "?identifier=" in target:
                    kinds["conditional"] += 1
                else:
                    assert target == f"Patient/{CLINICAL_ID}"
                    kinds["clinical"] += 1
    assert set(kinds) == {"in the same transaction", "conditional", "clinical"}
    subjects = [
        e["resource"]["subject"]["reference"]
        for bundle in server.received
        for e in bundle["entry"]
        if "subject" in e.get("resource", {})
    ]
    assert any(s.startswith(f"Patient?identifier={PERSON_SYSTEM.replace(':', '%3A')}")
               for s in subjects)  # fmt: skip


def test_ecg_report_and_provenance_resolve_to_what_they_name(published, server) -> None:
    store, output = published
    _seed_clinical_patient(server)
    _deliver(store, output, server)
    reports = [r for (t, _), r in server.resources.items() if t == "DiagnosticReport"]
    assert reports
    for report in reports:
        results = [server.resolve(ref) for ref in report["result"]]
        assert all(r is not None and r["resourceType"] == "Observation" for r in results)
        codes = {c["code"] for r in results for c in r["code"]["coding"]}
        assert {"131328", "8867-4"} <= codes  # the waveform and the heart rate recorded with it
    provenances = [r for (t, _), r in server.resources.items() if t == "Provenance"]
    assert len(provenances) == 3
    for provenance in provenances:
        targets = [server.resolve(ref) for ref in provenance["target"]]
        assert targets and all(t is not None for t in targets)


def test_a_clinical_patient_the_server_does_not_hold_is_refused_and_stays_pending(
    published, server
) -> None:
    store, output = published
    with pytest.raises(DeliveryError, match="Patient/clinical-7: no such resource"):
        _deliver(store, output, server)
    assert server.refusals


def test_a_persons_whole_day_deleted_at_the_provider_is_deleted_on_the_server(
    tmp_path: Path, server: FhirServer
) -> None:
    """Their Observations become entered-in-error in the output (which still holds their Patient
    and Devices, so its references resolve) and are deleted on the server with their
    Provenance; their Patient stays (other days reference it)."""
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    source = Windowed(
        SimulatedSource(2, seed=5, clock=lambda: NOW), SUPPORTED_TYPES["simulated"], HORIZON
    )
    sync_partition(source, store, [DAY], strategy="partition", now=NOW)
    output = FhirOutput(str(tmp_path / "fhir"))

    def publish_and_deliver() -> list[dict]:
        report = publish_partition(
            store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
            day=DAY, scope=None, now=NOW, horizon=HORIZON,
        )  # fmt: skip
        assert report.invalid_buckets == {}
        enqueue_partition(store, output, PARTITION)
        FhirClient(server.url, auth=BearerToken(server.token), batch_size=40).deliver(
            store, PARTITION
        )
        return list(output.listed_resources(partition_dir(DAY, "simulated")))

    publish_and_deliver()
    gone = sorted(store.users("simulated"), key=lambda c: c.user_id)[0]
    everything = [(to_us(utc_day(DAY).start) - DAY_US, to_us(utc_day(DAY).end) + DAY_US)]
    store.commit(
        "simulated", gone.user_id, gone.zone, empty_batch(),
        replace={t.value: everything for t in SUPPORTED_TYPES["simulated"]},
    )  # fmt: skip
    resources = publish_and_deliver()
    assert server.refusals == []

    def theirs(resource: dict) -> bool:
        subject = resource.get("subject") or resource.get("patient") or {}
        return subject.get("identifier", {}).get("value") == gone.user_id

    mine = [r for r in resources if theirs(r)]
    clinical = [r for r in mine if r["resourceType"] in ("Observation", "DiagnosticReport")]
    assert clinical and {r["status"] for r in clinical} == {"entered-in-error"}
    assert not [r for r in mine if r["resourceType"] == "Provenance"]
    assert any(
        r["resourceType"] == "Patient" and r["identifier"][0]["value"] == gone.user_id
        for r in resources
    )
    held = [r for r in server.resources.values() if theirs(r)]
    assert {r["resourceType"] for r in held} <= {"DeviceAssociation"}
    assert [r for r in server.resources.values() if r["resourceType"] == "Patient"
            and r["identifier"][0]["value"] == gone.user_id]  # fmt: skip
    others = [r for r in server.resources.values() if r["resourceType"] == "Observation"]
    assert others and all(not theirs(r) for r in others)
    store.dispose()


def test_a_relinked_persons_old_resources_are_deleted_and_new_ones_name_the_new_patient(
    tmp_path: Path, server: FhirServer
) -> None:
    """`ohx users relink` (identity.relink): the person's resources are published again under
    new identifiers naming the new patient, the old ones are entered-in-error in the output and
    deleted on the server (their DeviceAssociation with the former patient too); nobody else's
    resource on the server changes. Twice: from our derived Patient to the clinical system's,
    then from that one to another of its Patients (a withdrawn resource then names a clinical
    Patient the person no longer has: the output still validates)."""
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    source = Windowed(
        SimulatedSource(2, seed=5, clock=lambda: NOW), SUPPORTED_TYPES["simulated"], HORIZON
    )
    sync_partition(source, store, [DAY], strategy="partition", now=NOW)
    output = FhirOutput(str(tmp_path / "fhir"))
    _seed_clinical_patient(server)
    server.resources[("Patient", "clinical-8")] = {
        "resourceType": "Patient",
        "id": "clinical-8",
        "meta": {"versionId": "1"},
    }

    def publish_and_deliver() -> None:
        report = publish_partition(
            store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
            day=DAY, scope=None, now=NOW, horizon=HORIZON,
        )  # fmt: skip
        assert report.invalid_buckets == {}
        enqueue_partition(store, output, PARTITION)
        FhirClient(server.url, auth=BearerToken(server.token), batch_size=40).deliver(
            store, PARTITION
        )
        assert server.refusals == []

    def identifiers(user_id: str) -> dict[str, dict]:
        """The server's resources of the person with an identifier, by identifier value."""
        return {
            r["identifier"][0]["value"]: r
            for r in server.resources.values()
            if r.get("identifier") and owner(r) == ("simulated", user_id)
            and r["resourceType"] != "Patient"
        }  # fmt: skip

    publish_and_deliver()
    moved, neighbour = sorted(c.user_id for c in store.users("simulated"))
    others = {k: dict(v) for k, v in server.resources.items() if owner(v)[1] == neighbour}
    assert others
    held = identifiers(moved)
    assert {r["resourceType"] for r in held.values()} >= {
        "Observation", "DiagnosticReport", "DeviceAssociation"
    }  # fmt: skip
    salt = b"relink-test-salt-0123456789"
    for generation, patient in ((1, CLINICAL_ID), (2, "clinical-8")):
        with store.write() as conn:
            done = relink(
                conn, "simulated", moved, patient, actor="nurse.a", reason="wrong patient",
                salt=salt,
            )  # fmt: skip
        assert done is not None and done.days >= 1
        publish_and_deliver()
        now_held = identifiers(moved)
        # Nothing of before that names a patient is left on the server: every such resource
        # is a new one naming the new patient. Their Devices (no patient) stay as they were.
        devices = {v: r for v, r in held.items() if r["resourceType"] == "Device"}
        assert devices and {v: r for v, r in now_held.items() if v in devices} == devices
        old = set(held) - set(devices)
        new = set(now_held) - set(devices)
        assert not old & new
        assert {v.replace(f"|link-{generation}", "", 1) for v in new} == {
            v.replace(f"|link-{generation - 1}", "", 1) for v in old
        }
        assert all(f"|link-{generation}" in v for v in new)
        assert {
            r["subject"]["reference"] for r in now_held.values() if "subject" in r
        } == {f"Patient/{patient}"}  # fmt: skip
        held = now_held
        assert {k: v for k, v in server.resources.items() if owner(v)[1] == neighbour} == others
    store.dispose()
