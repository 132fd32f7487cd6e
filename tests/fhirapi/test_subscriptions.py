"""R5 topic-based Subscriptions as a subscriber meets them: a client creates a rest-hook
Subscription for one patient, its local receiver (a real HTTP server) gets the handshake, one
notification per published commit that changed the patient's Observations and none for anyone
else, heartbeats when nothing happens, and, across an outage of a minute, every event number
once delivery resumes, in order and without a gap. `$status`, `$events` and every Bundle validate
against R5. Delivery runs on a clock the test moves (the Deliverer's), and once on the API
process's own thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from test_fhir_api import Key, jwks

from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.validation import validate_resource
from ohx_dagster.fhirapi import clients, subscriptions
from ohx_dagster.fhirapi.app import create_app
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.erasure import erase_person
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

DAY = date(2026, 11, 10)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
HEART_RATE = "8867-4"
SCOPE = "system/Subscription.crd system/Observation.r"


class Receiver:
    """A subscriber's rest-hook endpoint: records every Bundle; `down` answers 503."""

    def __init__(self) -> None:
        self.bundles: list[dict] = []
        self.down = False
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = orjson.loads(await request.body())
            if self.down:
                return Response(status_code=503)
            with self.lock:
                self.bundles.append(body)
            return Response(status_code=200)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def of(self, kind: str) -> list[dict]:
        return [b for b in self.bundles if b["entry"][0]["resource"]["type"] == kind]


class Clock:
    def __init__(self) -> None:
        self.us = to_us(datetime.now(UTC))

    def __call__(self) -> int:
        return self.us

    def advance(self, seconds: float) -> None:
        self.us += int(seconds * 1_000_000)


class World:
    def __init__(self, root: Path) -> None:
        self.simulator = SimulatedSource(2, hr_hz=0.01, clock=lambda: NOW)
        self.source = Windowed(self.simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
        self.store = RecordStore(f"sqlite:///{root / 'ohx.db'}", migrate_schema=True)
        self.output = FhirOutput(str(root / "fhir"))
        self.people = self.simulator.discover_users()
        self.store.add_users(self.people)
        sync_partition(self.source, self.store, [DAY - timedelta(days=1), DAY], now=NOW)
        self.publish(DAY)
        self.key = Key("ES384", "sub-1")
        self.client = clients.add_client(self.store, "alerts", jwks(self.key), SCOPE, actor="t")

    def publish(self, day: date) -> None:
        publish_partition(self.store, self.output, provider="simulated", key="simulated",
                          shard=Shard("simulated"), day=day, scope=None, now=NOW,
                          horizon=timedelta(hours=1))  # fmt: skip

    def new_day(self, day: date) -> None:
        sync_partition(self.source, self.store, [day], now=NOW)
        self.publish(day)

    def delete_hour(self, person: Any, day: date, hour: int) -> None:
        config = self.store.user("simulated", person.user_id)
        start = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=hour)
        empty = self.source.fetch_windows(config, {}).batch.iloc[:0]
        span = (to_us(start), to_us(start + timedelta(hours=1)))
        self.store.commit("simulated", person.user_id, config.zone, empty,
                          replace={"heart_rate": [span]})  # fmt: skip
        self.publish(day)

    def observations(self, person: Any, day: date) -> dict[str, dict]:
        directory = partition_dir(day, "simulated")
        patient = f"Patient/{person.fhir_patient_id}"
        found = {}
        for entry in self.output.manifest(directory)["output"]:
            for r in self.output.read_resources(f"{directory}/{entry['url'].rsplit('/', 1)[-1]}"):
                subject = r.get("subject", {}).get("reference")
                if r["resourceType"] == "Observation" and subject == patient:
                    found[r["id"]] = r
        return found


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.store.dispose()


@pytest.fixture
def served(world: World) -> Iterator[dict[str, Any]]:
    """The API without its delivery thread (the test ticks the Deliverer on its own clock) and
    a receiver."""
    receiver, clock = Receiver(), Clock()
    app = create_app(world.store, world.output, deliver=False)
    deliverer: subscriptions.Deliverer = app.state.deliverer
    deliverer.clock = clock
    with serve_in_thread(app) as base, serve_in_thread(receiver.app()) as hook:
        yield {"base": base, "hook": f"{hook}/hook", "receiver": receiver, "clock": clock,
               "deliverer": deliverer}  # fmt: skip


