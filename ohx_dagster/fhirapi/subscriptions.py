"""R5 topic-based Subscriptions: one topic, "new or changed Observations of a patient"
(TOPIC_URL), a client's subscriptions to it with a rest-hook channel, and their delivery.

A subscription names one patient (`filterBy` patient, required) and optionally codes (`filterBy`
code, `system|code` or `code`). Creating it sends the handshake at once: a 2xx answer makes it
`active`, anything else `error` (create it again once the endpoint answers). Its events are
recorded by publishing (ohx_dagster/publish/subscription_events.py), numbered without gaps, one
notification per committed bucket; the Deliverer, a thread of the FHIR API process, sends each
notification in order as a `subscription-notification` Bundle (content `id-only`: the focus
references; `full-resource`: the resources too) and a heartbeat when nothing was sent for
`heartbeatPeriod`. A notification the endpoint does not take (an error, a timeout, no answer) is
sent again after 1, 2, 4 ... 60 s, and nothing after it is sent before it: the receiver sees
every event number once delivery resumes, in order (at least once: a notification whose answer
was lost is sent again). `$status` and `$events` let a subscriber check and catch up; delivered
events are kept EVENTS_KEPT_S for that.

Endpoints must be https, or http to this machine (a local receiver). Audited: each create and
delete (`subscribe`) and each notification delivered (`notify`, the person as their subject).
Several API processes may deliver: a subscription is leased to one at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
import orjson
import sqlalchemy as sa

from ohx_dagster.core.times import iso_us, now_us
from ohx_dagster.fhir.validation import validate_resource
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.storage.schema import fhir_subscription_events, fhir_subscriptions

if TYPE_CHECKING:
    from ohx_dagster.fhirapi.search import Published
    from ohx_dagster.storage.store import RecordStore

TOPIC_URL: Final = "urn:ohx:fhir:SubscriptionTopic:patient-observations"
CHANNEL_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/subscription-channel-type"
CONTENTS: Final = ("id-only", "full-resource")
# Subscription elements this server does not honour: refused rather than silently ignored.
UNSUPPORTED: Final = ("maxCount", "timeout", "end", "parameter")
MAX_HEARTBEAT_S: Final = 86_400
MIN_HEARTBEAT_S: Final = 10
TIMEOUT_S: Final = 10.0
MAX_BACKOFF_S: Final = 60
EVENTS_KEPT_S: Final = 7 * 86_400
TRIM_EVERY_S: Final = 3_600  # delivered events past EVENTS_KEPT_S are deleted this often
BATCH: Final = 1_000
LEASE_S: Final = 60
_US: Final = 1_000_000

log = logging.getLogger("ohx_dagster.fhirapi.subscriptions")


class SubscriptionError(ValueError):
    """A Subscription this server cannot take: the message says why."""


FILTERS: Final = [
    {"resource": "Observation", "filterParameter": "patient",
     "description": "Required: the patient (Patient/ID)."},
    {"resource": "Observation", "filterParameter": "code",
     "description": "Optional: system|code or code; several are any of them."},
]  # fmt: skip


def topic_resource() -> dict[str, Any]:
    return {
        "resourceType": "SubscriptionTopic",
        "id": "patient-observations",
        "url": TOPIC_URL,
        "title": "New or changed observations of a patient",
        "status": "active",
        "description": "An Observation of the patient was published or changed (a correction "
        "is published as entered-in-error).",
        "resourceTrigger": [
            {
                "description": "An Observation is published or changed",
                "resource": "http://hl7.org/fhir/StructureDefinition/Observation",
                "supportedInteraction": ["create", "update"],
            }
        ],
        "canFilterBy": [dict(f) for f in FILTERS],
        "notificationShape": [{"resource": "Observation"}],
    }


@dataclass(frozen=True, slots=True)
class Request:
    """What a client's Subscription asks for."""

    patient_id: str
    codes: tuple[tuple[str | None, str], ...]
    endpoint: str
    content: str
    heartbeat_s: int


