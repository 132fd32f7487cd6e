"""Google Health API webhooks: the subscriber verification, the signature, and notification
bodies -> inbox events. Shapes and rules: SOURCE.md ("Webhooks").

POST /webhooks/google_health, every request:
- `Authorization` must equal the subscriber's endpointAuthorization.secret, else 401 (the
  verification's second request, sent without it, expects 401 or 403).
- Body {"type": "verification"} (also as a one-element array): 201 Created.
- Otherwise a notification, signed in X-HEALTHAPI-SIGNATURE (GOOGLE-HEALTH-API-SIGNATURE accepted
  too) with a key of Google's Tink keyset (keyset.py): forged, unknown key or missing -> 401; the
  keyset unreachable -> 503 (Google delivers again). Then {"data": {healthUserId, operation,
  dataType, intervals[], ...}}, or an array of them, becomes one inbox event per (user, data
  type, interval), committed before the answer: 204 No Content, the only answer Google does not
  deliver again.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ohx_dagster.config.receiver import GoogleHealthSecrets
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.providers.google_health.keyset import KeysetCache, KeysetUnavailable
from ohx_dagster.providers.google_health.source import BY_DATA_TYPE, NAME, interval_window
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.parsing import json_body, quoted, require
from ohx_dagster.providers.webhook.receiver import Receiver
from ohx_dagster.providers.webhook.signatures import SignatureRejected, same_secret

PATH: Final = "/webhooks/google_health"
SIGNATURE_HEADERS: Final = ("X-HEALTHAPI-SIGNATURE", "GOOGLE-HEALTH-API-SIGNATURE")
MAX_KEY_CHARS: Final = 400

log = logging.getLogger("ohx_dagster.providers.google_health")


def body_items(body: bytes) -> list[dict[str, Any]]:
    """The body's messages: one JSON object, or a non-empty array of them."""
    where = "google_health notification"
    document = json_body(body, where)
    items = document if isinstance(document, list) else [document]
    if not items:
        raise ValidationError("body", "[]", "a JSON object or a non-empty array", where=where)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"[{index}]", type(item).__name__, "a JSON object", where=where)
    return items


def is_verification(items: list[dict[str, Any]]) -> bool:
    return all(item.get("type") == "verification" and "data" not in item for item in items)


def _event_key(*parts: str) -> str:
    key = "|".join(parts)
    if len(key) <= MAX_KEY_CHARS:
        return key
    return f"{parts[0][:64]}|sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def parse_notification(items: list[dict[str, Any]]) -> list[NewEvent]:
    """One event per (user, data type, interval), its payload the `data` object narrowed to that
    interval. Key: user, data type, operation, interval and clientProvidedSubscriptionName (a
    fresh UUID per notification under AUTOMATIC subscriptions), so a delivery repeated by Google
    adds nothing while a later change of the same interval is a new event. A data type this
    product does not sync is kept as ignored, never refused: an error answer is delivered again
    for 7 days."""
    events: dict[str, NewEvent] = {}
    for index, item in enumerate(items):
        where = f"google_health notification[{index}]"
        data = item.get("data")
        if not isinstance(data, dict):
            raise ValidationError("data", data, "a notification object", where=where)
        user_id = require(data, "healthUserId", where)
        data_type = require(data, "dataType", where)
        operation = require(data, "operation", where)
        name = data.get("clientProvidedSubscriptionName")
        name = name if isinstance(name, str) else ""
        intervals = data.get("intervals") or []
        if not isinstance(intervals, list):
            raise ValidationError("intervals", intervals, "an array of intervals", where=where)
        kind = BY_DATA_TYPE.get(data_type)
        if kind is None:
            key = _event_key(user_id, data_type, operation, name, "*")
            reason = (
                f"google_health dataType {quoted(data_type)}: not a data type this product syncs"
            )
            events[key] = NewEvent(NAME, key, user_id, None, None, data, reason)
            continue
        if not intervals:  # none documented; the source reads the re-sync horizon then
            key = _event_key(user_id, data_type, operation, name, "*")
            events[key] = NewEvent(NAME, key, user_id, kind.value, None, data)
        for number, interval in enumerate(intervals):
            (start, end), physical_start = interval_window(interval, f"{where}.intervals[{number}]")
            key = _event_key(user_id, data_type, operation, name, f"{start}-{end}")
            narrowed = {**data, "intervals": [interval]}
            events[key] = NewEvent(NAME, key, user_id, kind.value, physical_start, narrowed)
    return list(events.values())


def routes(receiver: Receiver, secrets: GoogleHealthSecrets | None) -> list[Route]:
    """/webhooks/google_health, when the subscriber's authorization secret is configured."""
    if secrets is None:
        return []
    keys = KeysetCache(secrets.keyset_location)

    async def notify(request: Request) -> Response:
        body = await receiver.body_of(request)
        if not same_secret(secrets.authorization, request.headers.get("authorization")):
            raise SignatureRejected("Authorization header missing or not the subscriber's secret")
        items = body_items(body)
        if is_verification(items):
            return Response(status_code=201)
        header, name = None, SIGNATURE_HEADERS[0]
        for candidate in SIGNATURE_HEADERS:
            if request.headers.get(candidate):
                header, name = request.headers[candidate], candidate
                break
        try:
            await run_in_threadpool(keys.verify, body, header, name)
        except KeysetUnavailable as exc:
            log.error("503 %s: Google's keyset is unavailable: %s", PATH, exc)
            return JSONResponse(
                {"error": f"signature keys unavailable, deliver again later: {exc}"},
                status_code=503,
            )
        await receiver.commit(parse_notification(items))
        return Response(status_code=204)

    return [Route(PATH, notify, methods=["POST"])]
