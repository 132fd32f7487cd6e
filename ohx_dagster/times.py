"""Instants as exact integer microseconds since the epoch (UTC), and the UTC day of a partition.

Every table stores time this way: exact (float seconds lose the last digits), portable across
SQLite and PostgreSQL, and fast to compare.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from ohx_dagster.models import DateRange

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
