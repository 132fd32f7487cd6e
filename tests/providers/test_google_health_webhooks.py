"""Google Health webhooks end to end: the subscriber verification, notifications signed with a
P-256 key of ours served as a Tink JSON keyset from a local server (forged, wrong key, unknown or
rotated key id, replay), the documented body -> inbox events, and the realtime path: a signed
notification -> receiver -> inbox -> webhook sensor -> push run -> records -> FHIR, a DELETE
notification removing what Google no longer holds."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from provider_api_server import FakeApi, answer, documented
from test_providers_google_health import (
    PROVIDER,
    WATCH,
    FakeGoogleHealth,
    heart,
    steps,
)

from ohx_dagster.config.receiver import (
    GOOGLE_HEALTH_KEYSET_URL,
    GoogleHealthSecrets,
    WebhookSecrets,
)
from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError, ValidationError
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import utc_day
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.api.tokens import OAuthTokens, connect_user
from ohx_dagster.providers.google_health.keyset import (
    KeysetCache,
    KeysetUnavailable,
    parse_keyset,
)
from ohx_dagster.providers.google_health.source import rfc3339
from ohx_dagster.providers.google_health.webhook import body_items, parse_notification
from ohx_dagster.providers.webhook.signatures import SignatureRejected
from ohx_dagster.publish.partitions import partition_dir
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox
from resources import RecordStoreResource

AUTHORIZATION = "Bearer example-secret-token"  # the guide's own example secret
KEYSET_PATH = "/googlehealthapi/webhooks/webhooks_public_keyset.json"
ROUTE = "/webhooks/google_health"
USER_ID = "2515055256096816351"
HR_CODE = "8867-4"


# -- a Tink keyset of ours ---------------------------------------------------------------------


def _field(number: int, data: bytes) -> bytes:
    return bytes([number << 3 | 2, len(data)]) + data


def _coordinate(value: int) -> bytes:
    """A big-endian integer as Tink stores it: a leading 0x00 when the high bit is set."""
    raw = value.to_bytes(32, "big")
    return b"\x00" + raw if raw[0] & 0x80 else raw


def tink_key(key_id: int, private: ec.EllipticCurvePrivateKey, prefix: str = "TINK",
             encoding: int = 2) -> dict:  # fmt: skip
    """One `Keyset.Key` in Tink's JSON: an EcdsaPublicKey proto {2: params {1: SHA256 = 3,
    2: NIST_P256 = 2, 3: encoding}, 3: x, 4: y}, base64 in keyData.value."""
    numbers = private.public_key().public_numbers()
    params = bytes([0x08, 3, 0x10, 2, 0x18, encoding])
    value = (
        _field(2, params) + _field(3, _coordinate(numbers.x)) + _field(4, _coordinate(numbers.y))
    )
    template = documented(PROVIDER, "keyset")["key"][0]
    template["keyData"]["value"] = base64.b64encode(value).decode()
    return {**template, "keyId": key_id, "outputPrefixType": prefix}


def tink_keyset(*keys: dict) -> dict:
    return {"primaryKeyId": keys[0]["keyId"], "key": list(keys)}


def sign(body: bytes, private: ec.EllipticCurvePrivateKey, key_id: int, prefix: str = "TINK",
         p1363: bool = False) -> str:  # fmt: skip
    """Tink's signature: prefix (TINK 0x01, LEGACY/CRUNCHY 0x00, then the key id; RAW none) ||
    ECDSA-P256-SHA256 of the body (LEGACY: body || 0x00), DER or IEEE P1363 (r || s)."""
    data = body + b"\x00" if prefix == "LEGACY" else body
    signature = private.sign(data, ec.ECDSA(hashes.SHA256()))
    if p1363:
        r, s = decode_dss_signature(signature)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    head = {"TINK": b"\x01", "LEGACY": b"\x00", "CRUNCHY": b"\x00", "RAW": b""}[prefix]
    kid = key_id.to_bytes(4, "big") if prefix != "RAW" else b""
    return base64.b64encode(head + kid + signature).decode()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- the keyset format -------------------------------------------------------------------------


def test_googles_published_key_reads_as_p256_sha256_der() -> None:
    """keyset.json holds a real key of Google's gstatic keyset (33-byte coordinates)."""
    keyset = parse_keyset(orjson.dumps(documented(PROVIDER, "keyset")), "keyset.json")
    [key] = keyset.keys
    assert (key.key_id, key.prefix, key.encoding) == (1912453410, "TINK", 2)
    assert isinstance(key.key.curve, ec.SECP256R1) and key.hash is hashes.SHA256
    # Our key cannot pass for Google's.
    body = orjson.dumps(documented(PROVIDER, "notification"))
    forged = base64.b64decode(sign(body, new_key(), 1912453410))
    assert keyset.verify(body, forged) is False
    assert keyset.verify(body, base64.b64decode(sign(body, new_key(), 7))) is None


