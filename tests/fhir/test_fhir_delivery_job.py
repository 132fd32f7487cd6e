"""The whole sync job for a simulated partition, in process, delivering to a real local FHIR
server: every NDJSON resource arrives once, re-runs change nothing, an outage mid-run (503s, then
refused connections) loses nothing and the run after recovery delivers the rest, once; a server
that lost or altered what it acknowledged fails `server_confirms`. Without a server,
fhir_delivery succeeds as "skipped".

A whole run of the simulated partition takes about 8 s (the sync of a simulated day), so runs
that only retry the delivery re-execute the fhir_delivery step alone, as "re-execute from
failure" does in the UI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from fhir_test_server import FhirServer, running_fhir_server

from ohx_dagster.config.settings import Settings
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.delivery.outbox import partition_counts as outbox_counts
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.storage.store import RecordStore

DAY = "2025-01-05"
PARTITION = f"{DAY}|simulated"
BATCH = 25
DELIVERY = dg.AssetKey("fhir_delivery")


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


def _settings(home: Path) -> Settings:
    return Settings.from_env(
        {"OHX_HOME": str(home), "OHX_PARTITIONS_START": "2025-01-01", "OHX_SIMULATED_USERS": "2"}
    )


def _configure(monkeypatch: pytest.MonkeyPatch, server: FhirServer) -> None:
    """The server as an operator configures it: OHX_FHIR_* variables (a secret as EnvVar)."""
    for name, value in {
        "OHX_FHIR_SERVER_URL": server.url,
        "OHX_FHIR_BEARER_TOKEN": server.token,
        "OHX_FHIR_BATCH_SIZE": str(BATCH),
        "OHX_FHIR_MAX_RETRIES": "1",  # one retry per transaction
        "OHX_FHIR_RETRY_BACKOFF_S": "0",
        "OHX_FHIR_STEP_RETRIES": "1",  # one step retry, then the run fails
        "OHX_FHIR_STEP_RETRY_WAIT_S": "0",
    }.items():
        monkeypatch.setenv(name, value)


def _run(
    defs: dg.Definitions, instance: dg.DagsterInstance, delivery_only: bool = False
) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("sync_partition").execute_in_process(
        partition_key=PARTITION,
        instance=instance,
        raise_on_error=False,
        asset_selection=[DELIVERY] if delivery_only else None,
    )


def _delivery(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key == DELIVERY]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.check_name: e.passed
        for e in result.get_asset_check_evaluations()
        if e.asset_key == DELIVERY
    }


def _key(resource: dict) -> str:
    """How the server finds a resource: its identifier, or its id without one (Provenance)."""
    if resource.get("identifier"):
        return resource["identifier"][0]["value"]
    return f"{resource['resourceType']}/{resource['id']}"


def _ndjson_identifiers(settings: Settings) -> list[str]:
    """The identifiers of every resource the partition's manifest names."""
    output = FhirOutput(settings.fhir_dir)
    manifest = output.manifest(f"{DAY}/simulated")
    return [
        _key(r)
        for entry in manifest["output"]
        for r in output.read_resources(f"{DAY}/simulated/{entry['url'].rsplit('/', 1)[-1]}")
    ]


def _held_once(server: FhirServer) -> dict[str, int]:
    """identifier -> how many resources on the server hold it."""
    held: dict[str, int] = {}
    for resource in server.resources.values():
        value = _key(resource)
        held[value] = held.get(value, 0) + 1
    return held