def _local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse(body: Any) -> Request:
    """The request a Subscription resource makes, or SubscriptionError naming what is wrong."""
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise SubscriptionError("the body must be a Subscription resource")
    problems = validate_resource(body)
    if problems:
        raise SubscriptionError(f"not a valid R5 Subscription: {problems[0].message}")
    unsupported = [name for name in UNSUPPORTED if name in body]
    if unsupported:
        raise SubscriptionError(
            f"{unsupported[0]} is not supported here (notifications are one per published "
            "commit, sent with no extra headers, with a 10 s timeout, until deleted)"
        )
    if body.get("topic") != TOPIC_URL:
        raise SubscriptionError(f"topic must be {TOPIC_URL} (GET /fhir/SubscriptionTopic)")
    channel = body.get("channelType") or {}
    if (
        channel.get("code") != "rest-hook"
        or channel.get("system", CHANNEL_SYSTEM) != CHANNEL_SYSTEM
    ):
        raise SubscriptionError("channelType must be rest-hook (the only channel served here)")
    endpoint = str(body.get("endpoint", ""))
    parts = urlsplit(endpoint)
    if not parts.hostname or not (
        parts.scheme == "https" or (parts.scheme == "http" and _local(parts.hostname))
    ):
        raise SubscriptionError("endpoint must be an https URL (http only to this machine)")
    content = body.get("content", "id-only")
    if content not in CONTENTS:
        raise SubscriptionError(f"content must be one of {', '.join(CONTENTS)}")
    if body.get("contentType", "application/fhir+json") != "application/fhir+json":
        raise SubscriptionError("contentType must be application/fhir+json")
    heartbeat = int(body.get("heartbeatPeriod", 0))
    if heartbeat and not MIN_HEARTBEAT_S <= heartbeat <= MAX_HEARTBEAT_S:
        raise SubscriptionError(
            f"heartbeatPeriod must be {MIN_HEARTBEAT_S} to {MAX_HEARTBEAT_S} seconds"
        )
    patients, codes = [], []
    for item in body.get("filterBy", []):
        name, value = item.get("filterParameter"), str(item.get("value", ""))
        if item.get("comparator") or item.get("modifier"):
            raise SubscriptionError("filterBy: comparators and modifiers are not supported")
        if name == "patient":
            patients.append(value.removeprefix("Patient/"))
        elif name == "code":
            for token in value.split(","):
                system, bar, code = token.rpartition("|")
                if not code:
                    raise SubscriptionError(f"filterBy code {token!r}: system|code or code")
                codes.append((system if bar else None, code))
        else:
            raise SubscriptionError(f"filterBy {name!r}: the topic filters by patient and code")
    if len(patients) != 1:
        raise SubscriptionError("filterBy must name exactly one patient (Patient/ID)")
    return Request(patients[0], tuple(codes), endpoint, content, heartbeat)


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    client_id: str
    provider: str
    user_id: str
    patient_id: str
    codes: tuple[tuple[str | None, str], ...]
    endpoint: str
    content: str
    heartbeat_s: int
    base: str
    status: str
    error: str
    events: int
    delivered: int
    last_sent_us: int
    attempts: int

    @property
    def url(self) -> str:
        return f"{self.base}/fhir/Subscription/{self.subscription_id}"

    def resource(self) -> dict[str, Any]:
        filters = [{"resourceType": "Observation", "filterParameter": "patient",
                    "value": f"Patient/{self.patient_id}"}]  # fmt: skip
        filters += [
            {"resourceType": "Observation", "filterParameter": "code",
             "value": f"{system}|{code}" if system is not None else code}
            for system, code in self.codes
        ]  # fmt: skip
        resource: dict[str, Any] = {
            "resourceType": "Subscription",
            "id": self.subscription_id,
            "status": self.status,
            "topic": TOPIC_URL,
            "filterBy": filters,
            "channelType": {"system": CHANNEL_SYSTEM, "code": "rest-hook"},
            "endpoint": self.endpoint,
            "contentType": "application/fhir+json",
            "content": self.content,
        }
        if self.heartbeat_s:
            resource["heartbeatPeriod"] = self.heartbeat_s
        if self.status == "error" and self.error:
            resource["reason"] = self.error[:500]
        return resource


