"""SMART Backend Services against the local FHIR server's token endpoint, which verifies every JWT
client assertion with the client's registered public key (iss = sub = client id, aud = the token
URL, exp at most five minutes ahead, a jti never seen before) and rejects forgeries. Tokens are
cached until shortly before they expire, then fetched anew; a 401 fetches a new one at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir_test_server import ASSERTION_TYPE, FhirServer, running_fhir_server

from ohx_dagster.fhir.delivery.auth import SmartBackendServices
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import enqueue, pending
from ohx_dagster.storage.store import RecordStore
from resources.fhir_server import fhir_server_from_env

CLIENT = "ohx-backend"
KID = "ohx-key-1"


def _pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _new_key(kind: str) -> object:
    if kind == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running_fhir_server() as fhir:
        yield fhir


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    yield record_store
    record_store.dispose()


def _observations(count: int, version: int = 1) -> list[dict]:
    return [
        {
            "resourceType": "Observation",
            "id": f"obs-{i}",
            "identifier": [{"system": "urn:ohx:fhir", "value": f"Observation|smart|{i}"}],
            "status": "final",
            "code": {"text": "Heart rate"},
            "valueQuantity": {"value": 60 + version, "code": "/min"},
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_the_token_endpoint_verifies_the_signed_assertion(server, store, algorithm) -> None:
    key = _new_key(algorithm)
    server.smart_clients[CLIENT] = (key.public_key(), KID)  # type: ignore[attr-defined]
    auth = SmartBackendServices(server.token_url, CLIENT, _pem(key), KID)
    assert auth.algorithm == algorithm

    assertion = auth.client_assertion()
    header = jwt.get_unverified_header(assertion)
    assert (header["alg"], header["kid"], header["typ"]) == (algorithm, KID, "JWT")
    claims = jwt.decode(
        assertion,
        key.public_key(),  # type: ignore[attr-defined]
        algorithms=[algorithm],
        audience=server.token_url,
    )
    assert claims["iss"] == claims["sub"] == CLIENT
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert auth.client_assertion() != assertion  # a fresh jti each time
    assert (
        jwt.decode(auth.client_assertion(), options={"verify_signature": False})["jti"]
        != (claims["jti"])
    )

    enqueue(store, "p", _observations(12))
    FhirClient(server.url, auth=auth, batch_size=5).deliver(store)
    assert server.rejected_assertions == [] and server.token_requests == 1
    assert len(server.resources) == 12 and pending(store) == []


def test_a_forged_or_replayed_assertion_is_rejected(server, store) -> None:
    key = _new_key("ES384")
    server.smart_clients[CLIENT] = (key.public_key(), KID)  # type: ignore[attr-defined]
    # Signed by another key under the registered kid: the delivery stops at the token endpoint.
    forger = SmartBackendServices(server.token_url, CLIENT, _pem(_new_key("ES384")), KID)
    enqueue(store, "p", _observations(3))
    with pytest.raises(DeliveryError, match=r"token endpoint .* answered 401"):
        FhirClient(server.url, auth=forger).deliver(store)
    assert server.rejected_assertions == ["InvalidSignatureError: Signature verification failed"]
    assert server.resources == {} and len(pending(store)) == 3

    genuine = SmartBackendServices(server.token_url, CLIENT, _pem(key), KID)
    assertion = genuine.client_assertion()
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.write",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    assert httpx.post(server.token_url, data=form).status_code == 200
    replayed = httpx.post(server.token_url, data=form)  # the same jti again
    assert replayed.status_code == 401 and "jti replayed" in replayed.text
    # Another audience, and a lifetime beyond five minutes, both signed with the genuine key.
    now = int(time.time())
    for claims, problem in [
        ({"aud": f"{server.origin}/other-token"}, "InvalidAudienceError"),
        ({"exp": now + 600}, "exp more than five minutes ahead"),
        ({"sub": "someone-else"}, "sub != iss"),
    ]:
        forged = jwt.encode(
            {
                "iss": CLIENT,
                "sub": CLIENT,
                "aud": server.token_url,
                "exp": now + 120,
                "jti": f"jti-{problem}",
                **claims,
            },
            key,  # type: ignore[arg-type]
            algorithm="ES384",
            headers={"kid": KID, "typ": "JWT"},
        )
        answer = httpx.post(server.token_url, data={**form, "client_assertion": forged})
        assert answer.status_code == 401 and problem in answer.text, problem
    # Delivery with the genuine key goes through: nothing was lost meanwhile.
    FhirClient(server.url, auth=genuine).deliver(store)
    assert len(server.resources) == 3 and pending(store) == []


def test_tokens_are_cached_until_expiry_then_refreshed(server, store) -> None:
    key = _new_key("RS384")
    server.smart_clients[CLIENT] = (key.public_key(), KID)  # type: ignore[attr-defined]
    server.token_lifetime_s = 300
    now = [1000.0]  # the cache's clock (monotonic seconds), moved by the test
    auth = SmartBackendServices(server.token_url, CLIENT, _pem(key), KID, clock=lambda: now[0])
    client = FhirClient(server.url, auth=auth, batch_size=4)

    enqueue(store, "p", _observations(8))
    client.deliver(store)  # two transactions, one token
    assert server.token_requests == 1
    now[0] += 200  # still valid: cached
    enqueue(store, "p", _observations(8, version=2))
    client.deliver(store)
    assert server.token_requests == 1
    now[0] += 80  # 280 s: within 30 s of expiry, fetched anew with a fresh assertion
    enqueue(store, "p", _observations(8, version=3))
    client.deliver(store)
    assert server.token_requests == 2 and len(server.seen_jti) == 2
    # The server forgets its tokens (a restart, a revocation): 401, a new token, delivered.
    server.issued.clear()
    enqueue(store, "p", _observations(8, version=4))
    report = client.deliver(store)
    assert server.token_requests == 3 and report.sent == 8 and pending(store) == []
    assert {r["valueQuantity"]["value"] for r in server.resources.values()} == {64}


def test_the_resource_configures_smart_from_the_environment(
    server, store, tmp_path, monkeypatch
) -> None:
    key = _new_key("ES384")
    server.smart_clients[CLIENT] = (key.public_key(), KID)  # type: ignore[attr-defined]
    key_file = tmp_path / "ohx-fhir.pem"
    key_file.write_text(_pem(key))
    env = {
        "OHX_FHIR_SERVER_URL": server.url,
        "OHX_FHIR_TOKEN_URL": server.token_url,
        "OHX_FHIR_CLIENT_ID": CLIENT,
        "OHX_FHIR_KEY_ID": KID,
        "OHX_FHIR_PRIVATE_KEY_FILE": str(key_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resource = fhir_server_from_env().process_config_and_initialize()
    auth = resource.auth()
    assert isinstance(auth, SmartBackendServices) and auth.algorithm == "ES384"
    enqueue(store, "p", _observations(5))
    resource.client().deliver(store)
    assert len(server.resources) == 5 and server.rejected_assertions == []

    # The PEM itself in OHX_FHIR_PRIVATE_KEY, squeezed onto one line as env files often hold it.
    monkeypatch.delenv("OHX_FHIR_PRIVATE_KEY_FILE")
    monkeypatch.setenv("OHX_FHIR_PRIVATE_KEY", _pem(key).replace("\n", "\\n"))
    resource = fhir_server_from_env().process_config_and_initialize()
    assert isinstance(resource.auth(), SmartBackendServices)
    assert "PRIVATE KEY" not in repr(resource.auth())