def token(world: World, base: str, scope: str = SCOPE) -> str:
    signed = world.key.assertion(world.client.client_id, f"{base}/fhir/auth/token")
    answer = httpx.post(f"{base}/fhir/auth/token", data={
        "grant_type": "client_credentials", "client_assertion_type": clients.ASSERTION_TYPE,
        "client_assertion": signed, "scope": scope})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def subscription(hook: str, patient: str, **changes: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Subscription", "status": "requested", "topic": subscriptions.TOPIC_URL,
        "filterBy": [{"filterParameter": "patient", "value": f"Patient/{patient}"}],
        "channelType": {"system": subscriptions.CHANNEL_SYSTEM, "code": "rest-hook"},
        "endpoint": hook, "contentType": "application/fhir+json", "content": "id-only",
        "heartbeatPeriod": 60,
    }  # fmt: skip
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def post(base: str, bearer: str, body: Any) -> httpx.Response:
    return httpx.post(f"{base}/fhir/Subscription", content=orjson.dumps(body),
                      headers={"Authorization": f"Bearer {bearer}",
                               "Content-Type": "application/fhir+json"})  # fmt: skip


def numbers(bundle: dict) -> list[int]:
    status = bundle["entry"][0]["resource"]
    return [int(e["eventNumber"]) for e in status.get("notificationEvent", [])]


