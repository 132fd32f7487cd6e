"""FHIR dateTime/instant text with the device's UTC offset (never a naive time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone


def format_us(micros: int, offset_min: int = 0) -> str:
    """'2016-04-01T07:00:00-05:00' for epoch microseconds shown at a UTC offset."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))
    local = moment.astimezone(timezone(timedelta(minutes=int(offset_min))))
    text = local.isoformat(timespec="milliseconds" if local.microsecond else "seconds")
    return text.replace("+00:00", "Z") if offset_min == 0 else text
