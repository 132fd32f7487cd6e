"""The development simulator's notification body -> inbox events (user, data type, when, event
key). Each provider's parser lives in its folder (ohx_dagster/providers/<name>/webhook.py).

A notification only says "this user has new data of this kind": the receiver stores that and the
webhook sensor fetches the data later; nothing here calls a provider.

Event keys: the inbox keeps one row per (provider, event_key). A key must be equal for a
provider's retry of the same delivery (so a retry adds nothing) and different for a genuinely new
notification (so nothing is lost). Each provider's choice, and why, is beside its parser.

Malformed bodies (not the provider's format, a required field missing) raise ValidationError
naming the field, the value and what was expected; the receiver answers 400 with that message and
stores nothing. A well-formed notification about something this product does not sync is stored
with an `ignored_reason` and acknowledged: the inbox keeps it, no run is launched for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from ohx_dagster.errors import ValidationError
from ohx_dagster.inbox import NewEvent
from ohx_dagster.models import HealthDataType


def _require(item: Mapping[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValidationError(name, value, "a non-empty string", where=where)
    return str(value)


def _json(body: bytes, where: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        start = body[:60].decode(errors="replace")
        raise ValidationError("body", start, f"JSON ({exc})", where=where) from None


def _iso_instant(name: str, value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(name, value, "an ISO 8601 date-time with offset", where=where)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            name, value, "an ISO 8601 date-time with offset", where=where
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(name, value, "a date-time with a UTC offset or Z", where=where)
    return moment.astimezone(UTC)


def parse_simulated(body: bytes) -> list[NewEvent]:
    """Body: {"event_id", "user_id", "data_type", "occurred_at"}. Key: the sender's event_id,
    unique per notification and repeated on a retry."""
    where = "simulated notification"
    item = _json(body, where)
    if not isinstance(item, dict):
        raise ValidationError("body", type(item).__name__, "a JSON object", where=where)
    event_id = _require(item, "event_id", where)
    user_id = _require(item, "user_id", where)
    kind = _require(item, "data_type", where)
    try:
        kind = HealthDataType(kind).value
    except ValueError:
        known = [t.value for t in HealthDataType]
        raise ValidationError("data_type", kind, f"one of {known}", where=where) from None
    occurred = _iso_instant("occurred_at", item.get("occurred_at"), where)
    return [
        NewEvent(
            provider="simulated",
            event_key=event_id,
            user_id=user_id,
            data_type=kind,
            occurred_at=occurred,
            payload=item,
        )
    ]
