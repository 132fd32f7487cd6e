"""What a sync run is asked to do, carried in run tags so that schedules, sensors, UI backfills and
CLI runs all speak the same language (tags survive into backfill runs; run config does not).

| tag | value | meaning |
|---|---|---|
| ohx/strategy | a strategy (list below), default partition | which windows to fetch |
| ohx/subjects | comma-separated salted subjects (or 12+ first hex digits) | only these people |
| ohx/users | comma-separated user ids, typed by a person | only these people |
| ohx/frequencies | comma-separated sync frequencies | only people with these frequencies |
| ohx/close-at | ISO instant | only people whose local day (the partition's date) just ended |
| ohx/inbox | the webhook sensor's run key | push: the notifications this run answers |

Strategies (ohx_dagster/sync/strategies.py): partition, incremental, push, initial, close, refresh.

Any other `ohx/` tag is an error that lists these: a typo must not widen a run to everyone.

People are named by their salted subject (ohx_dagster/privacy/subjects.py: HMAC-SHA256(salt,
"provider|user_id")), never by id: the product's sensors write `ohx/subjects` only (`for_people`;
`tags()` refuses ids without subjects), and the run resolves them through the store (`resolve`),
the only place ids live. So Dagster's runs, backfills and event logs hold nothing that names a
person to anyone without the salt, and erasure has nothing to chase there. `ohx/users` stays for
an operator who types ids in the launchpad; such a run selects the same way and replaces the tag
by `ohx/subjects` when it starts, in its backfill's tags too (assets/pseudonyms.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import HealthSyncConfig, SyncFrequency, require_aware
from ohx_dagster.privacy.identity import SUBJECT_TEXT, match_subjects
from ohx_dagster.privacy.subjects import SHOWN, erasure_salt, subject_hash
from ohx_dagster.sync.strategies import PRIORITY, SyncStrategy

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

STRATEGY_TAG: Final = "ohx/strategy"
USERS_TAG: Final = "ohx/users"
SUBJECTS_TAG: Final = "ohx/subjects"
FREQUENCIES_TAG: Final = "ohx/frequencies"
CLOSE_AT_TAG: Final = "ohx/close-at"
INBOX_TAG: Final = "ohx/inbox"
PRIORITY_TAG: Final = "dagster/priority"
# Tags the product sets for people to read, not for runs to obey.
INFO_TAGS: Final = ("ohx/backfill", "ohx/inbox-events", "ohx/reason")
KNOWN_TAGS: Final = (
    STRATEGY_TAG,
    SUBJECTS_TAG,
    USERS_TAG,
    FREQUENCIES_TAG,
    CLOSE_AT_TAG,
    INBOX_TAG,
    *INFO_TAGS,
)


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
    # Ids: typed by an operator (ohx/users), or known in memory; never written to tags.
    user_ids: frozenset[str] | None = None
    frequencies: frozenset[SyncFrequency] | None = None
    close_at: datetime | None = None
    inbox: str | None = None
    # Salted subjects (whole, or 12+ hex digits typed by an operator): what tags name people by.
    subjects: frozenset[str] | None = None
    # After `resolve`: the subjects that named nobody of the provider (reported, not synced).
    unmatched: frozenset[str] = frozenset()

    @classmethod
    def for_people(
        cls,
        strategy: SyncStrategy,
        provider: str,
        user_ids: Iterable[str],
        *,
        salt: bytes | None = None,
        inbox: str | None = None,
    ) -> SyncRequest:
        """A request for these people of the provider, named in its tags by their subjects."""
        ids = frozenset(user_ids)
        salt = erasure_salt() if salt is None else salt
        subjects = frozenset(subject_hash(provider, u, salt=salt) for u in ids)
        return cls(strategy, user_ids=ids, subjects=subjects, inbox=inbox)

    def resolve(
        self, store: RecordStore, provider: str, *, salt: bytes | None = None
    ) -> SyncRequest:
        """The request with `user_ids` the people its subjects name among the provider's people
        in the store (with any typed in ohx/users): what sync and publish select by. A subject
        naming nobody selects nobody (it is kept in `unmatched`), never everyone."""
        if self.subjects is None:
            return self
        salt = erasure_salt() if salt is None else salt
        people = [p.config.user_id for p in store.people(provider)]
        found, unmatched = match_subjects(provider, people, self.subjects, salt=salt)
        ids = frozenset(found.values()) | (self.user_ids or frozenset())
        return dataclasses.replace(self, user_ids=ids, unmatched=unmatched)

    def selects(self, config: HealthSyncConfig, day: date) -> bool:
        """Whether this run syncs the person, for the partition's date `day`."""
        if self.user_ids is not None and config.user_id not in self.user_ids:
            return False
        if self.frequencies is not None and config.sync_frequency not in self.frequencies:
            return False
        return self.close_at is None or closes_day(config, self.close_at, day)

    def tags(self) -> dict[str, str]:
        """The run tags of the request: people by subject only."""
        tags = {STRATEGY_TAG: self.strategy.value, PRIORITY_TAG: str(PRIORITY[self.strategy])}
        if self.user_ids is not None and self.subjects is None:
            raise ValueError("run tags name people by subject: build with SyncRequest.for_people")
        if self.subjects is not None:
            tags[SUBJECTS_TAG] = ",".join(sorted(self.subjects))
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
        subjects = None
        if SUBJECTS_TAG in tags:
            given = _split(tags[SUBJECTS_TAG])
            if not given:
                raise ConfigError(
                    f"run tag {SUBJECTS_TAG} is empty: name subjects, or leave it out"
                )
            wrong = sum(1 for s in given if not SUBJECT_TEXT.fullmatch(s))
            if wrong:
                raise ConfigError(
                    f"run tag {SUBJECTS_TAG}: {wrong} of {len(given)} values are not subjects "
                    f"({SHOWN} to 64 lowercase hex digits; a person's id goes in {USERS_TAG})"
                )
            subjects = given
        return cls(
            strategy=strategy,
            user_ids=users,
            subjects=subjects,
            frequencies=frequencies,
            close_at=_instant(CLOSE_AT_TAG, tags[CLOSE_AT_TAG]) if CLOSE_AT_TAG in tags else None,
            inbox=tags.get(INBOX_TAG) or None,
        )
