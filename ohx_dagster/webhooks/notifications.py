"""Each provider's notification body -> inbox events (user, data type, when, event key).

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
from datetime import UTC, date, datetime, time
from typing import Any, Final

import orjson

from ohx_dagster.errors import ValidationError
from ohx_dagster.inbox import NewEvent
from ohx_dagster.models import HealthDataType

HR: Final = HealthDataType.HEART_RATE.value

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


def _quoted(text: str, limit: int = 64) -> str:
    """A provider's string inside an ignored reason: quoted, escaped, at most `limit` chars."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


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
