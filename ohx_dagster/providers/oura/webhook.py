"""Oura webhooks: the verification handshake, the signature, and notification bodies -> inbox
events. Shapes and the signature recipe: Oura's OpenAPI, "Webhooks" (SOURCE.md).

- GET ?verification_token=<t>&challenge=<c> -> 200 {"challenge": c} for our token, else 401.
- POST with x-oura-signature = HEX(HMAC-SHA256(client_secret, x-oura-timestamp + body)) and a
  fresh x-oura-timestamp; body {"event_type", "data_type", "object_id", "event_time", "user_id"}.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ohx_dagster.config.receiver import OuraSecrets
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.parsing import iso_instant, json_body, quoted, require
from ohx_dagster.providers.webhook.receiver import Receiver
from ohx_dagster.providers.webhook.signatures import SignatureRejected, check_fresh, same_secret

HR: Final = HealthDataType.HEART_RATE.value
# Data types whose documents carry data this product syncs (None: several types, sync all).
# Data types outside both lists, and other event types, are stored as ignored (see below).
TYPES: Final[dict[str, str | None]] = {
    "daily_activity": HealthDataType.STEPS.value,
    "daily_spo2": HealthDataType.SPO2.value,
    "workout": HR,
    "session": HR,
    "sleep": None,  # a night: heart rate and SpO2
}
IGNORED: Final = frozenset(
    {
        "tag",
        "enhanced_tag",
        "daily_sleep",
        "daily_readiness",
        "sleep_time",
        "rest_mode_period",
        "ring_configuration",
        "daily_stress",
        "daily_resilience",
        "daily_cardiovascular_age",
        "vo2_max",
        "meal",
    }
)
EVENT_TYPES: Final = frozenset({"create", "update", "delete"})


def signature(client_secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(client_secret.encode(), timestamp.encode() + body, hashlib.sha256)
    return mac.hexdigest().upper()


def verify(
    client_secret: str,
    body: bytes,
    given: str | None,
    timestamp: str | None,
    *,
    now: float,
    window_s: float,
) -> float:
    """Check x-oura-signature and the timestamp's freshness; returns the timestamp (s)."""
    if not given or not timestamp:
        raise SignatureRejected("x-oura-signature and x-oura-timestamp headers are required")
    if not same_secret(signature(client_secret, timestamp, body), given.strip().upper()):
        raise SignatureRejected("x-oura-signature does not match timestamp + body")
    return check_fresh("x-oura-timestamp", timestamp, now=now, window_s=window_s)


def parse_notification(body: bytes, *, delivery_timestamp: str) -> list[NewEvent]:
    """Key: user, data type, object, operation and event time. A retry repeats all five; an
    update of the same object is a new operation or a new time. Without an event time (not every
    payload has one) the signed delivery timestamp stands in: a retry then may add one event.

    A data type or event type this product does not know (Oura adds collections: `meal`,
    `daily_cycle_phases`, ...) is acknowledged and kept as ignored with the reason, never refused:
    an error answer makes Oura retry and can cost the subscription."""
    where = "oura notification"
    item = json_body(body, where)
    if not isinstance(item, dict):
        raise ValidationError("body", type(item).__name__, "a JSON object", where=where)
    operation = require(item, "event_type", where)
    kind = require(item, "data_type", where)
    object_id = require(item, "object_id", where)
    user_id = require(item, "user_id", where)
    when_text = item.get("event_time", item.get("timestamp"))
    occurred = None if when_text is None else iso_instant("event_time", when_text, where)
    ignored = None
    if kind in IGNORED:
        ignored = f"oura {kind}: not a health data type this product syncs"
    elif kind not in TYPES:
        ignored = f"oura data_type {quoted(kind)}: not a data type this product knows"
    elif operation not in EVENT_TYPES:
        expected = f"one of {sorted(EVENT_TYPES)}"
        ignored = f"oura event_type {quoted(operation)}: not one this product knows ({expected})"
    stamp = when_text if when_text is not None else f"delivery:{delivery_timestamp}"
    return [
        NewEvent(
            provider="oura",
            event_key=f"{user_id}|{kind}|{object_id}|{operation}|{stamp}",
            user_id=user_id,
            data_type=None if ignored else TYPES[kind],
            occurred_at=occurred,
            payload=item,
            ignored_reason=ignored,
        )
    ]


def routes(receiver: Receiver, secrets: OuraSecrets | None) -> list[Route]:
    """/webhooks/oura, when its client secret and verification token are configured."""
    if secrets is None:
        return []

    async def handshake(request: Request) -> Response:
        token = request.query_params.get("verification_token")
        challenge = request.query_params.get("challenge")
        if not same_secret(secrets.verification_token, token):
            raise SignatureRejected("verification_token does not match")
        if not challenge:
            raise ValidationError("challenge", challenge, "a non-empty query parameter")
        return JSONResponse({"challenge": challenge})

    async def notify(request: Request) -> Response:
        body = await receiver.body_of(request)
        timestamp = request.headers.get("x-oura-timestamp")
        verify(
            secrets.client_secret,
            body,
            request.headers.get("x-oura-signature"),
            timestamp,
            now=receiver.clock(),
            window_s=receiver.replay_window_s,
        )
        assert timestamp is not None  # verify refused a notification without one
        return await receiver.commit(parse_notification(body, delivery_timestamp=timestamp))

    return [
        Route("/webhooks/oura", handshake, methods=["GET"]),
        Route("/webhooks/oura", notify, methods=["POST"]),
    ]