def _subscription(row: Any, patient_id: str) -> Subscription:
    return Subscription(
        subscription_id=row.subscription_id, client_id=row.client_id, provider=row.provider,
        user_id=row.user_id, patient_id=patient_id,
        codes=tuple((s, c) for s, c in orjson.loads(row.codes)), endpoint=row.endpoint,
        content=row.content, heartbeat_s=int(row.heartbeat_s), base=row.base, status=row.status,
        error=row.error, events=int(row.events), delivered=int(row.delivered),
        last_sent_us=int(row.last_sent_us), attempts=int(row.attempts),
    )  # fmt: skip


def get(store: RecordStore, subscription_id: str) -> Subscription | None:
    """The subscription, with its person's Patient id (erasing the person deletes it)."""
    s = fhir_subscriptions
    with store.read() as conn:
        row = conn.execute(sa.select(s).where(s.c.subscription_id == subscription_id)).first()
    config = None if row is None else store.user(row.provider, row.user_id)
    return None if config is None else _subscription(row, config.fhir_patient_id)


def create(
    store: RecordStore, *, client_id: str, client_name: str, request: Request, person: Any,
    base: str,
) -> Subscription:  # fmt: skip
    """Record the subscription (requested); the caller sends the handshake."""
    subscription_id = uuid.uuid4().hex
    row = {
        "subscription_id": subscription_id, "client_id": client_id,
        "provider": person.provider, "user_id": person.user_id,
        "codes": orjson.dumps([list(c) for c in request.codes]).decode(),
        "endpoint": request.endpoint, "content": request.content,
        "heartbeat_s": request.heartbeat_s, "base": base, "status": "requested", "error": "",
        "events": 0, "notifications": 0, "delivered": 0, "last_sent_us": 0, "retry_at_us": 0,
        "attempts": 0, "lease_until_us": 0, "created_us": now_us(),
    }  # fmt: skip
    with store.write() as conn:
        conn.execute(fhir_subscriptions.insert().values(**row))
        audit.record(
            conn, actor=f"fhir client {client_name}", action="subscribe",
            subject=subject_hash(person.provider, person.user_id, salt=erasure_salt()),
            detail=f"Subscription/{subscription_id}: {request.content} to an https endpoint"
            if request.endpoint.startswith("https") else
            f"Subscription/{subscription_id}: {request.content} to a local endpoint",
        )  # fmt: skip
    found = get(store, subscription_id)
    assert found is not None
    return found


def delete(store: RecordStore, subscription: Subscription, *, client_name: str) -> None:
    s, e = fhir_subscriptions, fhir_subscription_events
    with store.write() as conn:
        conn.execute(s.delete().where(s.c.subscription_id == subscription.subscription_id))
        conn.execute(e.delete().where(e.c.subscription_id == subscription.subscription_id))
        audit.record(
            conn, actor=f"fhir client {client_name}", action="subscribe",
            subject=subject_hash(subscription.provider, subscription.user_id, salt=erasure_salt()),
            detail=f"Subscription/{subscription.subscription_id}: deleted",
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    number: int
    notification: int
    resource_type: str
    resource_id: str
    at_us: int


def events(
    store: RecordStore, subscription_id: str, since: int, until: int | None = None
) -> list[Event]:
    """Its recorded events numbered after `since` (up to `until`), in order."""
    e = fhir_subscription_events
    query = sa.select(e).where(e.c.subscription_id == subscription_id, e.c.event_number > since)
    if until is not None:
        query = query.where(e.c.event_number <= until)
    with store.read() as conn:
        rows = conn.execute(query.order_by(e.c.event_number).limit(BATCH)).all()
    return [Event(int(r.event_number), int(r.notification), r.resource_type, r.resource_id,
                  int(r.at_us)) for r in rows]  # fmt: skip


def status_resource(
    subscription: Subscription, kind: str, found: Sequence[Event] = (), count: int | None = None
) -> dict[str, Any]:
    """A SubscriptionStatus of `kind` (handshake, heartbeat, event-notification, query-status,
    query-event)."""
    resource: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "status": subscription.status,
        "type": kind,
        "eventsSinceSubscriptionStart": str(subscription.events if count is None else count),
        "subscription": {"reference": subscription.url},
        "topic": TOPIC_URL,
    }
    if found:
        resource["notificationEvent"] = [
            {"eventNumber": str(event.number), "timestamp": iso_us(event.at_us),
             "focus": {"reference": f"{event.resource_type}/{event.resource_id}"}}
            for event in found
        ]  # fmt: skip
    if subscription.error and subscription.status == "error":
        resource["error"] = [{"text": subscription.error[:500]}]
    return resource