def test_outage_then_recovery_delivers_every_resource_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FhirServer
) -> None:
    _configure(monkeypatch, server)
    settings = _settings(tmp_path)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    store = RecordStore(settings.database_url)

    # 1. Two transactions go through, then the server answers 503 to every attempt: the step
    #    retries once, then the run fails. Upstream assets are materialized; nothing is lost.
    server.faults = [None, None] + ["503"] * 4
    first = _run(defs, instance)
    assert not first.success
    identifiers = _ndjson_identifiers(settings)
    total = len(identifiers)
    assert total > 3 * BATCH and len(set(identifiers)) == total
    assert server.transactions == 2 and len(server.resources) == 2 * BATCH
    counts = outbox_counts(store, PARTITION)
    assert counts == {
        "total": total,
        "delivered": 2 * BATCH,
        "pending": total - 2 * BATCH,
        "failed": BATCH,  # the batch that was tried; the rest were never sent
    }
    retried = [e for e in first.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [e.step_key for e in retried] == ["fhir_delivery"]
    failure = [e for e in first.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failure] == ["fhir_delivery"]
    assert "unavailable" in failure[0].event_specific_data.error.message

    # 2. The server is gone altogether (connections refused): the run fails, nothing changes.
    server.stop()
    second = _run(defs, instance, delivery_only=True)
    assert not second.success
    assert outbox_counts(store, PARTITION)["pending"] == total - 2 * BATCH

    # 3. Recovered: the next run delivers the rest, each resource exactly once.
    server.start()
    third = _run(defs, instance, delivery_only=True)
    assert third.success
    assert _checks(third) == {"outbox_drained": True, "server_confirms": True}
    metadata = _delivery(third)
    assert metadata["sent"] == total - 2 * BATCH and metadata["unchanged"] == 2 * BATCH
    assert (metadata["pending"], metadata["failed"], metadata["resources"]) == (0, 0, total)
    assert metadata["server"] == server.url and metadata["status"] == "delivered"
    assert _held_once(server) == dict.fromkeys(identifiers, 1)
    assert server.creates == total
    assert set(server.versions().values()) == {1}

    # 4. Re-running the whole partition sends nothing and changes nothing on the server.
    transactions = server.transactions
    fourth = _run(defs, instance)
    assert fourth.success and _checks(fourth) == {"outbox_drained": True, "server_confirms": True}
    metadata = _delivery(fourth)
    assert (metadata["sent"], metadata["unchanged"], metadata["transactions"]) == (0, total, 0)
    assert server.transactions == transactions
    assert _held_once(server) == dict.fromkeys(identifiers, 1)
    assert set(server.versions().values()) == {1}

    # 5. Someone edits one resource on the server and deletes another: the outbox still says
    #    all is delivered, so nothing is re-sent, but server_confirms (every resource sampled)
    #    reads them back by identifier and fails, naming both.
    monkeypatch.setenv("OHX_FHIR_CONFIRM_SAMPLE", str(total))
    defs = build_definitions(settings)
    keys = sorted(server.resources)
    server.resources[keys[0]] = {**server.resources[keys[0]], "status": "entered-in-error"}
    del server.resources[keys[1]]
    fifth = _run(defs, instance, delivery_only=True)
    assert fifth.success
    assert _checks(fifth) == {"outbox_drained": True, "server_confirms": False}
    [evaluation] = [
        e for e in fifth.get_asset_check_evaluations() if e.check_name == "server_confirms"
    ]
    problems = evaluation.metadata["problems"].value
    assert len(problems) == 2
    assert any("other content in ['status']" in p for p in problems)
    assert any("0 resources hold its identifier" in p for p in problems)
    store.dispose()


def test_without_a_server_delivery_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OHX_FHIR_SERVER_URL", raising=False)
    defs = build_definitions(_settings(tmp_path))
    result = _run(defs, dg.DagsterInstance.ephemeral(), delivery_only=True)
    assert result.success
    metadata = _delivery(result)
    assert metadata["skipped"] is True and str(metadata["status"]).startswith("skipped")
    assert _checks(result) == {"outbox_drained": True, "server_confirms": True}


def test_an_attempt_that_failed_before_queueing_is_made_good_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FhirServer
) -> None:
    """The first attempt dies before the partition is queued (the database is locked); the
    step's retry queues it and delivers every resource: the checks compare the server with the
    partition's files, so an empty queue could never pass them."""
    from sqlalchemy.exc import OperationalError

    import assets.fhir_delivery as delivery_asset

    _configure(monkeypatch, server)
    settings = _settings(tmp_path)
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    real = delivery_asset.enqueue_partition
    calls = []

    def locked_once(*args, **kwargs):
        calls.append(args[-1])
        if len(calls) == 1:
            raise OperationalError("INSERT INTO fhir_outbox", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(delivery_asset, "enqueue_partition", locked_once)
    result = _run(defs, instance)
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [e.step_key for e in retried] == ["fhir_delivery"]
    identifiers = _ndjson_identifiers(settings)
    assert _checks(result) == {"outbox_drained": True, "server_confirms": True}
    assert _held_once(server) == dict.fromkeys(identifiers, 1)