def test_tink_prefixes_and_encodings() -> None:
    tink, legacy, raw, p1363 = new_key(), new_key(), new_key(), new_key()
    keyset = parse_keyset(
        orjson.dumps(
            tink_keyset(
                tink_key(1, tink),
                tink_key(2, legacy, "LEGACY"),
                tink_key(3, raw, "RAW"),
                tink_key(4, p1363, encoding=1),
                {**tink_key(5, new_key()), "status": "DISABLED"},
                {**tink_key(6, new_key()), "keyData": {"typeUrl": "type.googleapis.com/other"}},
            )
        ),
        "ours",
    )
    assert {k.key_id for k in keyset.keys} == {1, 2, 3, 4}
    body = b'{"data": {}}'

    def verdict(signature: str, data: bytes = body) -> bool | None:
        return keyset.verify(data, base64.b64decode(signature))

    assert verdict(sign(body, tink, 1)) is True
    assert verdict(sign(body, legacy, 2, "LEGACY")) is True
    assert verdict(sign(body, raw, 3, "RAW")) is True
    assert verdict(sign(body, p1363, 4, p1363=True)) is True
    assert verdict(sign(body, tink, 1), body + b" ") is False  # one byte more
    assert verdict(sign(body, legacy, 1)) is False  # key 1 did not sign it
    no_raw = parse_keyset(orjson.dumps(tink_keyset(tink_key(1, tink))), "ours")
    assert no_raw.verify(body, base64.b64decode(sign(body, tink, 99))) is None
    with pytest.raises(KeysetUnavailable, match="no enabled ECDSA public key"):
        parse_keyset(b'{"primaryKeyId": 1, "key": []}', "empty")


def test_the_keyset_cache_refetches_for_an_unknown_key_at_most_every_interval(tmp_path) -> None:
    first, second = new_key(), new_key()
    path = tmp_path / "keyset.json"
    path.write_bytes(orjson.dumps(tink_keyset(tink_key(1, first))))
    clock = [0.0]
    cache = KeysetCache(str(path), ttl_s=600, refetch_every_s=30, clock=lambda: clock[0])
    body = b"{}"
    cache.verify(body, sign(body, first, 1), "X-HEALTHAPI-SIGNATURE")
    assert cache.fetches == 1
    path.write_bytes(orjson.dumps(tink_keyset(tink_key(1, first), tink_key(2, second))))
    cache.verify(body, sign(body, second, 2), "X-HEALTHAPI-SIGNATURE")  # rotated: fetched again
    assert cache.fetches == 2
    with pytest.raises(SignatureRejected, match="key id 3, not in Google's keyset"):
        cache.verify(body, sign(body, new_key(), 3), "X-HEALTHAPI-SIGNATURE")
    assert cache.fetches == 2  # within 30 s of the last forced fetch: none
    clock[0] = 31.0
    with pytest.raises(SignatureRejected):
        cache.verify(body, sign(body, new_key(), 3), "X-HEALTHAPI-SIGNATURE")
    assert cache.fetches == 3
    # The file goes away: the copy held is used until it is a day old, then nothing verifies.
    path.unlink()
    clock[0] = 700.0
    cache.verify(body, sign(body, first, 1), "X-HEALTHAPI-SIGNATURE")
    clock[0] = 31.0 + 24 * 3600 + 1
    with pytest.raises(KeysetUnavailable, match=r"keyset\.json"):
        cache.verify(body, sign(body, first, 1), "X-HEALTHAPI-SIGNATURE")
    with pytest.raises(SignatureRejected, match="is missing"):
        cache.verify(body, None, "X-HEALTHAPI-SIGNATURE")
    with pytest.raises(SignatureRejected, match="not base64"):
        cache.verify(body, "%%%", "X-HEALTHAPI-SIGNATURE")


# -- the receiver --------------------------------------------------------------------------------


