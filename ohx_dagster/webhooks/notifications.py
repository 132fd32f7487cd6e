"""Each provider's notification body -> inbox events (user, data type, when, event key).

A notification only says "this user has new data of this kind": the receiver stores that and the
webhook sensor fetches the data later; nothing here calls a provider.

Event keys: the inbox keeps one row per (provider, event_key). A key must be equal for a
provider's retry of the same delivery (so a retry adds nothing) and different for a genuinely new
notification (so nothing is lost). Each provider's choice, and why, is beside its parser.

Malformed bodies raise ValidationError naming the field, the value and what was expected; the
receiver answers 400 with that message and stores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import Any, Final

import orjson

from ohx_dagster.errors import ValidationError
from ohx_dagster.inbox import NewEvent
from ohx_dagster.models import HealthDataType

HR: Final = HealthDataType.HEART_RATE.value

# -- Fitbit-style subscriptions ----------------------------------------------------------------
# Body: a JSON array of {"collectionType", "date", "ownerId", "ownerType", "subscriptionId"}.
FITBIT_COLLECTIONS: Final[dict[str, str | None]] = {
    "activities": HealthDataType.STEPS.value,
    "body": HealthDataType.WEIGHT.value,
    "sleep": None,  # a sleep log carries heart rate and more: the sensor syncs all enabled types
}
FITBIT_IGNORED: Final[dict[str, str]] = {
    "foods": "fitbit foods: nutrition is not a health data type this product syncs",
    "userRevokedAccess": "fitbit userRevokedAccess: the user revoked access; disconnect the user",
    "deleteUser": "fitbit deleteUser: the user deleted their account; disconnect the user",
}
# Fitbit's notification has no id and no time: a retry and a later notification about the same
# user, collection and date are byte-identical. The key therefore adds the minute it arrived in:
# a retry of a delivery we committed (only needed when our 2xx got lost) arrives within it and
# dedups; a later sync by the user is a new event. The cost of the compromise: a retry landing in
# the next minute adds one harmless event (records are idempotent upserts), and a second sync in
# the same minute is folded into the first (the hourly safety-net run picks up anything missed).
FITBIT_DEDUP_BUCKET_S: Final = 60

# -- Oura --------------------------------------------------------------------------------------
# Body: {"event_type": create|update|delete, "data_type", "object_id", "user_id", "event_time"}.
OURA_TYPES: Final[dict[str, str | None]] = {
    "heartrate": HR,
    "daily_activity": HealthDataType.STEPS.value,
    "daily_spo2": HealthDataType.SPO2.value,
    "workout": HR,
    "session": HR,
    "sleep": None,  # sleep periods carry heart rate and HRV: sync all enabled types
}
OURA_IGNORED: Final = frozenset(
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
        "vO2_max",
        "vo2_max",
    }
)
OURA_EVENT_TYPES: Final = frozenset({"create", "update", "delete"})

# -- Withings ----------------------------------------------------------------------------------
# Body (form-encoded): userid, appli, startdate, enddate (Unix seconds) or date. One notification
# can concern several of our types (appli 4: blood pressure monitors also measure heart rate and
# SpO2): one event per type.
WITHINGS_APPLI: Final[dict[int, tuple[str | None, ...]]] = {
    1: (HealthDataType.WEIGHT.value,),
    2: (HealthDataType.TEMPERATURE.value,),
    4: (HealthDataType.BLOOD_PRESSURE.value, HR, HealthDataType.SPO2.value),
    16: (HealthDataType.STEPS.value,),
    44: (None,),  # sleep: heart rate, RR, SpO2 over the night -> sync all enabled types
    54: (HealthDataType.ECG.value,),
}
WITHINGS_IGNORED: Final[dict[int, str]] = {
    46: "withings appli 46: user profile action",
    50: "withings appli 50: bed in",
    51: "withings appli 51: bed out",
    52: "withings appli 52: sleep sensor inflate done",
    53: "withings appli 53: device without an associated account",
    55: "withings appli 55: ECG measurement failed",
    58: "withings appli 58: glucose is not a health data type this product syncs",
}


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


def parse_fitbit(body: bytes, *, received_at: float) -> list[NewEvent]:
    where = "fitbit notification"
    items = _json(body, where)
    if not isinstance(items, list) or not items:
        raise ValidationError("body", type(items).__name__, "a non-empty JSON array", where=where)
    bucket = int(received_at // FITBIT_DEDUP_BUCKET_S)
    events = []
    for index, item in enumerate(items):
        at = f"{where} [{index}]"
        if not isinstance(item, dict):
            raise ValidationError("item", item, "a JSON object", where=at)
        collection = _require(item, "collectionType", at)
        owner = _require(item, "ownerId", at)
        ignored = FITBIT_IGNORED.get(collection)
        if collection not in FITBIT_COLLECTIONS and ignored is None:
            known = sorted([*FITBIT_COLLECTIONS, *FITBIT_IGNORED])
            raise ValidationError("collectionType", collection, f"one of {known}", where=at)
        day_text = item.get("date")
        occurred = None
        if day_text is not None or ignored is None:
            try:
                day = date.fromisoformat(str(day_text))
            except ValueError:
                raise ValidationError("date", day_text, "a date YYYY-MM-DD", where=at) from None
            # A local calendar date, represented by its noon UTC: inside that local day for
            # every UTC offset from -12 h to +12 h. The date itself stays in the payload.
            occurred = datetime.combine(day, time(12), tzinfo=UTC)
        subscription = str(item.get("subscriptionId", ""))
        events.append(
            NewEvent(
                provider="fitbit",
                event_key=f"{owner}|{collection}|{day_text}|{subscription}|{bucket}",
                user_id=owner,
                data_type=FITBIT_COLLECTIONS.get(collection),
                occurred_at=occurred,
                payload=item,
                ignored_reason=ignored,
            )
        )
    return events


def parse_oura(body: bytes, *, delivery_timestamp: str) -> list[NewEvent]:
    """Key: user, data type, object, operation and event time. A retry repeats all five; an
    update of the same object is a new operation or a new time. Without an event time (not every
    payload has one) the signed delivery timestamp stands in: a retry then may add one event."""
    where = "oura notification"
    item = _json(body, where)
    if not isinstance(item, dict):
        raise ValidationError("body", type(item).__name__, "a JSON object", where=where)
    operation = _require(item, "event_type", where)
    if operation not in OURA_EVENT_TYPES:
        expected = f"one of {sorted(OURA_EVENT_TYPES)}"
        raise ValidationError("event_type", operation, expected, where=where)
    kind = _require(item, "data_type", where)
    if kind not in OURA_TYPES and kind not in OURA_IGNORED:
        known = sorted([*OURA_TYPES, *OURA_IGNORED])
        raise ValidationError("data_type", kind, f"one of {known}", where=where)
    object_id = _require(item, "object_id", where)
    user_id = _require(item, "user_id", where)
    when_text = item.get("event_time", item.get("timestamp"))
    occurred = None if when_text is None else _iso_instant("event_time", when_text, where)
    ignored = None
    if kind in OURA_IGNORED:
        ignored = f"oura {kind}: not a health data type this product syncs"
    stamp = when_text if when_text is not None else f"delivery:{delivery_timestamp}"
    return [
        NewEvent(
            provider="oura",
            event_key=f"{user_id}|{kind}|{object_id}|{operation}|{stamp}",
            user_id=user_id,
            data_type=OURA_TYPES.get(kind),
            occurred_at=occurred,
            payload=item,
            ignored_reason=ignored,
        )
    ]


def parse_withings(form: Mapping[str, str]) -> list[NewEvent]:
    """Key: user, appli and the data range (or date). Withings repeats them on a retry; a new
    measurement has a new range."""
    where = "withings notification"
    user_id = _require(form, "userid", where)
    appli_text = _require(form, "appli", where)
    try:
        appli = int(appli_text)
    except ValueError:
        raise ValidationError("appli", appli_text, "an integer", where=where) from None
    if appli not in WITHINGS_APPLI and appli not in WITHINGS_IGNORED:
        known = sorted([*WITHINGS_APPLI, *WITHINGS_IGNORED])
        raise ValidationError("appli", appli, f"one of {known}", where=where)
    stamps: dict[str, int] = {}
    for name in ("startdate", "enddate"):
        if form.get(name) not in (None, ""):
            stamps[name] = _epoch(name, form[name], where)
    day_text = form.get("date") or ""
    if not stamps and not day_text:
        raise ValidationError("startdate", None, "startdate/enddate or date", where=where)
    occurred = None
    if stamps:
        occurred = datetime.fromtimestamp(stamps.get("enddate", stamps.get("startdate")), UTC)
    elif day_text.isdigit():
        occurred = datetime.fromtimestamp(_epoch("date", day_text, where), UTC)
    else:
        try:
            occurred = datetime.combine(date.fromisoformat(day_text), time(12), tzinfo=UTC)
        except ValueError:
            expected = "YYYY-MM-DD or Unix seconds"
            raise ValidationError("date", day_text, expected, where=where) from None
    span = f"{stamps.get('startdate', '')}-{stamps.get('enddate', '')}-{day_text}"
    ignored = WITHINGS_IGNORED.get(appli)
    kinds = (None,) if ignored else WITHINGS_APPLI[appli]
    return [
        NewEvent(
            provider="withings",
            event_key=f"{user_id}|{appli}|{span}|{kind or 'all'}",
            user_id=user_id,
            data_type=kind,
            occurred_at=occurred,
            payload=dict(form),
            ignored_reason=ignored,
        )
        for kind in kinds
    ]


def _epoch(name: str, text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(name, text, "Unix seconds (an integer)", where=where) from None
    if not 0 < value < 2**35:
        raise ValidationError(name, value, "Unix seconds after 1970", where=where)
    return value


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
