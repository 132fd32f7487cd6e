"""Instants as exact integer microseconds since the epoch (UTC), and the UTC day of a partition.

Every table stores time this way: exact (float seconds lose the last digits), portable across
SQLite and PostgreSQL, and fast to compare.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from ohx_dagster.core.models import DateRange

HOUR_US: Final = 3_600_000_000
DAY_US: Final = 24 * HOUR_US
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(micros))


def now_us() -> int:
    return to_us(datetime.now(UTC))


def utc_day(day: date) -> DateRange:
    """The UTC instants of a day partition."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return DateRange(start, start + timedelta(days=1))


def day_of_us(micros: int) -> date:
    return from_us(micros).date()


def iso_us(micros: int | None) -> str | None:
    """An instant as ISO 8601 UTC text (for people: status tables, metadata), None stays None."""
    if micros is None:
        return None
    return from_us(micros).isoformat().replace("+00:00", "Z")


# -- for people ------------------------------------------------------------------------------------


def iso(moment: datetime | int | None) -> str | None:
    """ISO 8601 UTC to the second ("2026-11-24T10:00:00Z"); an int is store microseconds."""
    if moment is None:
        return None
    found = moment if isinstance(moment, datetime) else from_us(moment)
    return found.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_duration(delta: timedelta) -> str:
    """ISO 8601 duration to the second: P2DT3H4M5S, PT0S."""
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")
    return text if text != "P" else "PT0S"


def words(delta: timedelta) -> str:
    """A duration as a person reads it: "42 s", "17 min", "5 h 3 min", "3 d 4 h"."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