@dataclass
class Google:
    """What Google holds for these tests: its API, its signing key and its published keyset."""

    api: FakeApi
    key: ec.EllipticCurvePrivateKey
    key_id: int
    keyset: dict

    @property
    def keyset_url(self) -> str:
        return f"{self.api.base_url}{KEYSET_PATH}"

    def publish(self, *keys: dict) -> None:
        self.keyset = tink_keyset(*keys)

    def deliver(self, url: str, body: bytes, *, header: str = "X-HEALTHAPI-SIGNATURE",
                signature: str | None = None, authorization: str | None = AUTHORIZATION
                ) -> httpx.Response:  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        headers[header] = signature if signature is not None else sign(body, self.key, self.key_id)
        return httpx.post(f"{url}{ROUTE}", content=body, headers=headers, timeout=10)


@pytest.fixture
def google(api: FakeApi) -> Google:
    key = new_key()
    found = Google(api, key, 1_912_453_410, tink_keyset(tink_key(1_912_453_410, key)))
    api.on(KEYSET_PATH, lambda call: answer(200, found.keyset))
    return found


@contextmanager
def receiver(store: RecordStore, keyset_url: str) -> Iterator[str]:
    secrets = WebhookSecrets(google_health=GoogleHealthSecrets(AUTHORIZATION, keyset_url))
    with serve_in_thread(create_app(store, secrets)) as url:
        yield url


def test_the_subscriber_verification(sqlite_store, google) -> None:
    """Google's two POSTs {"type": "verification"}: 201 with the secret, 401 without it."""
    body = orjson.dumps(documented(PROVIDER, "verification"))
    with receiver(sqlite_store, google.keyset_url) as url, httpx.Client(timeout=10) as http:
        json = {"Content-Type": "application/json"}
        with_secret = http.post(f"{url}{ROUTE}", content=body,
                                headers={**json, "Authorization": AUTHORIZATION})  # fmt: skip
        without = http.post(f"{url}{ROUTE}", content=body, headers=json)
        wrong = http.post(f"{url}{ROUTE}", content=body,
                          headers={**json, "Authorization": "Bearer guessed"})  # fmt: skip
        batched = http.post(f"{url}{ROUTE}", content=b"[" + body + b"]",
                            headers={**json, "Authorization": AUTHORIZATION})  # fmt: skip
        healthz = http.get(f"{url}/healthz").json()
    assert (with_secret.status_code, without.status_code, wrong.status_code) == (201, 401, 401)
    assert batched.status_code == 201
    assert "google_health" in healthz["providers"]
    assert Inbox(sqlite_store).counts()["pending"] == 0
    assert google.api.calls_to(KEYSET_PATH) == []  # a verification is not a signed notification


def test_signed_notifications_and_everything_that_is_not(sqlite_store, google) -> None:
    body = orjson.dumps(documented(PROVIDER, "notification"))
    inbox = Inbox(sqlite_store)
    with receiver(sqlite_store, google.keyset_url) as url:
        accepted = google.deliver(url, body)
        assert (accepted.status_code, accepted.content) == (204, b"")
        [event] = inbox.after(0, 10)
        assert (event.user_id, event.data_type) == ("health-user-id", "steps")
        assert event.occurred_at == datetime(2026, 3, 8, 1, 29, tzinfo=UTC)
        # Google delivers the same notification again: acknowledged, nothing new.
        assert google.deliver(url, body).status_code == 204
        assert len(inbox.after(0, 10)) == 1
        # The newer guide's header name.
        other = body.replace(b"subscription-name", b"b8b0c2de-uuid-2")
        spelled = google.deliver(url, other, header="GOOGLE-HEALTH-API-SIGNATURE")
        assert spelled.status_code == 204 and len(inbox.after(0, 10)) == 2
        forged = body.replace(b"UPSERT", b"DELETE")
        refused = [
            google.deliver(url, forged, signature=sign(body, google.key, google.key_id)),
            google.deliver(url, forged, signature=sign(forged, new_key(), google.key_id)),
            google.deliver(url, forged, signature=""),
            google.deliver(url, forged, authorization=None),
            google.deliver(url, forged, authorization="Bearer guessed"),
        ]
        assert [r.status_code for r in refused] == [401] * 5
        assert "does not verify" in refused[0].json()["error"]
        assert len(google.api.calls_to(KEYSET_PATH)) == 1  # cached
        # Google rotates its key: the new key id is fetched at once.
        rotated = new_key()
        google.publish(tink_key(google.key_id, google.key), tink_key(77, rotated))
        fresh = body.replace(b"subscription-name", b"rotated-uuid")
        assert google.deliver(url, fresh, signature=sign(fresh, rotated, 77)).status_code == 204
        assert len(google.api.calls_to(KEYSET_PATH)) == 2
        # An unknown key id right after: refused without fetching again.
        unknown = google.deliver(url, forged, signature=sign(forged, new_key(), 78))
        assert unknown.status_code == 401 and "key id 78" in unknown.json()["error"]
        assert len(google.api.calls_to(KEYSET_PATH)) == 2
        malformed = google.deliver(url, b'{"data": {"healthUserId": "u"}}')
        assert malformed.status_code == 400 and "dataType" in malformed.json()["error"]
    assert len(inbox.after(0, 10)) == 3


