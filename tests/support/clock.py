"""A moment for tests that take "now" from the clock: the latest past time of day given, so a
test reads the same whatever the hour it runs at (a run just after midnight UTC sees the same
day shape as one at noon)."""

from datetime import UTC, datetime, timedelta


def latest_past(hour: int, minute: int = 0) -> datetime:
    """The most recent `hour:minute` UTC that is not in the future."""
    now = datetime.now(UTC)
    moment = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return moment if moment <= now else moment - timedelta(days=1)
