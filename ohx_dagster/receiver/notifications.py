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

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.parsing import iso_instant, json_body, require


def parse_simulated(body: bytes) -> list[NewEvent]:
    """Body: {"event_id", "user_id", "data_type", "occurred_at"}. Key: the sender's event_id,
    unique per notification and repeated on a retry."""
    where = "simulated notification"
    item = json_body(body, where)
    if not isinstance(item, dict):
        raise ValidationError("body", type(item).__name__, "a JSON object", where=where)
    event_id = require(item, "event_id", where)
    user_id = require(item, "user_id", where)
    kind = require(item, "data_type", where)
    try:
        kind = HealthDataType(kind).value
    except ValueError:
        known = [t.value for t in HealthDataType]
        raise ValidationError("data_type", kind, f"one of {known}", where=where) from None
    occurred = iso_instant("occurred_at", item.get("occurred_at"), where)
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
