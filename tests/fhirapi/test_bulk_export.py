"""Bulk Data export as a hospital's system meets it: a real HTTP server (uvicorn), a client
registered with a fresh key pair, `Group/[id]/$export` and `Patient/$export` kicked off with a
token from a signed assertion, polled, answered by the `fhir_exports` sensor and a `fhir_export`
Dagster run on a real instance, and every file downloaded. What an export holds is compared with
the published files read directly: exactly the cohort's resources, each once, byte for byte the
same content. `_since` after a later sync returns exactly what changed, withdrawn resources among
it. Refusals are OperationOutcomes; cancelled, expired, withdrawn (erasure) and failed exports
answer as the IG says; an erased person never comes back in an export."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fhir_api import Key, jwks

from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.delivery.outbox import owner
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.validation import validate_resource
from ohx_dagster.fhirapi import bulk, clients, groups
from ohx_dagster.fhirapi.app import create_app
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.erasure import erase_person
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.schema import fhir_changes, fhir_exports, fhir_files
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard
from resources import FhirOutputResource, RecordStoreResource
from sensors.exports import EXPORT_TAG, fhir_export_job, fhir_exports_sensor

DAY = date(2026, 11, 10)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
ALL_READ = "system/*.rs"
KICK_OFF = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


class World:
    """Three simulated people with DAY published, a FHIR API server, a Dagster instance whose
    sensor and job answer exports, and a client with a fresh key pair."""

    def __init__(self, root: Path, base: str, instance: dg.DagsterInstance) -> None:
        self.root, self.base, self.instance = root, base, instance

    def setup(self, store: RecordStore, output: FhirOutput, simulator: SimulatedSource) -> None:
        self.store, self.output, self.simulator = store, output, simulator
        self.people = simulator.discover_users()
        self.source = Windowed(simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
        self.key = Key("ES384", "bulk-1")
        self.client = clients.add_client(store, "registry", jwks(self.key), ALL_READ, actor="t")
        self.resources = {
            "store": RecordStoreResource(database_url=store.url),
            "output": FhirOutputResource(root=output.root_url),
        }
        self.defs = dg.Definitions(
            jobs=[fhir_export_job], sensors=[fhir_exports_sensor], resources=self.resources
        )

    def publish(self, day: date, now: datetime = NOW) -> None:
        publish_partition(self.store, self.output, provider="simulated", key="simulated",
                          shard=Shard("simulated"), day=day, scope=None, now=now,
                          horizon=timedelta(hours=1))  # fmt: skip

    def token(self, scope: str = ALL_READ, key: Key | None = None, client: Any = None) -> str:
        key, client = key or self.key, client or self.client
        signed = key.assertion(client.client_id, f"{self.base}/fhir/auth/token")
        answer = httpx.post(f"{self.base}/fhir/auth/token", data={
            "grant_type": "client_credentials", "client_assertion_type": clients.ASSERTION_TYPE,
            "client_assertion": signed, "scope": scope})  # fmt: skip
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]

    def get(self, url: str, token: str | None, headers: dict | None = None, **params: Any):
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        full = url if url.startswith("http") else f"{self.base}/fhir/{url}"
        return httpx.get(full, params=params, headers={**auth, **(headers or {})})

    def sensor_tick(self) -> list[dg.RunRequest]:
        sensor = self.defs.get_sensor_def("fhir_exports")
        context = dg.build_sensor_context(
            instance=self.instance, definitions=self.defs, resources=self.resources
        )
        result = sensor(context)
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def("fhir_export")
        return job.execute_in_process(
            run_config=request.run_config, tags=request.tags, instance=self.instance,
            raise_on_error=False,
        )  # fmt: skip

    def export(self, token: str, path: str = "Patient/$export", **params: Any) -> dict:
        """Kick off, let the sensor launch the run, poll to the manifest."""
        kicked = self.get(path, token, KICK_OFF, **params)
        assert kicked.status_code == 202, kicked.text
        status = kicked.headers["Content-Location"]
        pending = self.get(status, token)
        assert pending.status_code == 202 and pending.headers["X-Progress"]
        assert int(pending.headers["Retry-After"]) > 0
        requests = self.sensor_tick()
        export_id = status.rsplit("/", 1)[-1]
        assert [r.run_key for r in requests] == [export_id]
        assert requests[0].tags[EXPORT_TAG] == export_id
        assert self.run(requests[0]).success
        done = self.get(status, token)
        assert done.status_code == 200, done.text
        return {"status": status, "manifest": done.json(), "kick_off": kicked}

    def download(self, manifest: dict, token: str) -> dict[tuple[str, str], dict]:
        found: dict[tuple[str, str], dict] = {}
        for entry in manifest["output"]:
            answer = self.get(entry["url"], token, {"Accept": "application/fhir+ndjson"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("application/fhir+ndjson")
            lines = [orjson.loads(x) for x in answer.content.splitlines() if x.strip()]
            assert len(lines) == entry["count"]
            for resource in lines:
                assert resource["resourceType"] == entry["type"]
                key = (resource["resourceType"], resource["id"])
                assert key not in found, f"{key} exported twice"
                found[key] = resource
        return found

    def published(self, owners: set[tuple[str, str]], types: set[str] | None = None) -> dict:
        """What the current published files hold of these people, each resource once: a
        repeated one as the file its last change names holds it."""
        with self.store.read() as conn:
            files = conn.execute(fhir_files.select()).all()
            where = {(r.resource_type, r.resource_id): (r.partition_key, r.bucket)
                     for r in conn.execute(fhir_changes.select())}  # fmt: skip
        found: dict[tuple[str, str], dict] = {}
        for file in sorted(files, key=lambda f: f.partition_key):
            day, _, source = file.partition_key.partition("|")
            path = f"{partition_dir(date.fromisoformat(day), source)}/{file.name}"
            for resource in self.output.read_resources(path):
                key = (resource["resourceType"], resource["id"])
                if owner(resource) not in owners or (types and key[0] not in types):
                    continue
                if where.get(key, (file.partition_key, file.bucket)) == (
                    file.partition_key, file.bucket,
                ):  # fmt: skip
                    found[key] = resource
        return found

    def owners(self, *people: Any) -> set[tuple[str, str]]:
        return {(p.provider, p.user_id) for p in people}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(bulk, "SETTLE_S", 0.0)
    simulator = SimulatedSource(3, hr_hz=0.01, clock=lambda: NOW)
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}", migrate_schema=True)
    output = FhirOutput(str(tmp_path / "fhir"))
    store.add_users(simulator.discover_users())
    with dg.instance_for_test() as instance, serve_in_thread(create_app(store, output)) as base:
        world = World(tmp_path, base, instance)
        world.setup(store, output, simulator)
        sync_partition(world.source, store, [DAY - timedelta(days=1), DAY], now=NOW)
        world.publish(DAY)
        yield world
    store.dispose()


def test_a_group_export_end_to_end_then_since_after_a_new_sync(world: World) -> None:
    """Register, token, Group/$export for a cohort of two of three people, poll, run as a
    Dagster run, download: exactly the cohort's published resources. Then a later sync adds a
    day and the provider deletes an hour: `_since` the first transactionTime returns exactly
    the new and changed resources, the withdrawn hour among them, of the cohort only."""
    first, second, third = world.people
    groups.add_group(world.store, "pair", patients=[first.fhir_patient_id,
                     f"Patient/{second.fhir_patient_id}"], actor="test")  # fmt: skip
    token = world.token()
    done = world.export(token, "Group/pair/$export")
    manifest = done["manifest"]
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"] == f"{world.base}/fhir/Group/pair/$export"
    transaction = datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    assert abs((transaction - datetime.now(UTC)).total_seconds()) < 600
    exported = world.download(manifest, token)
    expected = world.published(world.owners(first, second))
    assert exported == expected
    assert {t for t, _ in exported} == set(bulk.TYPES)
    assert not any(owner(r) == (third.provider, third.user_id) for r in exported.values())
    assert len([k for k in exported if k[0] == "Patient"]) == 2
    # The Dagster run is in the instance, tagged with the export (no person named).
    runs = world.instance.get_runs(dg.RunsFilter(job_name="fhir_export"))
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    # Audited: the kick-off, one row per person the export holds, each download.
    rows = [r for r in audit.read(world.store) if r.action == "bulk-export"]
    assert sum("kicked off" in r.detail for r in rows) == 1
    assert len({r.subject for r in rows if r.subject}) == 2
    assert sum("downloaded" in r.detail for r in rows) == len(manifest["output"])
    assert all(first.user_id not in r.detail and r.actor == "fhir client registry" for r in rows)

    # A later sync: the next day, and the provider deletes an hour of DAY for the first person.
    before = world.published(world.owners(first, second, third))
    time.sleep(0.01)
    later = NOW + timedelta(days=1)
    sync_partition(world.source, world.store, [DAY + timedelta(days=1)], now=later)
    start = datetime.combine(DAY, datetime.min.time(), UTC) + timedelta(hours=10)
    config = world.store.user("simulated", first.user_id)
    empty = world.source.fetch_windows(config, {}).batch.iloc[:0]
    hour = (to_us(start), to_us(start + timedelta(hours=1)))
    world.store.commit(
        "simulated", first.user_id, config.zone, empty, replace={"heart_rate": [hour]}
    )
    world.publish(DAY, later)
    world.publish(DAY + timedelta(days=1), later)
    after = world.published(world.owners(first, second))
    changed = {k for k, r in after.items() if before.get(k) != r}
    since = world.export(token, "Group/pair/$export", _since=manifest["transactionTime"])
    delta = world.download(since["manifest"], token)
    assert set(delta) == changed and delta == {k: after[k] for k in changed}
    assert any(r.get("status") == "entered-in-error" for r in delta.values())
    assert since["manifest"]["request"].endswith(
        "_since=" + manifest["transactionTime"].replace(":", "%3A")
    )


def test_patient_export_types_and_scopes(world: World) -> None:
    """Patient/$export is everyone; `_type` narrows it; a token that cannot read a type gets
    only what it can read, and 403 when it names a type it cannot read."""
    token = world.token()
    done = world.export(token, _type="Observation,Patient", _outputFormat="application/fhir+ndjson")
    exported = world.download(done["manifest"], token)
    assert exported == world.published(world.owners(*world.people), {"Observation", "Patient"})
    narrow = clients.add_client(world.store, "narrow", jwks(key := Key("ES384", "n-1")),
                                "system/Observation.rs", actor="t")  # fmt: skip
    narrow_token = world.token("system/Observation.rs", key, narrow)
    only = world.export(narrow_token)
    assert {entry["type"] for entry in only["manifest"]["output"]} == {"Observation"}
    refused = world.get("Patient/$export", narrow_token, KICK_OFF, _type="Patient")
    assert refused.status_code == 403 and validate_resource(refused.json()) == []
    # Another client's export is not found, its files neither.
    assert world.get(only["status"], token).status_code == 404
    url = only["manifest"]["output"][0]["url"]
    assert world.get(url, token).status_code == 404
    assert world.get(url, narrow_token).status_code == 200


@pytest.mark.parametrize(
    ("headers", "params", "status", "says"),
    [
        ({"Accept": "application/fhir+json"}, {}, 400, "Prefer: respond-async"),
        ({**KICK_OFF, "Accept": "text/csv"}, {}, 400, "Accept"),
        (KICK_OFF, {"_outputFormat": "text/csv"}, 400, "_outputFormat"),
        (KICK_OFF, {"_type": "Observation,Encounter"}, 400, "Encounter"),
        (KICK_OFF, {"_since": "2026-12-01"}, 400, "instant"),
        (KICK_OFF, {"_since": "yesterday"}, 400, "instant"),
        (KICK_OFF, {"_since": "2026-12-01T10:00:00"}, 400, "instant"),
        (KICK_OFF, {"_since": "2026-13-01T00:00:00Z"}, 400, "_since"),
        (KICK_OFF, {"_typeFilter": "Observation?code=8867-4"}, 400, "_typeFilter"),
        (KICK_OFF, {"_since": ["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"]}, 400, "once"),
    ],
)
def test_bad_kick_offs_are_refused_with_an_outcome(
    world: World, headers: dict, params: dict, status: int, says: str
) -> None:
    token = world.token()
    answer = world.get("Patient/$export", token, headers, **params)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert validate_resource(body) == [] and says in body["issue"][0]["diagnostics"]
    with world.store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(fhir_exports)).scalar() == 0


def test_kick_off_without_token_unknown_group_and_lenient_handling(world: World) -> None:
    assert world.get("Patient/$export", None, KICK_OFF).status_code == 401
    token = world.token()
    missing = world.get("Group/nobody/$export", token, KICK_OFF)
    assert missing.status_code == 404 and validate_resource(missing.json()) == []
    lenient = {**KICK_OFF, "Prefer": "respond-async, handling=lenient"}
    ignored = world.get("Patient/$export", token, lenient, _typeFilter="Observation?code=x")
    assert ignored.status_code == 202


def test_groups_are_read_and_listed_as_r5_groups(world: World) -> None:
    first, _, third = world.people
    groups.add_group(world.store, "pair", patients=[first.fhir_patient_id, third.fhir_patient_id],
                     description="a study", actor="t")  # fmt: skip
    groups.add_group(world.store, "sim", providers=["simulated"], actor="t")
    groups.add_group(world.store, "all", everyone=True, actor="t")
    token = world.token()
    pair = world.get("Group/pair", token).json()
    assert validate_resource(pair) == [], validate_resource(pair)
    assert pair["membership"] == "enumerated" and pair["quantity"] == 2
    assert sorted(m["entity"]["reference"] for m in pair["member"]) == sorted(
        f"Patient/{p.fhir_patient_id}" for p in (first, third)
    )
    listed = world.get("Group", token).json()
    assert validate_resource(listed) == [] and listed["total"] == 3
    by_id = {e["resource"]["id"]: e["resource"] for e in listed["entry"]}
    assert by_id["sim"]["membership"] == "definitional" and "member" not in by_id["sim"]
    assert by_id["sim"]["characteristic"][0]["valueCodeableConcept"]["text"] == "simulated"
    assert by_id["all"]["quantity"] == 3
    assert world.get("Group/nope", token).status_code == 404
    assert world.get("Group", token, name="x").status_code == 400
    narrow = clients.add_client(world.store, "obs-only", jwks(key := Key("ES384", "o-1")),
                                "system/Observation.rs", actor="t")  # fmt: skip
    assert (
        world.get("Group/pair", world.token("system/Observation.rs", key, narrow)).status_code
        == 403
    )


def test_delete_cancels_before_and_after_the_run(world: World) -> None:
    token = world.token()
    kicked = world.get("Patient/$export", token, KICK_OFF)
    status = kicked.headers["Content-Location"]
    cancelled = httpx.delete(status, headers={"Authorization": f"Bearer {token}"})
    assert cancelled.status_code == 202 and validate_resource(cancelled.json()) == []
    assert world.get(status, token).status_code == 404
    assert world.sensor_tick() == []  # nothing left to run
    done = world.export(token)
    url = done["manifest"]["output"][0]["url"]
    assert (
        httpx.delete(done["status"], headers={"Authorization": f"Bearer {token}"}).status_code
        == 202
    )
    assert world.get(done["status"], token).status_code == 404
    assert world.get(url, token).status_code == 404
    assert world.output.names(f"{bulk.EXPORTS_DIR}/{done['status'].rsplit('/', 1)[-1]}") == []


def test_a_run_cancelled_while_writing_deletes_what_it_wrote(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "FILE_BYTES", 1)  # every resource is a file: the state is read often
    export = bulk.kick_off(world.store, client_id=world.client.client_id, group_id=None,
                           types=bulk.TYPES, since_us=None, request="urn:test")  # fmt: skip
    write = FhirOutput.write

    def cancelling(self: FhirOutput, relative: str, body: bytes) -> None:
        write(self, relative, body)
        if relative.startswith(bulk.EXPORTS_DIR):
            bulk.cancel(world.store, self, export.export_id, actor="test")

    monkeypatch.setattr(FhirOutput, "write", cancelling)
    ended = bulk.run_export(world.store, world.output, export.export_id)
    assert ended is not None and ended.state == "cancelled"
    assert world.output.names(export.directory) == []


def test_an_erased_person_never_comes_back_in_an_export(world: World) -> None:
    """Erasing a person withdraws every finished export holding them (files deleted, the poll
    says why) and leaves exports without them; a run during which a person is erased reads
    again without them."""
    first, second, third = world.people
    groups.add_group(world.store, "third", patients=[third.fhir_patient_id], actor="test")
    token = world.token()
    everyone = world.export(token)
    alone = world.export(token, "Group/third/$export")
    erase_person(world.store, world.output, None, "simulated", first.user_id, requested_by="t")
    withdrawn = world.get(everyone["status"], token)
    assert withdrawn.status_code == 404 and "erased" in withdrawn.json()["issue"][0]["diagnostics"]
    assert world.output.names(f"exports/{everyone['status'].rsplit('/', 1)[-1]}") == []
    assert world.get(alone["status"], token).status_code == 200  # did not hold them

    # The second person is erased while a run is writing: it reads again and leaves them out.
    export = bulk.kick_off(world.store, client_id=world.client.client_id, group_id=None,
                           types=bulk.TYPES, since_us=None, request="urn:test")  # fmt: skip
    write, erased = FhirOutput.write, []

    def erasing(self: FhirOutput, relative: str, body: bytes) -> None:
        if relative.startswith(bulk.EXPORTS_DIR) and not erased:
            erased.append(True)
            erase_person(world.store, self, None, "simulated", second.user_id, requested_by="t")
        write(self, relative, body)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FhirOutput, "write", erasing)
        ended = bulk.run_export(world.store, world.output, export.export_id)
    assert ended is not None and ended.state == "complete" and erased
    bodies = [world.output.read(f"{ended.directory}/{f['name']}") for f in ended.output]
    held = [orjson.loads(line) for body in bodies for line in body.splitlines()]
    assert held and {owner(r) for r in held} == {("simulated", third.user_id)}


def test_a_run_that_dies_fails_the_export_and_expiry_deletes_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = world.token()
    kicked = world.get("Patient/$export", token, KICK_OFF)
    status = kicked.headers["Content-Location"]
    [request] = world.sensor_tick()

    def dies(*args: Any, **kwargs: Any) -> None:
        bulk._set(world.store, request.run_key, bulk.LIVE, state="running")
        raise MemoryError("the process ran out of memory")

    monkeypatch.setattr(bulk, "run_export", dies)
    assert not world.run(request).success
    assert world.get(status, token).status_code == 202  # the row still says running
    assert world.sensor_tick() == []
    failed = world.get(status, token)
    assert (
        failed.status_code == 500 and "kick off again" in failed.json()["issue"][0]["diagnostics"]
    )
    assert validate_resource(failed.json()) == []
    monkeypatch.undo()
    monkeypatch.setattr(bulk, "SETTLE_S", 0.0)
    done = world.export(token)
    export = bulk.get(world.store, done["status"].rsplit("/", 1)[-1])
    assert export is not None and export.finished_us is not None
    assert "Expires" in world.get(done["status"], token).headers
    at = export.finished_us + bulk.EXPIRES_S * 10**6
    assert bulk.expire(world.store, world.output, at) == 1  # the failed one, finished before
    assert world.get(done["status"], token).status_code == 200
    assert bulk.expire(world.store, world.output, at + 1) == 1
    assert world.get(done["status"], token).status_code == 404
    assert world.output.names(export.directory) == []


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_an_export_holds_each_resource_of_its_cohort_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """For any cohort, any `_type` set and files cut at any size: every resource the cohort's
    people own in the published files is in the export exactly once, as published, and nothing
    of anyone else."""
    world = _shared_world(tmp_path_factory)
    people = data.draw(
        st.lists(st.sampled_from(world.people), min_size=1, unique_by=lambda p: p.user_id)
    )
    types = data.draw(st.sets(st.sampled_from(bulk.TYPES), min_size=1))
    cut = data.draw(st.sampled_from([1, 700, 20_000, bulk.FILE_BYTES]))
    group = f"g{uuid.uuid4().hex[:12]}"
    groups.add_group(world.store, group, patients=[p.fhir_patient_id for p in people], actor="t")
    export = bulk.kick_off(world.store, client_id=world.client.client_id, group_id=group,
                           types=types, since_us=None, request="urn:test")  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bulk, "FILE_BYTES", cut)
        ended = bulk.run_export(world.store, world.output, export.export_id, settle_s=0)
    assert ended is not None and ended.state == "complete"
    found: dict[tuple[str, str], dict] = {}
    for f in ended.output:
        for line in world.output.read(f"{ended.directory}/{f['name']}").splitlines():
            resource = orjson.loads(line)
            key = (resource["resourceType"], resource["id"])
            assert key not in found
            found[key] = resource
    assert found == world.published(world.owners(*people), types)


_WORLDS: dict[str, World] = {}


def _shared_world(factory: pytest.TempPathFactory) -> World:
    """Two days of three people published, for the property test (built once)."""
    if "world" not in _WORLDS:
        root = factory.mktemp("bulk-property")
        simulator = SimulatedSource(3, hr_hz=0.01, clock=lambda: NOW)
        store = RecordStore(f"sqlite:///{root / 'ohx.db'}", migrate_schema=True)
        output = FhirOutput(str(root / "fhir"))
        store.add_users(simulator.discover_users())
        world = World(root, "", dg.DagsterInstance.ephemeral())
        world.setup(store, output, simulator)
        sync_partition(
            world.source, store, [DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)], now=NOW
        )
        world.publish(DAY)
        world.publish(DAY + timedelta(days=1))
        _WORLDS["world"] = world
    return _WORLDS["world"]


def test_a_repeated_resource_whose_recorded_file_lost_it_is_still_exported_once(
    world: World,
) -> None:
    """A Patient's change row names a file that no longer holds it (stripped since): the export
    takes its newest other copy, once."""
    person = world.people[0]
    with world.store.write() as conn:
        conn.execute(
            fhir_changes.update()
            .where(fhir_changes.c.resource_type == "Patient",
                   fhir_changes.c.resource_id == person.fhir_patient_id)
            .values(partition_key="2026-01-01|simulated")
        )  # fmt: skip
    export = bulk.kick_off(world.store, client_id=world.client.client_id, group_id=None,
                           types=["Patient"], since_us=None, request="urn:test")  # fmt: skip
    ended = bulk.run_export(world.store, world.output, export.export_id, settle_s=0)
    assert ended is not None and ended.state == "complete"
    body = b"".join(world.output.read(f"{ended.directory}/{f['name']}") for f in ended.output)
    ids = [orjson.loads(line)["id"] for line in body.splitlines()]
    assert sorted(ids) == sorted(p.fhir_patient_id for p in world.people)