def test_handshake_notifications_outage_heartbeat_status_and_events(
    world: World, served: dict[str, Any]
) -> None:
    base, receiver, clock = served["base"], served["receiver"], served["clock"]
    deliverer: subscriptions.Deliverer = served["deliverer"]
    person = world.people[0]
    bearer = token(world, base)
    topic = httpx.get(f"{base}/fhir/SubscriptionTopic/patient-observations").json()
    assert validate_resource(topic) == [] and topic["url"] == subscriptions.TOPIC_URL

    created = post(base, bearer, subscription(served["hook"], person.fhir_patient_id))
    assert created.status_code == 201, created.text
    resource = created.json()
    assert resource["status"] == "active" and validate_resource(resource) == []
    url = created.headers["Location"]
    assert url == f"{base}/fhir/Subscription/{resource['id']}"
    [handshake] = receiver.bundles
    assert validate_resource(handshake) == [], validate_resource(handshake)
    assert handshake["type"] == "subscription-notification"
    assert handshake["entry"][0]["resource"]["type"] == "handshake"
    auth = {"Authorization": f"Bearer {bearer}"}
    assert httpx.get(url, headers=auth).json() == resource

    # A publish of the person's new day: one notification naming exactly its Observations.
    clock.advance(1)
    world.new_day(DAY + timedelta(days=1))
    assert deliverer.tick() == 1
    [first] = receiver.of("event-notification")
    assert validate_resource(first) == [], validate_resource(first)
    focus = {e["focus"]["reference"] for e in first["entry"][0]["resource"]["notificationEvent"]}
    assert focus == {
        f"Observation/{i}" for i in world.observations(person, DAY + timedelta(days=1))
    }
    assert numbers(first) == list(range(1, len(focus) + 1))
    assert deliverer.tick() == 0  # nothing pending, no heartbeat due

    # The receiver is down for a minute; two commits for the person happen meanwhile (and one
    # for the other person, which no subscription wants).
    receiver.down = True
    world.delete_hour(person, DAY + timedelta(days=1), 10)
    for _ in range(8):  # ticks during the outage: each fails, backing off 1, 2, 4 ... s
        clock.advance(8)
        deliverer.tick()
    world.new_day(DAY + timedelta(days=2))
    clock.advance(4)
    deliverer.tick()
    assert len(receiver.of("event-notification")) == 1
    held = subscriptions.get(world.store, resource["id"])
    assert held is not None and held.attempts >= 3 and "503" in held.error
    receiver.down = False
    clock.advance(subscriptions.MAX_BACKOFF_S)
    assert deliverer.tick() == 2
    notes = receiver.of("event-notification")
    assert len(notes) == 3
    every = [n for bundle in notes for n in numbers(bundle)]
    assert every == list(range(1, len(every) + 1))  # no gap, no repeat, in order
    for bundle in notes:
        assert validate_resource(bundle) == []
        status = bundle["entry"][0]["resource"]
        assert int(status["eventsSinceSubscriptionStart"]) == numbers(bundle)[-1]
    corrected = {
        e["focus"]["reference"] for e in notes[1]["entry"][0]["resource"]["notificationEvent"]
    }
    withdrawn = world.observations(person, DAY + timedelta(days=1))
    assert any(withdrawn[r.split("/")[1]]["status"] == "entered-in-error" for r in corrected)

    # Quiet for a heartbeat period: a heartbeat.
    clock.advance(61)
    deliverer.tick()
    [heartbeat] = receiver.of("heartbeat")
    assert validate_resource(heartbeat) == []
    assert heartbeat["entry"][0]["resource"]["eventsSinceSubscriptionStart"] == str(every[-1])

    # $status and $events (catching up from event 2, full resources).
    status = httpx.get(f"{url}/$status", headers=auth).json()
    assert validate_resource(status) == [] and status["type"] == "searchset"
    assert status["entry"][0]["resource"]["eventsSinceSubscriptionStart"] == str(every[-1])
    asked = {"eventsSinceNumber": 2, "content": "full-resource"}
    caught = httpx.get(f"{url}/$events", headers=auth, params=asked).json()
    assert validate_resource(caught) == [], validate_resource(caught)
    assert numbers(caught) == every[1:]
    resources = [e["resource"] for e in caught["entry"][1:]]
    assert resources and all(r["subject"]["reference"].endswith(person.fhir_patient_id)
                             for r in resources)  # fmt: skip
    assert (
        httpx.get(f"{url}/$events", headers=auth, params={"eventsSinceNumber": "x"}).status_code
        == 400
    )

    # Audited: the create, each notification (the person as their subject, never their id).
    rows = audit.read(world.store)
    assert sum(r.action == "subscribe" for r in rows) == 1
    assert sum(r.action == "notify" for r in rows) == 3
    assert all(person.user_id not in r.detail for r in rows)

    deleted = httpx.delete(url, headers=auth)
    assert deleted.status_code == 204 and httpx.get(url, headers=auth).status_code == 404
    world.new_day(DAY + timedelta(days=3))
    clock.advance(120)
    assert deliverer.tick() == 0 and len(receiver.of("event-notification")) == 3


def test_a_code_filter_and_the_other_person(world: World, served: dict[str, Any]) -> None:
    base, receiver = served["base"], served["receiver"]
    person, other = world.people
    bearer = token(world, base)
    filters = [{"filterParameter": "patient", "value": f"Patient/{other.fhir_patient_id}"},
               {"filterParameter": "code", "value": f"http://loinc.org|{HEART_RATE}"}]  # fmt: skip
    created = post(base, bearer, subscription(served["hook"], "", filterBy=filters))
    assert created.status_code == 201, created.text
    served["clock"].advance(1)
    world.delete_hour(person, DAY, 9)  # the first person's change: nothing for this one
    assert served["deliverer"].tick() == 0
    world.delete_hour(other, DAY, 9)
    assert served["deliverer"].tick() == 1
    [note] = receiver.of("event-notification")
    ids = [
        e["focus"]["reference"].split("/")[1]
        for e in note["entry"][0]["resource"]["notificationEvent"]
    ]
    held = world.observations(other, DAY)
    assert ids and all(HEART_RATE in orjson.dumps(held[i]["code"]).decode() for i in ids)


