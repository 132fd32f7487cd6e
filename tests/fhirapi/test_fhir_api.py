"""The FHIR API as a hospital's system meets it: a real HTTP server (uvicorn) on a store with a
simulated day published, clients registered with their JWKS, tokens asked for with assertions
signed RS384 and ES384, and every refusal SMART Backend Services and FHIR name: an unknown
client, a bad signature, an expired, far-future or replayed assertion, the wrong audience, a
scope not allowed; no token, an expired or revoked one, a scope that does not cover the type, a
parameter that cannot be read, a patient not here. Searches return exactly the person's
published Observations, page by page; reads and tokens are audited, never with an id in clear."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.validation import validate_resource
from ohx_dagster.fhirapi import clients
from ohx_dagster.fhirapi.app import create_app
from ohx_dagster.fhirapi.search import SearchError, effective_range, parse_date
from ohx_dagster.privacy import audit
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.schema import fhir_tokens
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

DAY = date(2026, 11, 10)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
HEART_RATE = "8867-4"


class Key:
    """A client's key pair and its public JWK."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kid = kid
        if kind == "RS384":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP384R1())
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.algorithm = kind
        self.jwk = {**public, "kid": kid}

    def assertion(self, client_id: str, aud: str, **changes: Any) -> str:
        claims = {"iss": client_id, "sub": client_id, "aud": aud,
                  "exp": int(time.time()) + 240, "jti": uuid.uuid4().hex}  # fmt: skip
        claims.update(changes.pop("claims", {}))
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {"kid": self.kid, "typ": "JWT", **changes.pop("headers", {})}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)


def jwks(*keys: Key) -> bytes:
    return orjson.dumps({"keys": [k.jwk for k in keys]})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store with two simulated people's day published, served by a real server."""
    root = tmp_path_factory.mktemp("fhirapi")
    simulator = SimulatedSource(2, hr_hz=0.01, clock=lambda: NOW)
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
    store = RecordStore(f"sqlite:///{root / 'ohx.db'}", migrate_schema=True)
    output = FhirOutput(str(root / "fhir"))
    store.add_users(simulator.discover_users())
    sync_partition(source, store, [DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)], now=NOW)
    publish_partition(store, output, provider="simulated", key="simulated",
                      shard=Shard("simulated"), day=DAY, scope=None, now=NOW,
                      horizon=timedelta(hours=1))  # fmt: skip
    rsa_key, ec_key = Key("RS384", "rsa-1"), Key("ES384", "ec-1")
    client = clients.add_client(store, "hospital-ehr", jwks(rsa_key, ec_key),
                                "system/Observation.rs system/Patient.r", actor="test")  # fmt: skip
    narrow = clients.add_client(store, "research", jwks(Key("RS384", "r-1")),
                                "system/Observation.s", actor="test")  # fmt: skip
    app = create_app(store, output)
    with serve_in_thread(app) as base:
        yield {"store": store, "output": output, "base": base, "client": client,
               "rsa": rsa_key, "ec": ec_key, "narrow": narrow,
               "people": simulator.discover_users()}  # fmt: skip
    store.dispose()


def ask_token(world: dict[str, Any], assertion: str, scope: str = "system/Observation.rs",
              **form: str) -> httpx.Response:  # fmt: skip
    body = {"grant_type": "client_credentials", "client_assertion_type": clients.ASSERTION_TYPE,
            "client_assertion": assertion, "scope": scope, **form}  # fmt: skip
    return httpx.post(f"{world['base']}/fhir/auth/token", data=body)


def token_for(world: dict[str, Any], key: str = "rsa", scope: str = "system/Observation.rs "
              "system/Patient.r") -> str:  # fmt: skip
    signed = world[key].assertion(world["client"].client_id, f"{world['base']}/fhir/auth/token")
    answer = ask_token(world, signed, scope)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def published_of(world: dict[str, Any], patient_id: str) -> dict[str, dict]:
    """The person's Observations as the day's published files hold them (read directly)."""
    output, directory = world["output"], partition_dir(DAY, "simulated")
    found = {}
    for entry in output.manifest(directory)["output"]:
        for resource in output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}"):
            if (resource["resourceType"] == "Observation"
                    and resource["subject"]["reference"] == f"Patient/{patient_id}"):  # fmt: skip
                found[resource["id"]] = resource
    return found


