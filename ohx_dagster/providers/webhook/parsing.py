"""Reading a notification body: every missing or malformed field is a ValidationError naming the
field, the value and what was expected (the receiver answers 400 with it and stores nothing)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from ohx_dagster.core.errors import ValidationError


def require(item: Mapping[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValidationError(name, value, "a non-empty string", where=where)
    return str(value)


def json_body(body: bytes, where: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        start = body[:60].decode(errors="replace")
        raise ValidationError("body", start, f"JSON ({exc})", where=where) from None


def iso_instant(name: str, value: Any, where: str) -> datetime:
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


def quoted(text: str, limit: int = 64) -> str:
    """A provider's string inside an ignored reason: quoted, escaped, at most `limit` chars."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
