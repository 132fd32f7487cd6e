"""Delivery to a real HTTP FHIR server on 127.0.0.1 that implements transaction Bundles with
conditional update (PUT Type?identifier=system|value), and fails on demand: 500s, 429 with
Retry-After, dropped connections (after applying the transaction). Nothing lost, nothing doubled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fhir_test_server import FhirServer, running_fhir_server

from ohx_dagster.fhir.delivery.auth import BearerToken, ClientCredentials
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import enqueue, pending
from ohx_dagster.storage.schema import fhir_outbox
from ohx_dagster.storage.store import RecordStore


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


@pytest.fixture
def outbox_store(tmp_path) -> Iterator[RecordStore]:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    yield store
    store.dispose()


def _resources(count: int, version: int = 1) -> list[dict]:
    return [
        {
            "resourceType": "Observation",
            "id": f"obs-{i:03d}",
            "identifier": [{"system": "urn:ohx:fhir", "value": f"Observation|sim|u|hr|{i}"}],
            "status": "final",
            "code": {"text": "Heart rate"},
            "valueQuantity": {"value": 60 + version, "code": "/min"},
        }
        for i in range(count)
    ]


def _client(server: FhirServer, **options: object) -> FhirClient:
    return FhirClient(server.url, auth=BearerToken("secret-token"), batch_size=10, **options)


def test_delivers_in_bounded_transactions_and_only_once(server, outbox_store) -> None:
    assert enqueue(outbox_store, "2025-03-04|simulated", _resources(25)) == 25
    report = _client(server).deliver(outbox_store, "2025-03-04|simulated")
    assert (report.sent, report.batches, report.retries) == (25, 3, 0)
    assert report.statuses == {"201": 25}
    assert len(server.resources) == 25 and pending(outbox_store) == []
    # Re-publishing the same partition: nothing pending, nothing sent.
    assert enqueue(outbox_store, "2025-03-04|simulated", _resources(25)) == 0
    assert _client(server).deliver(outbox_store).sent == 0
    assert server.transactions == 3
    # A changed body is sent again and replaces (conditional update), never duplicates.
    assert enqueue(outbox_store, "2025-03-04|simulated", _resources(25, version=2)) == 25
    report = _client(server).deliver(outbox_store)
    assert report.statuses == {"200": 25} and len(server.resources) == 25
    assert {r["valueQuantity"]["value"] for r in server.resources.values()} == {62}


def test_500_429_503_and_dropped_connections_lose_and_double_nothing(server, outbox_store) -> None:
    enqueue(outbox_store, "p", _resources(30))
    server.faults = ["500", "429", "drop-after-apply", "503", "500"]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(min(seconds, 0.05))

    started = time.monotonic()
    report = _client(server, sleep=sleep, backoff_s=0.01).deliver(outbox_store)
    assert report.sent == 30 and report.retries == 5
    assert 1.0 in slept  # Retry-After: 1 from the 429 (and the 503 had none: backoff)
    assert len(server.resources) == 30 and pending(outbox_store) == []
    assert server.transactions == 4  # 3 batches + the one applied before its response was lost
    assert time.monotonic() - started < 10


def test_an_outage_keeps_everything_pending_for_the_next_run(server, outbox_store) -> None:
    enqueue(outbox_store, "p", _resources(20))
    server.faults = ["500"] * 3
    client = _client(server, max_retries=2, backoff_s=0.0)
    with pytest.raises(DeliveryError, match="unavailable after 3 attempts: HTTP 500"):
        client.deliver(outbox_store)
    assert len(pending(outbox_store)) == 20 and server.resources == {}
    with outbox_store.read() as conn:
        errors = [row.last_error for row in conn.execute(fhir_outbox.select())]
    failed = [e for e in errors if e]  # the batch that was tried; the others were never sent
    assert len(failed) == 10 and all("HTTP 500" in e for e in failed)
    assert client.deliver(outbox_store).sent == 20  # the server is back
    assert len(server.resources) == 20 and pending(outbox_store) == []


def test_server_down_entirely_loses_nothing(outbox_store) -> None:
    enqueue(outbox_store, "p", _resources(5))
    client = FhirClient("http://127.0.0.1:9/fhir", max_retries=1, backoff_s=0.0)
    with pytest.raises(DeliveryError, match="ConnectError"):
        client.deliver(outbox_store)
    assert len(pending(outbox_store)) == 5


def test_a_refused_transaction_is_not_retried(server, outbox_store) -> None:
    enqueue(outbox_store, "p", _resources(3))
    server.faults = ["400"]
    with pytest.raises(DeliveryError, match="refused the transaction: HTTP 400"):
        _client(server).deliver(outbox_store)
    assert server.requests == 1 and len(pending(outbox_store)) == 3


def test_client_credentials_fetch_and_reuse_a_token(server, outbox_store) -> None:
    enqueue(outbox_store, "p", _resources(25))
    auth = ClientCredentials(f"{server.url.removesuffix('/fhir')}/token", "ohx", "s3cret")
    FhirClient(server.url, auth=auth, batch_size=10).deliver(outbox_store)
    assert server.token_requests == 1 and len(server.resources) == 25
    wrong = ClientCredentials(f"{server.url.removesuffix('/fhir')}/token", "ohx", "nope")
    enqueue(outbox_store, "p", _resources(1, version=3))
    with pytest.raises(DeliveryError, match=r"token endpoint .* answered 401"):
        FhirClient(server.url, auth=wrong).deliver(outbox_store)


def test_identifier_values_with_bars_survive_the_search_url(server, outbox_store) -> None:
    resources = _resources(2)
    resources[1]["identifier"][0]["value"] = "Observation|a\\b|c,d$e"
    enqueue(outbox_store, "p", resources)
    enqueue(outbox_store, "p", [{**resources[1], "status": "amended"}])
    _client(server).deliver(outbox_store)
    _client(server).deliver(outbox_store)
    assert len(server.resources) == 2
