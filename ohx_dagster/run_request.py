"""What a sync run is asked to do, carried in run tags so that schedules, sensors, UI backfills and
CLI runs all speak the same language (tags survive into backfill runs; run config does not).

| tag | value | meaning |
|---|---|---|
| ohx/strategy | a strategy (list below), default partition | which windows to fetch |
| ohx/users | comma-separated user ids | only these people |
| ohx/frequencies | comma-separated sync frequencies | only people with these frequencies |
| ohx/close-at | ISO instant | only people whose local day (the partition's date) just ended |
| ohx/inbox | the webhook sensor's run key | push: the notifications this run answers |

Strategies (ohx_dagster/strategies.py): partition, incremental, push, initial, close, refresh.

Any other `ohx/` tag is an error that lists these: a typo must not widen a run to everyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Final

from ohx_dagster.errors import ConfigError
from ohx_dagster.models import HealthSyncConfig, SyncFrequency, require_aware
from ohx_dagster.strategies import PRIORITY, SyncStrategy

STRATEGY_TAG: Final = "ohx/strategy"
USERS_TAG: Final = "ohx/users"
FREQUENCIES_TAG: Final = "ohx/frequencies"
CLOSE_AT_TAG: Final = "ohx/close-at"
INBOX_TAG: Final = "ohx/inbox"
PRIORITY_TAG: Final = "dagster/priority"
# Tags the product sets for people to read, not for runs to obey.
INFO_TAGS: Final = ("ohx/backfill", "ohx/inbox-events", "ohx/reason")
KNOWN_TAGS: Final = (STRATEGY_TAG, USERS_TAG, FREQUENCIES_TAG, CLOSE_AT_TAG, INBOX_TAG, *INFO_TAGS)


def _split(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _instant(tag: str, text: str) -> datetime:
    try:
        return require_aware(tag, datetime.fromisoformat(text))
    except ValueError as exc:
        raise ConfigError(f"run tag {tag}={text!r}: expected an ISO instant with offset") from exc


def closes_day(config: HealthSyncConfig, moment: datetime, day: date) -> bool:
    """True when the person's local day `day` ended within the hour before `moment`."""
    local = moment.astimezone(config.zone)
    return time(0) <= local.time() < time(1) and local.date() - timedelta(days=1) == day


@dataclass(frozen=True, slots=True)
class SyncRequest:
    strategy: SyncStrategy = SyncStrategy.PARTITION
    user_ids: frozenset[str] | None = None
    frequencies: frozenset[SyncFrequency] | None = None
    close_at: datetime | None = None
    inbox: str | None = None

    def selects(self, config: HealthSyncConfig, day: date) -> bool:
        """Whether this run syncs the person, for the partition's date `day`."""
        if self.user_ids is not None and config.user_id not in self.user_ids:
            return False
        if self.frequencies is not None and config.sync_frequency not in self.frequencies:
            return False
        return self.close_at is None or closes_day(config, self.close_at, day)

    def tags(self) -> dict[str, str]:
        tags = {STRATEGY_TAG: self.strategy.value, PRIORITY_TAG: str(PRIORITY[self.strategy])}
        if self.user_ids is not None:
            tags[USERS_TAG] = ",".join(sorted(self.user_ids))
        if self.frequencies is not None:
            tags[FREQUENCIES_TAG] = ",".join(sorted(f.value for f in self.frequencies))
        if self.close_at is not None:
            tags[CLOSE_AT_TAG] = self.close_at.isoformat()
        if self.inbox is not None:
            tags[INBOX_TAG] = self.inbox
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> SyncRequest:
        unknown = sorted(t for t in tags if t.startswith("ohx/") and t not in KNOWN_TAGS)
        if unknown:
            raise ConfigError(
                f"unknown run tag {unknown[0]!r}: the ohx/ tags are {', '.join(KNOWN_TAGS)}"
            )
        text = tags.get(STRATEGY_TAG, SyncStrategy.PARTITION.value)
        try:
            strategy = SyncStrategy(text)
        except ValueError:
            choices = ", ".join(s.value for s in SyncStrategy)
            raise ConfigError(f"run tag {STRATEGY_TAG}={text!r}: expected {choices}") from None
        frequencies = None
        if FREQUENCIES_TAG in tags:
            try:
                frequencies = frozenset(SyncFrequency(f) for f in _split(tags[FREQUENCIES_TAG]))
            except ValueError:
                raise ConfigError(
                    f"run tag {FREQUENCIES_TAG}={tags[FREQUENCIES_TAG]!r}: expected "
                    f"{', '.join(f.value for f in SyncFrequency)}"
                ) from None
        users = _split(tags[USERS_TAG]) if tags.get(USERS_TAG, "").strip() else None
        if USERS_TAG in tags and users is None:
            raise ConfigError(f"run tag {USERS_TAG} is empty: name user ids, or leave it out")
        return cls(
            strategy=strategy,
            user_ids=users,
            frequencies=frequencies,
            close_at=_instant(CLOSE_AT_TAG, tags[CLOSE_AT_TAG]) if CLOSE_AT_TAG in tags else None,
            inbox=tags.get(INBOX_TAG) or None,
        )