def test_an_unreachable_keyset_is_a_503_and_stores_nothing(sqlite_store, google) -> None:
    google.api.on(KEYSET_PATH, lambda call: answer(500, "unavailable"))
    body = orjson.dumps(documented(PROVIDER, "notification"))
    with receiver(sqlite_store, google.keyset_url) as url:
        answered = google.deliver(url, body)
    assert answered.status_code == 503 and "HTTP 500" in answered.json()["error"]
    assert Inbox(sqlite_store).counts()["pending"] == 0


def test_a_batch_becomes_one_event_per_user_type_and_interval() -> None:
    data = documented(PROVIDER, "notification")["data"]
    second = {"physicalTimeInterval": {"startTime": "2026-03-08T02:00:00Z",
                                       "endTime": "2026-03-08T02:05:00Z"}}  # fmt: skip
    body = orjson.dumps([
        {"data": {**data, "intervals": [*data["intervals"], second]}},
        {"data": {**data, "dataType": "distance"}},
        {"data": {**data, "dataType": "heart-rate", "operation": "DELETE"}},
        {"data": {**data, "dataType": "sleep"}},
        {"data": {**data, "dataType": "exercise"}},
    ])  # fmt: skip
    events = parse_notification(body_items(body))
    # Sleep and Exercise are in the guide's list of webhook data types: each maps to its type.
    assert [(e.data_type, e.ignored_reason is None) for e in events] == [
        ("steps", True), ("steps", True), (None, False), ("heart_rate", True), ("sleep", True),
        ("workout", True),
    ]  # fmt: skip
    assert len({e.event_key for e in events}) == 6
    assert events[1].payload["intervals"] == [second]
    assert "distance" in (events[2].ignored_reason or "")
    assert events[3].payload["operation"] == "DELETE"
    with pytest.raises(ValidationError, match="startTime"):
        bad = {**data, "intervals": [{"physicalTimeInterval": {"startTime": "2026-03-0B01:29"}}]}
        parse_notification(body_items(orjson.dumps({"data": bad})))


def test_the_receivers_settings(tmp_path: Path) -> None:
    assert WebhookSecrets.from_env({}).google_health is None
    env = {"OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION": AUTHORIZATION}
    assert WebhookSecrets.from_env(env).google_health == GoogleHealthSecrets(
        AUTHORIZATION, GOOGLE_HEALTH_KEYSET_URL
    )
    keyset = tmp_path / "keyset.json"
    keyset.write_text("{}")
    for location in (str(keyset), "https://keys.example/k.json", "http://127.0.0.1:8000/k"):
        found = WebhookSecrets.from_env({**env, "OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET": location})
        assert found.google_health is not None
        assert found.google_health.keyset_location == location
    for location in ("http://keys.example/k.json", "http://127.0.0.1:1@evil.example/k",
                     str(tmp_path / "missing.json")):  # fmt: skip
        with pytest.raises(ConfigError, match="OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET"):
            WebhookSecrets.from_env({**env, "OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET": location})
    with pytest.raises(ConfigError, match="OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION is not"):
        WebhookSecrets.from_env({"OHX_GOOGLE_HEALTH_WEBHOOK_KEYSET": str(keyset)})
    with pytest.raises(ConfigError, match="OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION"):
        WebhookSecrets.from_env({"OHX_GOOGLE_HEALTH_WEBHOOK_AUTHORIZATION": "short"})


# -- realtime, end to end --------------------------------------------------------------------