@pytest.mark.parametrize(
    ("changes", "status", "says"),
    [
        ({"topic": "http://example.org/topic"}, 400, "topic"),
        (
            {"channelType": {"system": subscriptions.CHANNEL_SYSTEM, "code": "email"}},
            400,
            "rest-hook",
        ),
        ({"endpoint": "http://hooks.example.org/x"}, 400, "https"),
        ({"content": "empty"}, 400, "content"),
        ({"heartbeatPeriod": 1}, 400, "heartbeatPeriod"),
        ({"filterBy": []}, 400, "patient"),
        ({"filterBy": [{"filterParameter": "subject", "value": "x"}]}, 400, "subject"),
        ({"status": "bogus"}, 400, "valid R5"),
        ({"maxCount": 10}, 400, "maxCount"),
        ({"parameter": [{"name": "Authorization", "value": "Bearer x"}]}, 400, "parameter"),
        ({"filterBy": [{"filterParameter": "patient", "value": "Patient/nobody"}]}, 404, "nobody"),
    ],
)
def test_bad_subscriptions_are_refused(
    world: World, served: dict[str, Any], changes: dict, status: int, says: str
) -> None:
    bearer = token(world, served["base"])
    body = subscription(served["hook"], world.people[0].fhir_patient_id, **changes)
    answer = post(served["base"], bearer, body)
    assert answer.status_code == status, answer.text
    assert (
        validate_resource(answer.json()) == [] and says in answer.json()["issue"][0]["diagnostics"]
    )
    assert served["receiver"].bundles == []


def test_scopes_handshake_failure_and_erasure(world: World, served: dict[str, Any]) -> None:
    base, receiver = served["base"], served["receiver"]
    person = world.people[0]
    read_only = token(world, base, "system/Observation.r")
    assert (
        post(base, read_only, subscription(served["hook"], person.fhir_patient_id)).status_code
        == 403
    )
    bearer = token(world, base)
    receiver.down = True
    failed = post(base, bearer, subscription(served["hook"], person.fhir_patient_id))
    assert failed.status_code == 201 and failed.json()["status"] == "error"
    assert "503" in failed.json()["reason"] and validate_resource(failed.json()) == []
    receiver.down = False
    active = post(base, bearer, subscription(served["hook"], person.fhir_patient_id)).json()
    assert active["status"] == "active"
    erase_person(world.store, world.output, None, "simulated", person.user_id, requested_by="t")
    auth = {"Authorization": f"Bearer {bearer}"}
    assert httpx.get(f"{base}/fhir/Subscription/{active['id']}", headers=auth).status_code == 404


def test_the_api_process_delivers_on_its_own(world: World, tmp_path: Path) -> None:
    """With its delivery thread (as `ohx fhir serve` runs), a publish reaches the receiver."""
    receiver = Receiver()
    app = create_app(world.store, world.output)
    with serve_in_thread(app) as base, serve_in_thread(receiver.app()) as hook:
        bearer = token(world, base)
        created = post(base, bearer, subscription(f"{hook}/hook", world.people[1].fhir_patient_id))
        assert created.json()["status"] == "active"
        world.new_day(DAY + timedelta(days=1))
        # Generous: the thread ticks every second; a slow machine must not fail this.
        deadline = time.monotonic() + 120
        while not receiver.of("event-notification"):
            assert time.monotonic() < deadline, "no notification within 120 s"
            time.sleep(0.2)
    assert numbers(receiver.of("event-notification")[0])[0] == 1


