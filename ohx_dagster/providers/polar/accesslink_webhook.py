"""Polar AccessLink webhooks: the PING, the signature, and notification bodies -> inbox events.
Shapes and the signature recipe: Polar's AccessLink documentation, "Accesslink webhooks" and the
webhookPayload* schemas (SOURCE.md, section AccessLink).

- Every delivery is a POST with `Content-Type: application/json`, `Polar-Webhook-Event: <EVENT>`
  and `Polar-Webhook-Signature` = hex HMAC-SHA256 of the body, keyed with the
  `signature_secret_key` Polar returned once, when the app's webhook was created
  (accesslink_subscriptions.py); compared case-insensitively, in constant time.
- PING {"timestamp", "event": "PING"} arrives while the webhook is being created (POST
  /v3/webhooks) or its URL changed, before Polar hands out the key: it cannot be verified, so it
  is answered 200 without a signature check and nothing is stored. A route whose key is not set
  yet (OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY) answers PINGs and refuses everything else (401).
- EXERCISE {"event", "user_id", "entity_id", "timestamp", "url"} names an exercise: one inbox
  event, data type unset (its heart rate and RR intervals), the exercise read by its id later
  (accesslink.py `event_windows`). SLEEP, CONTINUOUS_HEART_RATE, ACTIVITY_SUMMARY (with `date`)
  and SLEEP_WISE_* (with `from`/`to`) carry nothing this product syncs: acknowledged and kept as
  ignored with the reason, never refused (an error answer counts against the webhook: Polar
  deactivates one whose deliveries fail for seven days).
- Polar sends no delivery timestamp header, so there is no replay window: a replayed body is
  the same inbox key (user, event, entity, timestamp) and commits nothing new.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ohx_dagster.config.receiver import POLAR_ACCESSLINK_KEY, PolarAccessLinkSecrets
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.parsing import iso_instant, json_body, quoted, require
from ohx_dagster.providers.webhook.receiver import Receiver
from ohx_dagster.providers.webhook.signatures import SignatureRejected, same_secret

NAME: Final = "polar_accesslink"
ROUTE: Final = f"/webhooks/{NAME}"
SIGNATURE_HEADER: Final = "polar-webhook-signature"
EVENT_HEADER: Final = "polar-webhook-event"
PING: Final = "PING"
EXERCISE: Final = "EXERCISE"
# The other documented webhook events: their data is no type this product syncs.
IGNORED: Final[dict[str, str]] = {
    "SLEEP": "sleep",
    "CONTINUOUS_HEART_RATE": "continuous (24/7) heart rate, not exercise heart rate",
    "ACTIVITY_SUMMARY": "daily activity summaries",
    "SLEEP_WISE_CIRCADIAN_BEDTIME": "SleepWise circadian bedtime",
    "SLEEP_WISE_ALERTNESS": "SleepWise alertness",
}


def signature(key: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the raw body (Polar's Java example: HmacSHA256 over the
    payload with the key's bytes, as hex)."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def verify(key: str, body: bytes, given: str | None) -> None:
    if not given:
        raise SignatureRejected("Polar-Webhook-Signature header is required")
    if not same_secret(signature(key, body), given.strip().lower()):
        raise SignatureRejected("Polar-Webhook-Signature does not match the body")


def _event_of(body: bytes) -> Any:
    """The body's `event`, or None when the body is no JSON object (checked after the
    signature)."""
    try:
        item = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return item.get("event") if isinstance(item, dict) else None


def parse_notification(body: bytes) -> list[NewEvent]:
    """Key: user, event, what it names (exercise id, date, from..to) and the sending timestamp.
    A retry repeats all of them; a later notification about the same exercise is a new one."""
    where = "polar_accesslink notification"
    item = json_body(body, where)
    if not isinstance(item, dict):
        raise ValidationError("body", type(item).__name__, "a JSON object", where=where)
    event = require(item, "event", where)
    user_id = require(item, "user_id", where)
    when = item.get("timestamp")
    occurred = None if when is None else iso_instant("timestamp", when, where)
    stamp = "" if when is None else str(when)
    ignored = None
    if event == EXERCISE:
        names = require(item, "entity_id", where)
    elif event in IGNORED:
        names = str(item.get("date") or f"{item.get('from', '')}..{item.get('to', '')}")
        ignored = f"polar_accesslink {event}: {IGNORED[event]} is not synced by this product"
    else:
        names = str(item.get("entity_id") or item.get("date") or "")
        ignored = f"polar_accesslink event {quoted(event)}: not an event this product knows"
    return [
        NewEvent(
            provider=NAME,
            event_key=f"{user_id}|{event}|{names}|{stamp}",
            user_id=user_id,
            data_type=None,  # an exercise: its heart rate and RR intervals
            occurred_at=occurred,
            payload=item,
            ignored_reason=ignored,
        )
    ]


def routes(receiver: Receiver, secrets: PolarAccessLinkSecrets | None) -> list[Route]:
    """/webhooks/polar_accesslink, when the AccessLink OAuth app is configured."""
    if secrets is None:
        return []

    async def notify(request: Request) -> Response:
        body = await receiver.body_of(request)
        event = _event_of(body)
        header = request.headers.get(EVENT_HEADER)
        if header is not None and event is not None and header != event:
            raise ValidationError(
                "Polar-Webhook-Event", header, f"the body's event {quoted(str(event))}"
            )
        if event == PING:
            return JSONResponse({"accepted": 0, "duplicates": 0})
        key = secrets.signature_secret_key
        if key is None:
            raise SignatureRejected(
                f"{POLAR_ACCESSLINK_KEY} is not set: Polar's deliveries cannot be verified"
            )
        verify(key, body, request.headers.get(SIGNATURE_HEADER))
        return await receiver.commit(parse_notification(body))

    return [Route(ROUTE, notify, methods=["POST"])]
