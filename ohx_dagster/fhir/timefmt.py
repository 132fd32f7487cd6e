"""FHIR dateTime/instant text with the device's UTC offset (never a naive time).

Exact to the microsecond: seconds, milliseconds or microseconds, whichever the instant needs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone


def format_us(micros: int, offset_min: int = 0) -> str:
    """'2016-04-01T07:00:00-05:00' for epoch microseconds shown at a UTC offset."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))
    local = moment.astimezone(timezone(timedelta(minutes=int(offset_min))))
    if not local.microsecond:
        spec = "seconds"
    else:
        spec = "milliseconds" if local.microsecond % 1000 == 0 else "microseconds"
    text = local.isoformat(timespec=spec)
    return text.replace("+00:00", "Z") if offset_min == 0 else text


def parse_us(text: str) -> int:
    """Epoch microseconds of a FHIR dateTime with an offset (the inverse of format_us)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"dateTime {text!r} has no UTC offset")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