def test_each_realtime_step_that_publishes_the_patient_is_one_notification(
    tmp_path: Path, store_url: str
) -> None:
    """The realtime worker answers webhooks: a step that publishes the subscribed patient's new
    data is one notification, numbered on from the last; a step for someone else is none (on
    SQLite and PostgreSQL: the numbers are reserved by the publishing commit's UPDATE)."""
    from ohx_dagster.providers.webhook.events import NewEvent
    from ohx_dagster.publish.partitions import validate_sample
    from ohx_dagster.realtime.worker import RealtimeWorker
    from ohx_dagster.sync.inbox import Inbox
    from ohx_dagster.sync.shards import Sharding

    synced = datetime(2026, 11, 30, 12, tzinfo=UTC)
    clock = [synced]
    simulator = SimulatedSource(2, hr_hz=0.2, clock=lambda: clock[0])
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
    store = RecordStore(store_url, migrate_schema=True)
    output = FhirOutput(str(tmp_path / "fhir"))
    people = simulator.discover_users()
    store.add_users(people)
    sync_partition(source, store, synced.date(), now=synced)
    worker = RealtimeWorker(
        store, output, sharding=Sharding({"simulated": 1}), first_day=date(2026, 11, 1),
        source_of=lambda provider: source, horizon_of=lambda provider: timedelta(hours=1),
        validate=validate_sample,
    )  # fmt: skip
    sent: list[dict] = []

    def post(endpoint: str, body: bytes) -> int:
        sent.append(orjson.loads(body))
        return 200

    from ohx_dagster.fhirapi.search import Published

    deliverer = subscriptions.Deliverer(store, Published(store, output), post=post)
    asked = subscriptions.Request(people[0].fhir_patient_id, (), "https://hooks.example/x",
                                  "id-only", 0)  # fmt: skip
    created = subscriptions.create(store, client_id="c", client_name="alerts", request=asked,
                                   person=people[0], base="https://fhir.example")  # fmt: skip
    assert deliverer.handshake(created).status == "active"
    inbox = Inbox(store)
    for minute, person in ((10, people[0]), (20, people[1]), (30, people[0])):
        clock[0] = synced + timedelta(minutes=minute)
        inbox.add([NewEvent("simulated", f"{person.user_id}-{minute}", person.user_id,
                            "heart_rate", clock[0], {})])  # fmt: skip
        assert worker.step(clock[0]).events == 1
        deliverer.tick()
    notes = [b for b in sent if b["entry"][0]["resource"]["type"] == "event-notification"]
    assert len(notes) == 2
    every = [n for bundle in notes for n in numbers(bundle)]
    assert every == list(range(1, len(every) + 1)) and all(numbers(b) for b in notes)
    for bundle in notes:
        assert validate_resource(bundle) == []
    store.dispose()


def test_two_commits_at_once_take_distinct_consecutive_numbers(
    tmp_path: Path, store_url: str
) -> None:
    """Two partitions of the subscribed person published at the same moment by two threads
    (two runs): their events' numbers are 1..N, each once, each commit's consecutive."""
    from concurrent.futures import ThreadPoolExecutor

    from ohx_dagster.storage.schema import fhir_subscription_events, fhir_subscriptions

    simulator = SimulatedSource(1, hr_hz=0.01, clock=lambda: NOW)
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"], timedelta(hours=1))
    store = RecordStore(store_url, migrate_schema=True)
    output = FhirOutput(str(tmp_path / "fhir"))
    [person] = simulator.discover_users()
    store.add_users([person])
    days = [DAY + timedelta(days=i) for i in range(4)]
    sync_partition(source, store, days, now=NOW)
    asked = subscriptions.Request(person.fhir_patient_id, (), "https://hooks.example/x",
                                  "id-only", 0)  # fmt: skip
    created = subscriptions.create(store, client_id="c", client_name="alerts", request=asked,
                                   person=person, base="https://fhir.example")  # fmt: skip
    with store.write() as conn:
        conn.execute(fhir_subscriptions.update().values(status="active"))

    def publish(day: date) -> None:
        publish_partition(store, output, provider="simulated", key="simulated",
                          shard=Shard("simulated"), day=day, scope=None, now=NOW,
                          horizon=timedelta(hours=1))  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(publish, days))
    with store.read() as conn:
        rows = conn.execute(fhir_subscription_events.select()).all()
    numbers_ = sorted(int(r.event_number) for r in rows)
    assert numbers_ == list(range(1, len(rows) + 1)) and len(rows) > 4
    by_note: dict[int, list[int]] = {}
    for r in rows:
        by_note.setdefault(int(r.notification), []).append(int(r.event_number))
    assert len(by_note) == 4
    for taken in by_note.values():
        assert sorted(taken) == list(range(min(taken), max(taken) + 1))
    held = subscriptions.get(store, created.subscription_id)
    assert held is not None and held.events == len(rows)
    store.dispose()