def notification(
    subscription: Subscription,
    kind: str,
    found: Sequence[Event] = (),
    *,
    published: Published | None = None,
    content: str | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """A `subscription-notification` Bundle: the status first, then (full-resource) each focus
    as its file holds it now (one withdrawn since is sent as entered-in-error; one gone is only
    referenced)."""
    status = status_resource(subscription, kind, found, count)
    entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status}]
    if (content or subscription.content) == "full-resource" and published is not None:
        # Each focus once (a resource changed twice is two events, one current version), every
        # file read once however many of its resources the events name.
        ids = list(dict.fromkeys(e.resource_id for e in found if e.resource_type == "Observation"))
        held = published.read_many("Observation", ids)
        for resource_id in ids:
            if resource_id in held:
                entries.append({"fullUrl": f"{subscription.base}/fhir/Observation/{resource_id}",
                                "resource": held[resource_id]})  # fmt: skip
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "subscription-notification",
        "timestamp": iso_us(now_us()),
        "entry": entries,
    }


# -- delivery ------------------------------------------------------------------------------


Post = Callable[[str, bytes], int]  # (endpoint, body) -> HTTP status; raises on no answer


def _http_post(client: httpx.Client) -> Post:
    def post(endpoint: str, body: bytes) -> int:
        answer = client.post(endpoint, content=body,
                             headers={"Content-Type": "application/fhir+json"})  # fmt: skip
        return answer.status_code

    return post