def unstamped(resource: dict[str, Any]) -> dict[str, Any]:
    """A served resource without the meta.lastUpdated the API adds: as its file holds it."""
    meta = {k: v for k, v in resource.get("meta", {}).items() if k != "lastUpdated"}
    rest = {k: v for k, v in resource.items() if k != "meta"}
    return {**rest, "meta": meta} if meta else rest


def fhir_get(world: dict[str, Any], path: str, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{world['base']}/fhir/{path}", params=params, headers=headers)


def test_metadata_and_smart_configuration_say_what_the_server_does(world) -> None:
    statement = httpx.get(f"{world['base']}/fhir/metadata")
    assert statement.status_code == 200
    assert statement.headers["content-type"].startswith("application/fhir+json")
    body = statement.json()
    assert validate_resource(body) == []
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert [i["code"] for i in resources["Patient"]["interaction"]] == ["read"]
    assert [i["code"] for i in resources["Observation"]["interaction"]] == ["read", "search-type"]
    assert [o["definition"] for o in resources["Patient"]["operation"]] == [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    ]
    assert [o["definition"] for o in resources["Group"]["operation"]] == [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
    ]
    assert [i["code"] for i in resources["Subscription"]["interaction"]] == [
        "create", "read", "delete",
    ]  # fmt: skip
    assert {o["name"] for o in resources["Subscription"]["operation"]} == {"status", "events"}
    # Nothing else is claimed: each type it names has a route that answers (401: needs a token).
    assert set(resources) == {
        "Patient", "Observation", "Group", "Subscription", "SubscriptionTopic",
    }  # fmt: skip
    for name in ("Observation", "Group", "Patient/x", "Group/x/$export", "Subscription/x"):
        assert httpx.get(f"{world['base']}/fhir/{name}").status_code == 401, name
    assert httpx.get(f"{world['base']}/fhir/SubscriptionTopic").status_code == 200
    smart = httpx.get(f"{world['base']}/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == f"{world['base']}/fhir/auth/token"
    assert smart["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert smart["grant_types_supported"] == ["client_credentials"]
    # Asymmetric client authentication, and scopes in SMART v2's grammar only.
    assert smart["capabilities"] == ["client-confidential-asymmetric", "permission-v2"]


@pytest.mark.parametrize("key", ["rsa", "ec"])
def test_a_signed_assertion_gets_a_five_minute_token_of_the_allowed_scopes(world, key) -> None:
    signed = world[key].assertion(world["client"].client_id, f"{world['base']}/fhir/auth/token")
    # Asked for more than it may have: given the part a registered scope covers.
    answer = ask_token(world, signed, "system/Observation.rs system/Patient.rs")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Observation.rs"
    patient = world["people"][0].fhir_patient_id
    assert fhir_get(world, "Observation", body["access_token"], patient=patient).status_code == 200


REFUSALS = [
    # (what, how the request is made from a good one, the OAuth error)
    ("unknown client", {"claims": {"iss": "ohxc-nobody", "sub": "ohxc-nobody"}}, "invalid_client"),
    ("signed by another key", {"other_key": True}, "invalid_client"),
    # exp_in: exp this many seconds after the request is signed (not after collection: a slow
    # run may reach the test long after the module was imported).
    ("expired", {"exp_in": -120}, "invalid_client"),
    ("exp over five minutes ahead", {"exp_in": 3600}, "invalid_client"),
    ("another audience", {"claims": {"aud": "https://elsewhere.example/token"}},
     "invalid_client"),
    ("no jti", {"claims": {"jti": None}}, "invalid_client"),
    ("sub differs from iss", {"claims": {"sub": "someone-else"}}, "invalid_client"),
    ("unknown kid", {"headers": {"kid": "nope"}}, "invalid_client"),
    ("a jku to fetch", {"headers": {"jku": "https://attacker.example/jwks"}}, "invalid_client"),
    ("HS256", {"hs256": True}, "invalid_client"),
    ("not a JWT", {"raw": "not.a.jwt"}, "invalid_client"),
    ("a scope it may not have", {"scope": "system/Patient.s"}, "invalid_scope"),
    ("a v1 scope", {"scope": "system/Observation.read"}, "invalid_scope"),
    ("another grant type", {"form": {"grant_type": "password"}}, "unsupported_grant_type"),
    ("another assertion type", {"form": {"client_assertion_type": "x"}}, "invalid_request"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "error"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_bad_token_request_is_refused_with_its_oauth_error(world, what, change, error):
    client_id, aud = world["client"].client_id, f"{world['base']}/fhir/auth/token"
    key = Key("RS384", "rsa-1") if change.get("other_key") else world["rsa"]
    if change.get("hs256"):
        signed = jwt.encode({"iss": client_id, "sub": client_id, "aud": aud, "jti": "x",
                             "exp": int(time.time()) + 60}, "secret" * 8, algorithm="HS256",
                            headers={"kid": "rsa-1"})  # fmt: skip
    elif "raw" in change:
        signed = change["raw"]
    else:
        claims = dict(change.get("claims", {}))
        if "exp_in" in change:
            claims["exp"] = int(time.time()) + change["exp_in"]
        signed = key.assertion(client_id, aud, claims=claims,
                               headers=change.get("headers", {}))  # fmt: skip
    with world["store"].read() as conn:
        before = conn.execute(fhir_tokens.select()).all()
    answer = ask_token(world, signed, change.get("scope", "system/Observation.rs"),
                       **change.get("form", {}))  # fmt: skip
    assert answer.status_code == 400, (what, answer.text)
    assert answer.json()["error"] == error and answer.json()["error_description"]
    assert "ohxa_" not in answer.text
    with world["store"].read() as conn:
        assert conn.execute(fhir_tokens.select()).all() == before  # no token issued


def test_a_replayed_assertion_is_refused(world) -> None:
    signed = world["ec"].assertion(world["client"].client_id, f"{world['base']}/fhir/auth/token")
    assert ask_token(world, signed).status_code == 200
    again = ask_token(world, signed)
    assert again.status_code == 400 and "used before" in again.json()["error_description"]


def test_a_search_returns_exactly_the_persons_observations_page_by_page(world) -> None:
    token = token_for(world)
    person = world["people"][1]
    want = published_of(world, person.fhir_patient_id)
    assert len(want) > 60  # enough for several pages
    seen: list[dict] = []
    url = f"{world['base']}/fhir/Observation"
    params: dict[str, Any] | None = {"patient": f"Patient/{person.fhir_patient_id}", "_count": 25}
    while url:
        page = httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        assert page.status_code == 200, page.text
        bundle = page.json()
        assert bundle["type"] == "searchset" and bundle["total"] == len(want)
        assert len(bundle["entry"]) <= 25
        seen += [e["resource"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        params = None
    assert [r["id"] for r in seen] == sorted(
        {r["id"] for r in seen}, key=[r["id"] for r in seen].index
    )
    # Each once, as published, with when it last changed added.
    assert all(r["meta"]["lastUpdated"] for r in seen)
    assert {r["id"]: unstamped(r) for r in seen} == want
    starts = [effective_range(r)[0] for r in seen]
    assert starts == sorted(starts)
    assert validate_resource(page.json()) == []


def test_code_and_date_narrow_the_search(world) -> None:
    token = token_for(world)
    person = world["people"][0]
    want = published_of(world, person.fhir_patient_id)
    heart = fhir_get(world, "Observation", token, patient=person.fhir_patient_id,
                     code=f"http://loinc.org|{HEART_RATE}", _count=1000).json()  # fmt: skip
    expected = {i for i, r in want.items()
                if any(c["code"] == HEART_RATE for c in r["code"]["coding"])}  # fmt: skip
    assert {e["resource"]["id"] for e in heart["entry"]} == expected and expected
    # The hours from 06:00 UTC to noon: every resource whose span reaches into them, no other.
    low, high = "2026-11-10T06:00:00Z", "2026-11-10T12:00:00Z"
    auth = {"Authorization": f"Bearer {token}"}
    narrowed = httpx.get(f"{world['base']}/fhir/Observation", headers=auth,
                         params=[("patient", person.fhir_patient_id), ("date", f"ge{low}"),
                                 ("date", f"lt{high}"), ("_count", "1000")]).json()  # fmt: skip
    lo, hi = to_us(datetime.fromisoformat(low)), to_us(datetime.fromisoformat(high))
    expected = {
        i for i, r in want.items() if (s := effective_range(r)) and s[1] >= lo and s[0] < hi
    }
    assert {e["resource"]["id"] for e in narrowed["entry"]} == expected
    assert 0 < len(expected) < len(want)


def test_fhir_refusals_are_operation_outcomes_with_the_right_status(world) -> None:
    token = token_for(world)
    patient = world["people"][0].fhir_patient_id
    narrow_key = Key("RS384", "r-1")  # not the registered one: registered below
    cases = [
        (fhir_get(world, "Observation", None, patient=patient), 401),
        (fhir_get(world, "Observation", "ohxa_forged", patient=patient), 401),
        (fhir_get(world, "Observation", token, patient=patient, _sort="date"), 400),
        (fhir_get(world, "Observation", token, patient=patient, date="2026-13-45"), 400),
        (fhir_get(world, "Observation", token, patient=patient, date="ge2026-11-10T06:00"), 400),
        (fhir_get(world, "Observation", token, patient=patient, _count="0"), 400),
        (fhir_get(world, "Observation", token), 400),
        (fhir_get(world, "Observation", token, patient="nobody"), 404),
        (fhir_get(world, "Patient/nobody", token), 404),
    ]
    for answer, status in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        body = answer.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["diagnostics"]
        assert validate_resource(body) == []
    assert narrow_key.kid == "r-1"
    # A token without Patient in its scopes reads no Patient.
    observations_only = token_for(world, scope="system/Observation.rs")
    refused = fhir_get(world, "Patient/" + patient, observations_only)
    assert refused.status_code == 403 and "system/Patient.r" in refused.text
    found = fhir_get(world, "Patient/" + patient, token)
    assert found.status_code == 200 and found.json()["id"] == patient


def test_an_expired_or_revoked_token_stops_working(world, tmp_path: Path) -> None:
    store = world["store"]
    patient = world["people"][0].fhir_patient_id
    token = token_for(world)
    with store.write() as conn:
        conn.execute(fhir_tokens.update().values(expires_us=to_us(datetime.now(UTC)) - 1))
    assert fhir_get(world, "Observation", token, patient=patient).status_code == 401
    key = Key("ES384", "temp-1")
    temp = clients.add_client(store, "temporary", jwks(key), "system/Observation.s", actor="test")
    signed = key.assertion(temp.client_id, f"{world['base']}/fhir/auth/token")
    granted = ask_token(world, signed, "system/Observation.s").json()["access_token"]
    assert fhir_get(world, "Observation", granted, patient=patient).status_code == 200
    assert clients.remove_client(store, "temporary", actor="test")
    assert fhir_get(world, "Observation", granted, patient=patient).status_code == 401


def test_tokens_and_reads_are_audited_without_an_id_in_clear(world) -> None:
    token = token_for(world)
    person = world["people"][1]
    fhir_get(world, "Observation", token, patient=person.fhir_patient_id, _count="3")
    rows = audit.read(world["store"])
    reads = [r for r in rows if r.action == "read" and r.actor == "fhir client hospital-ehr"
             and r.outcome == "ok"]  # fmt: skip
    tokens = [r for r in rows if r.action == "token" and r.actor == "fhir client hospital-ehr"]
    assert reads and tokens and all(len(r.subject) == 64 for r in reads)
    assert "3 resources" in reads[-1].detail
    for row in rows:
        assert person.user_id not in row.detail and person.fhir_patient_id not in row.detail


def test_a_jwks_with_a_private_key_or_a_short_rsa_key_is_refused() -> None:
    key = Key("RS384", "k")
    private = jwt.algorithms.RSAAlgorithm.to_jwk(key.private, as_dict=True)
    with pytest.raises(Exception, match="private key"):
        clients.parse_jwks(orjson.dumps({"keys": [{**private, "kid": "k"}]}))
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(short.public_key(), as_dict=True)
    with pytest.raises(Exception, match="2048"):
        clients.parse_jwks(orjson.dumps({"keys": [{**jwk, "kid": "k"}]}))
    with pytest.raises(Exception, match="kid"):
        clients.parse_jwks(orjson.dumps({"keys": [jwt.algorithms.ECAlgorithm.to_jwk(
            ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)]}))  # fmt: skip


@given(st.text(max_size=40))
@settings(max_examples=examples(300), deadline=None)
def test_any_date_parameter_is_read_or_refused_by_name(text: str) -> None:
    try:
        found = parse_date(text)
    except SearchError as exc:
        assert str(exc)
        return
    assert found.low_us < found.high_us


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1),
                    timezones=st.just(UTC)))  # fmt: skip
@settings(max_examples=examples(300), deadline=None)
def test_an_instant_is_on_its_day_and_on_one_side_of_every_bound(moment: datetime) -> None:
    """eq of its own day holds an instant; for any bound, exactly one of lt and ge holds."""
    stamp = to_us(moment)
    assert parse_date(f"eq{moment.date().isoformat()}").holds(stamp, stamp)
    bound = moment.replace(microsecond=0).isoformat()
    assert parse_date(f"lt{bound}").holds(stamp, stamp) != parse_date(f"ge{bound}").holds(
        stamp, stamp
    )


def test_one_assertion_sent_twice_at_once_gets_one_token(store: RecordStore) -> None:
    """The replay check holds between two requests at once, on SQLite and PostgreSQL."""
    from concurrent.futures import ThreadPoolExecutor

    key = Key("ES384", "k-1")
    client = clients.add_client(store, "twice", jwks(key), "system/Observation.s", actor="test")
    url = "https://fhir.example/fhir/auth/token"
    form = {"grant_type": "client_credentials", "client_assertion_type": clients.ASSERTION_TYPE,
            "client_assertion": key.assertion(client.client_id, url),
            "scope": "system/Observation.s"}  # fmt: skip

    def attempt(_: int) -> str:
        try:
            return clients.issue_token(store, form, url)[1]["access_token"]
        except clients.TokenError as exc:
            return exc.error

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(attempt, range(2)))
    assert answers[0] == "invalid_client" and answers[1].startswith("ohxa_")


def test_an_erased_person_is_not_found_and_their_data_never_served(tmp_path: Path) -> None:
    """After `ohx users delete`, their Patient is 404, a search for them is 404, and no search
    for anyone else returns a resource of theirs."""
    from ohx_dagster.privacy.erasure import erase_person

    simulator = SimulatedSource(2, hr_hz=0.01, clock=lambda: NOW)
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}", migrate_schema=True)
    output = FhirOutput(str(tmp_path / "fhir"))
    people = simulator.discover_users()
    store.add_users(people)
    sync_partition(source, store, [DAY], now=NOW)
    publish_partition(store, output, provider="simulated", key="simulated",
                      shard=Shard("simulated"), day=DAY, scope=None, now=NOW,
                      horizon=timedelta(hours=1))  # fmt: skip
    key = Key("ES384", "e-1")
    client = clients.add_client(store, "ehr", jwks(key), "system/Observation.rs system/Patient.r",
                                actor="test")  # fmt: skip
    gone, kept = people
    with serve_in_thread(create_app(store, output)) as base:
        world = {"base": base, "client": client, "ec": key}
        token = token_for(world, "ec")
        before = fhir_get(world, "Observation", token, patient=gone.fhir_patient_id)
        assert before.status_code == 200 and before.json()["total"] > 0
        erase_person(store, output, None, "simulated", gone.user_id, requested_by="test")
        assert fhir_get(world, "Patient/" + gone.fhir_patient_id, token).status_code == 404
        after = fhir_get(world, "Observation", token, patient=gone.fhir_patient_id)
        assert after.status_code == 404
        other = fhir_get(world, "Observation", token, patient=kept.fhir_patient_id, _count=1000)
        assert other.status_code == 200 and other.json()["total"] > 0
        assert gone.fhir_patient_id not in other.text and gone.user_id not in other.text
    store.dispose()


def test_an_observation_is_read_by_id_with_when_it_last_changed(world) -> None:
    token = token_for(world)
    person = world["people"][0]
    search = fhir_get(world, "Observation", token, patient=person.fhir_patient_id, _count=5)
    first = search.json()["entry"][0]["resource"]
    assert first["meta"]["lastUpdated"].endswith("Z")
    read = fhir_get(world, f"Observation/{first['id']}", token)
    assert read.status_code == 200 and read.json() == first
    assert validate_resource(read.json()) == []
    published = published_of(world, person.fhir_patient_id)[first["id"]]
    assert unstamped(read.json()) == published  # the file's resource, meta.lastUpdated added
    assert fhir_get(world, "Observation/0000", token).status_code == 404
    search_only = token_for(world, scope="system/Observation.s")
    assert fhir_get(world, f"Observation/{first['id']}", search_only).status_code == 403


def test_last_updated_finds_exactly_what_a_later_publish_changed(tmp_path: Path) -> None:
    """A provider deletes an hour of a person's heart rate after the day was published: a
    search with _lastUpdated after the first publish returns exactly the resources the second
    changed (the withdrawn hour among them), and nothing of the other person."""
    simulator = SimulatedSource(2, hr_hz=0.01, clock=lambda: NOW)
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}", migrate_schema=True)
    output = FhirOutput(str(tmp_path / "fhir"))
    people = simulator.discover_users()
    store.add_users(people)
    sync_partition(source, store, [DAY], now=NOW)

    def publish() -> None:
        publish_partition(store, output, provider="simulated", key="simulated",
                          shard=Shard("simulated"), day=DAY, scope=None, now=NOW,
                          horizon=timedelta(hours=1))  # fmt: skip

    publish()
    key = Key("ES384", "e-1")
    client = clients.add_client(store, "ehr", jwks(key), "system/Observation.rs", actor="test")
    person = people[1]
    with serve_in_thread(create_app(store, output)) as base:
        world = {"base": base, "client": client, "ec": key}
        token = token_for(world, "ec", "system/Observation.rs")
        before = {e["resource"]["id"]: e["resource"] for e in fhir_get(
            world, "Observation", token, patient=person.fhir_patient_id, _count=1000
        ).json()["entry"]}  # fmt: skip
        time.sleep(0.01)
        between = datetime.now(UTC)
        time.sleep(0.01)
        start = datetime.combine(DAY, datetime.min.time(), UTC) + timedelta(hours=10)
        hour = (to_us(start), to_us(start + timedelta(hours=1)))
        config = store.user("simulated", person.user_id)
        kept = source.fetch_windows(config, {}).batch.iloc[:0]
        store.commit("simulated", person.user_id, config.zone, kept,
                     replace={"heart_rate": [hour]})  # fmt: skip
        publish()
        stamp = between.isoformat().replace("+00:00", "Z")
        changed = fhir_get(world, "Observation", token, patient=person.fhir_patient_id,
                           _lastUpdated=f"gt{stamp}", _count=1000).json()  # fmt: skip
        after = {e["resource"]["id"]: e["resource"] for e in fhir_get(
            world, "Observation", token, patient=person.fhir_patient_id, _count=1000
        ).json()["entry"]}  # fmt: skip
        expected = {i for i, r in after.items()
                    if i not in before or unstamped(before[i]) != unstamped(r)}  # fmt: skip
        assert {e["resource"]["id"] for e in changed["entry"]} == expected
        assert any(after[i]["status"] == "entered-in-error" for i in expected)
        other = fhir_get(world, "Observation", token, patient=people[0].fhir_patient_id,
                         _lastUpdated=f"gt{stamp}").json()  # fmt: skip
        assert other["total"] == 0
    store.dispose()


def test_every_published_resource_has_its_change_row_pointing_at_its_file(world) -> None:
    """fhir_changes holds one row per resource the current files hold (for the people), each
    naming the partition and bucket whose file holds it, and no row for anything else."""
    from ohx_dagster.fhir.delivery.outbox import owner
    from ohx_dagster.storage.schema import fhir_changes, fhir_files

    store, output = world["store"], world["output"]
    with store.read() as conn:
        files = conn.execute(fhir_files.select()).all()
        rows = {(r.resource_type, r.resource_id): r for r in conn.execute(fhir_changes.select())}
    held = {}
    for file in files:
        day, _, source = file.partition_key.partition("|")
        path = f"{partition_dir(date.fromisoformat(day), source)}/{file.name}"
        for resource in output.read_resources(path):
            if owner(resource)[1]:
                held[(resource["resourceType"], resource["id"])] = (file.partition_key, file.bucket)
    assert held and set(rows) == set(held)
    for key, (partition, bucket) in held.items():
        assert (rows[key].partition_key, rows[key].bucket) == (partition, bucket), key