def test_a_signed_notification_becomes_records_and_fhir_and_a_delete_removes_them(
    tmp_path, api, google, token_key, monkeypatch
) -> None:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Five moments of today before now, never across UTC midnight.
    moments = [midnight + (now - midnight) * (i + 1) / 7 for i in range(5)]
    database_url = f"sqlite:///{tmp_path / 'ohx.db'}"
    # The OAuth app and its API (the local server), read where the source is built.
    app = {"OHX_GOOGLE_HEALTH_CLIENT_ID": "cid", "OHX_GOOGLE_HEALTH_CLIENT_SECRET": "cs",
           "OHX_GOOGLE_HEALTH_API_URL": api.base_url,
           "OHX_GOOGLE_HEALTH_TOKEN_URL": f"{api.base_url}/token"}  # fmt: skip
    for name, value in app.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env({
        "OHX_HOME": str(tmp_path), "OHX_DATABASE_URL": database_url,
        "OHX_PARTITIONS_START": (now.date() - timedelta(days=3)).isoformat(),
        "OHX_SOURCES": PROVIDER, **app,
    })  # fmt: skip
    store = RecordStore(database_url)
    person = HealthSyncConfig(user_id=USER_ID, provider=PROVIDER, timezone="UTC")
    connect_user(store, PROVIDER, USER_ID,
                 OAuthTokens("at-1", "rt-1", now + timedelta(days=1)), person)  # fmt: skip
    fake = FakeGoogleHealth(api)
    fake.points[HealthDataType.HEART_RATE] = [
        heart(m, 60 + i, WATCH, offset_s=0) for i, m in enumerate(moments)
    ]
    fake.points[HealthDataType.STEPS] = [steps(m, 30 + i, WATCH, offset_s=0)
                                         for i, m in enumerate(moments)]  # fmt: skip

    def notify(operation: str, data_type: str, name: str) -> bytes:
        interval = {"startTime": rfc3339(moments[0]), "endTime": rfc3339(moments[-1])}
        data = {**documented(PROVIDER, "notification")["data"], "healthUserId": USER_ID,
                "operation": operation, "dataType": data_type,
                "clientProvidedSubscriptionName": name,
                "intervals": [{"physicalTimeInterval": interval}]}  # fmt: skip
        return orjson.dumps([{"data": data}])

    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    sensor = defs.get_sensor_def("webhook_sensor")
    job = defs.resolve_job_def("sync_partition")
    resources = {"store": RecordStoreResource(database_url=database_url)}

    def run_the_sensor(cursor: str | None) -> str:
        context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        result = sensor(context)
        [request] = result.run_requests
        assert request.partition_key == f"{now.date()}|{PROVIDER}"
        run = job.execute_in_process(
            partition_key=request.partition_key, tags=request.tags, instance=instance
        )
        assert run.success
        return result.cursor

    def observations() -> list[dict]:
        output = FhirOutput(settings.fhir_dir)
        resources = output.listed_resources(partition_dir(now.date(), PROVIDER))
        return [r for r in resources if r["resourceType"] == "Observation"]

    keys_url = google.keyset_url
    with receiver(store, keys_url) as url:
        assert google.deliver(url, notify("UPSERT", "heart-rate", "uuid-1")).status_code == 204
        assert google.deliver(url, notify("UPSERT", "steps", "uuid-2")).status_code == 204
    cursor = run_the_sensor(None)
    stored = store.read_records(PROVIDER, utc_day(now.date()))
    assert sorted(stored.loc[stored["data_type"] == "heart_rate", "value"]) == [60, 61, 62, 63, 64]
    assert sorted(stored.loc[stored["data_type"] == "steps", "value"]) == [30, 31, 32, 33, 34]
    assert set(stored["device_id"]) == {"Pixel Watch 3"} and set(stored["utc_offset_min"]) == {0}
    heart_rate = [o for o in observations() if o["code"]["coding"][0]["code"] == HR_CODE]
    sampled = [float(v) for o in heart_rate if "valueSampledData" in o
               for v in o["valueSampledData"]["data"].split() if v != "E"]  # fmt: skip
    assert sorted(sampled) == [60.0, 61.0, 62.0, 63.0, 64.0]
    steps_before = [o for o in observations() if o["code"]["coding"][0]["code"] == "55423-8"]
    assert steps_before

    # The person deletes the steps: Google no longer holds them and says DELETE.
    fake.points[HealthDataType.STEPS] = []
    with receiver(store, keys_url) as url:
        assert google.deliver(url, notify("DELETE", "steps", "uuid-3")).status_code == 204
    run_the_sensor(cursor)
    stored = store.read_records(PROVIDER, utc_day(now.date()))
    assert (stored["data_type"] == "steps").sum() == 0
    assert (stored["data_type"] == "heart_rate").sum() == 5
    # The published steps are retracted, the heart rate stands.
    steps_after = [o for o in observations() if o["code"]["coding"][0]["code"] == "55423-8"]
    assert {o["id"] for o in steps_after} == {o["id"] for o in steps_before}
    assert {o["status"] for o in steps_after} == {"entered-in-error"}
    assert {o["status"] for o in steps_before} != {"entered-in-error"}
    assert [o for o in observations() if o["code"]["coding"][0]["code"] == HR_CODE]
    store.dispose()
