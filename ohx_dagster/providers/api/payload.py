"""Reading provider JSON: every missing or malformed field is a ProviderError that names the
provider and endpoint (`where`), the field's path, the value found and what was expected."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from ohx_dagster.core.errors import ProviderError

_MISSING: Final = object()
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)s$")


def bad_field(where: str, path: str, value: Any, expected: str) -> ProviderError:
    shown = "missing" if value is _MISSING else repr(value)[:80]
    return ProviderError(f"{where}: field {path!r} is {shown}: expected {expected}")


def get(obj: Any, path: str, where: str, expected: str = "a value") -> Any:
    """The value at a dotted path (`sampleTime.physicalTime`); None or absent is an error."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            break
    if value is _MISSING or value is None:
        raise bad_field(where, path, _MISSING if value is _MISSING else None, expected)
    return value


def items(obj: Any, path: str, where: str) -> list[Any]:
    """A list field (an absent list is an error: a payload without it is not the documented one)."""
    value = get(obj, path, where, "a JSON array")
    if not isinstance(value, list):
        raise bad_field(where, path, value, "a JSON array")
    return value


def number(obj: Any, path: str, where: str) -> float:
    """A number; JSON strings holding one are accepted (protobuf JSON writes int64 as strings)."""
    value = get(obj, path, where, "a number")
    if isinstance(value, bool):
        raise bad_field(where, path, value, "a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise bad_field(where, path, value, "a number")


def instant(obj: Any, path: str, where: str) -> datetime:
    """An RFC 3339 date-time with an offset (or Z); its offset is kept."""
    value = get(obj, path, where, "an RFC 3339 date-time")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.utcoffset() is not None:
            return moment
    raise bad_field(where, path, value, "an RFC 3339 date-time with an offset")


def duration_s(obj: Any, path: str, where: str) -> float:
    """A protobuf JSON Duration ("3600s", "-25200s", "1.5s") in seconds."""
    value = get(obj, path, where, 'a duration like "3600s"')
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad_field(where, path, value, 'a duration like "3600s"')
    return float(match.group(1))