class Deliverer:
    """Sends each active subscription's pending notifications in order, and heartbeats."""

    def __init__(
        self,
        store: RecordStore,
        published: Published,
        *,
        post: Post | None = None,
        clock: Callable[[], int] = now_us,
        interval_s: float = 1.0,
    ) -> None:
        self.store, self.published, self.clock, self.interval_s = (
            store,
            published,
            clock,
            interval_s,
        )
        self._client: httpx.Client | None = None
        if post is None:
            self._client = httpx.Client(timeout=TIMEOUT_S)
            post = _http_post(self._client)
        self.post = post
        self._stop = threading.Event()
        self._trimmed_us = 0
        self._thread: threading.Thread | None = None
        self.salt = erasure_salt()

    def _send(self, subscription: Subscription, bundle: Mapping[str, Any]) -> str | None:
        """None when the endpoint took it (2xx), else why not."""
        try:
            status = self.post(subscription.endpoint, orjson.dumps(bundle))
        except (httpx.HTTPError, OSError) as exc:
            return f"no answer from the endpoint ({type(exc).__name__})"
        return None if 200 <= status < 300 else f"the endpoint answered {status}"

    def handshake(self, subscription: Subscription) -> Subscription:
        """Send the handshake: active when the endpoint takes it, error otherwise."""
        problem = self._send(subscription, notification(subscription, "handshake", count=0))
        s = fhir_subscriptions
        values = (
            {"status": "active", "error": "", "last_sent_us": self.clock()}
            if problem is None
            else {"status": "error", "error": f"handshake: {problem}"}
        )
        with self.store.write() as conn:
            conn.execute(s.update().where(
                s.c.subscription_id == subscription.subscription_id).values(**values))  # fmt: skip
        found = get(self.store, subscription.subscription_id)
        assert found is not None
        return found

    def _lease(self, subscription_id: str, now: int) -> bool:
        s = fhir_subscriptions
        with self.store.write() as conn:
            taken = conn.execute(
                s.update()
                .where(s.c.subscription_id == subscription_id, s.c.lease_until_us <= now)
                .values(lease_until_us=now + LEASE_S * _US)
            )
        return bool(taken.rowcount)

    def _update(self, subscription_id: str, **values: Any) -> None:
        s = fhir_subscriptions
        with self.store.write() as conn:
            conn.execute(s.update().where(s.c.subscription_id == subscription_id).values(**values))

    def tick(self) -> int:
        """One pass over the subscriptions due; how many notifications were delivered."""
        now = self.clock()
        s = fhir_subscriptions
        # Only those with something to send: events not yet delivered, or a heartbeat due (a
        # lease and its release are two writes; an idle subscription costs none).
        pending = s.c.events > s.c.delivered
        heartbeat = (s.c.heartbeat_s > 0) & (s.c.last_sent_us + s.c.heartbeat_s * _US <= now)
        with self.store.read() as conn:
            due = conn.execute(
                sa.select(s.c.subscription_id).where(
                    s.c.status == "active", s.c.retry_at_us <= now, s.c.lease_until_us <= now,
                    pending | heartbeat,
                )
            ).scalars().all()  # fmt: skip
        sent = 0
        for subscription_id in due:
            if not self._lease(subscription_id, now):
                continue
            try:
                sent += self._deliver(subscription_id, now)
            finally:
                self._update(subscription_id, lease_until_us=0)
        if now - self._trimmed_us >= TRIM_EVERY_S * _US:
            self._trim(now)
            self._trimmed_us = now
        return sent

    def _deliver(self, subscription_id: str, now: int) -> int:
        subscription = get(self.store, subscription_id)
        if subscription is None or subscription.status != "active":
            return 0
        pending = events(self.store, subscription_id, subscription.delivered)
        batches: dict[int, list[Event]] = {}
        for event in pending:
            batches.setdefault(event.notification, []).append(event)
        sent = 0
        for found in batches.values():
            bundle = notification(subscription, "event-notification", found,
                                  published=self.published, count=found[-1].number)  # fmt: skip
            problem = self._send(subscription, bundle)
            if problem is not None:
                self._failed(subscription, problem, now)
                return sent
            self._update(subscription_id, delivered=found[-1].number, last_sent_us=now,
                         attempts=0, retry_at_us=0, error="")  # fmt: skip
            audit.record(
                self.store, actor=f"fhir subscription {subscription_id}", action="notify",
                subject=subject_hash(subscription.provider, subscription.user_id, salt=self.salt),
                detail=f"events {found[0].number}-{found[-1].number} ({len(found)} resources)",
            )  # fmt: skip
            sent += 1
        quiet_s = (now - subscription.last_sent_us) / _US
        if not pending and subscription.heartbeat_s and quiet_s >= subscription.heartbeat_s:
            problem = self._send(subscription, notification(subscription, "heartbeat"))
            if problem is not None:
                self._failed(subscription, problem, now)
            else:
                self._update(subscription_id, last_sent_us=now, attempts=0, error="")
        return sent

    def _failed(self, subscription: Subscription, problem: str, now: int) -> None:
        attempts = subscription.attempts + 1
        wait = min(MAX_BACKOFF_S, 2 ** (attempts - 1))
        log.warning(f"Subscription/{subscription.subscription_id}: {problem}; again in {wait} s")
        self._update(subscription.subscription_id, attempts=attempts, error=problem,
                     retry_at_us=now + wait * _US)  # fmt: skip

    def _trim(self, now: int) -> None:
        """Delivered events older than EVENTS_KEPT_S go."""
        s, e = fhir_subscriptions, fhir_subscription_events
        delivered = (
            sa.select(s.c.delivered).where(s.c.subscription_id == e.c.subscription_id)
            .scalar_subquery()
        )  # fmt: skip
        with self.store.write() as conn:
            conn.execute(e.delete().where(e.c.at_us < now - EVENTS_KEPT_S * _US,
                                          e.c.event_number <= delivered))  # fmt: skip

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.tick()
                except Exception:  # a database hiccup must not end delivery for good
                    log.exception("subscription delivery failed; trying again")

        self._thread = threading.Thread(target=loop, name="ohx-subscriptions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT_S + 5)
        if self._client is not None:
            self._client.close()
