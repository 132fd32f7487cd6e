"""One sync of one source for one day partition: per person, plan windows from coverage, fetch,
and commit records + coverage + changed days in one transaction (ohx_dagster.storage.store.commit).

Failures stay as small as they are:
- a type the provider refuses (403) is recorded with the provider's reason and skipped from then on
  (until the person reconnects or their settings change); their other types keep syncing;
- a refresh token the provider no longer accepts puts the person in "needs reauthorization": no
  run calls the provider for them until they connect again, and then their gaps are fetched;
- a rate limit (429, or the shared request budget running out) stops this run from calling the
  provider for anyone else: those people are deferred and the run asks to be retried after the
  provider's Retry-After, their gaps still open, so nothing is lost;
- one person's provider or data error does not stop the others; their data is committed and the
  failures are raised together at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Final

import numpy as np
import pandas as pd

from ohx_dagster.core.coverage import Interval, gaps, normalize
from ohx_dagster.core.errors import NeedsReauthorization, OhxError, ProviderError, RateLimited
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import rows_by
from ohx_dagster.core.times import now_us, to_us
from ohx_dagster.privacy.identity import admit_discovered
from ohx_dagster.providers.base import Event, FetchResult, HealthSource
from ohx_dagster.storage.store import NEEDS_REAUTHORIZATION, RecordStore, history_start
from ohx_dagster.sync import waiting
from ohx_dagster.sync.quality import implausible_values, recordings_without_heart_rate
from ohx_dagster.sync.shards import Shard
from ohx_dagster.sync.strategies import SyncStrategy, goal, parse, plan_days

# Heart rate fetched around a linked recording (ECG, RR session) so the two are stored together.
LINK_MARGIN: Final = timedelta(minutes=1)


@dataclass
class SyncReport:
    source: str
    strategy: str
    days: tuple[date, ...]
    records_by_type: dict[str, int] = field(default_factory=dict)
    users_synced: list[str] = field(default_factory=list)
    users_skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)
    days_changed: set[date] = field(default_factory=set)
    # Whether a later attempt may succeed (outage, rate limit), and the longest Retry-After.
    transient: bool = True
    retry_after_s: float | None = None
    first: datetime | None = None
    last: datetime | None = None
    # Quality of what was fetched (the raw asset's checks): implausible values per type, and
    # ECG recordings / RR sessions without heart rate around them.
    implausible: dict[str, int] = field(default_factory=dict)
    # People the source offered whose erasure stands (counted only: their ids are not kept).
    erased_left_out: int = 0
    unlinked: list[str] = field(default_factory=list)
    supported_types: frozenset[HealthDataType] = frozenset()
    # Notified windows the provider answered empty, asked again later (ohx_dagster/sync/waiting.py).
    waiting_for_provider: int = 0

    @property
    def records(self) -> int:
        return sum(self.records_by_type.values())

    @property
    def incomplete(self) -> bool:
        return bool(self.failures or self.deferred)


class SyncFailed(OhxError):
    def __init__(self, report: SyncReport) -> None:
        self.report = report
        parts = [f"{user}: {message}" for user, message in sorted(report.failures.items())]
        if report.deferred:
            parts.append(
                f"{len(report.deferred)} deferred by the provider's rate limit "
                f"(retry after {report.retry_after_s or 0:.0f} s)"
            )
        total = len(report.failures) + len(report.users_synced) + len(report.deferred)
        super().__init__(
            f"{len(report.failures) + len(report.deferred)} of {total} users of "
            f"{report.source} were not synced (the others were committed): " + "; ".join(parts)
        )


def _linked_heart_rate(batch: pd.DataFrame, config: HealthSyncConfig) -> Interval | None:
    """The window around the person's ECG recordings and RR sessions that needs heart rate."""
    rows_of = rows_by(batch["data_type"].to_numpy())
    rows = [rows_of[t.value] for t in config.link_heart_rate_to if t.value in rows_of]
    if not rows:
        return None
    linked = batch.iloc[np.sort(np.concatenate(rows))]
    ends = linked["ts"] + pd.to_timedelta(linked["duration_s"].fillna(0.0), unit="s")
    start = linked["ts"].min().to_pydatetime() - LINK_MARGIN
    return to_us(start), to_us(ends.max().to_pydatetime() + LINK_MARGIN)


def fetch_person(
    source: HealthSource, config: HealthSyncConfig, windows: Mapping[HealthDataType, list[Interval]]
) -> FetchResult:
    """The person's records for the windows, with the heart rate around linked recordings."""
    result = source.fetch_windows(config, windows)
    around = _linked_heart_rate(result.batch, config)
    heart_rate = HealthDataType.HEART_RATE
    if around is not None and heart_rate in source.supported_types:
        have = result.covered.get(heart_rate.value, [])
        if not any(s <= around[0] and around[1] <= e for s, e in have):
            result.add(source.fetch_windows(config, {heart_rate: [around]}))
    return result


def _selected(
    store: RecordStore,
    source: HealthSource,
    *,
    user_ids: frozenset[str] | None,
    select: Callable[[HealthSyncConfig, date], bool] | None,
    shard: Shard | None,
    days: Sequence[date],
    report: SyncReport,
) -> list[tuple[HealthSyncConfig, int]]:
    """(config, connected_at_us) of the people this run syncs; the others named are reported."""
    chosen = []
    known = set()
    for person in store.people(source.name):
        config = person.config
        known.add(config.user_id)
        if shard is not None and not shard.holds(config.user_id):
            continue
        if user_ids is not None and config.user_id not in user_ids:
            continue
        if select is not None and not any(select(config, day) for day in days):
            continue
        if not person.connected:
            report.users_skipped[config.user_id] = "disconnected"
        elif person.state == NEEDS_REAUTHORIZATION:
            report.users_skipped[config.user_id] = (
                f"needs reauthorization ({person.state_reason}): connect the account again"
            )
        else:
            chosen.append((config, person.connected_at_us))
    for user_id in sorted((user_ids or set()) - known):
        report.users_skipped[user_id] = "not connected"
    if shard is not None:
        for user_id in sorted((user_ids or set()) & known):
            if not shard.holds(user_id):
                report.users_skipped[user_id] = f"not in shard {shard.key}"
    return chosen


def sync_partition(
    source: HealthSource,
    store: RecordStore,
    days: date | Sequence[date],
    *,
    strategy: SyncStrategy | str = SyncStrategy.PARTITION,
    user_ids: Iterable[str] | None = None,
    select: Callable[[HealthSyncConfig, date], bool] | None = None,
    events: Mapping[str, Sequence[Event]] | None = None,
    shard: Shard | None = None,
    now: datetime,
) -> SyncReport:
    """Sync the source's people (of `user_ids`, accepted by `select`, of the `shard`) for day
    partitions (one, or a range of a backfill run: one fetch per person for all of them) under a
    strategy; `events`: each person's notifications (push)."""
    kind = parse(strategy)
    days = (days,) if isinstance(days, date) else tuple(days)
    report = SyncReport(source.name, kind.value, days, supported_types=source.supported_types)
    if kind is SyncStrategy.REFRESH:
        return report
    # Erased people stay out (their tombstones, ohx_dagster/privacy/identity.py), counted, not
    # named.
    erased = admit_discovered(store, source.discover_users())
    report.erased_left_out = len(erased)
    wanted = None if user_ids is None else frozenset(user_ids) - erased
    people = _selected(
        store, source, user_ids=wanted, select=select, shard=shard, days=days, report=report
    )
    coverage = store.coverage(source.name, [c.user_id for c, _ in people])
    waits = store.cursors(source.name, waiting.WAITING, [c.user_id for c, _ in people])
    for position, (config, connected_at_us) in enumerate(people):
        refused = store.refused_types(config)
        types = sorted((config.enabled_types & source.supported_types) - set(refused))
        pending = waiting.load(waits.get(config.user_id))
        # A window still waiting for the provider is asked again only when its backoff is over.
        later = waiting.not_due(pending, to_us(now))
        covered = {
            t.value: normalize(
                [*coverage.get((config.user_id, t.value), []), *later.get(t.value, [])]
            )
            for t in types
        }
        windows: dict[HealthDataType, list[Interval]] = {}
        # Stored data that changes after this instant was written by a run that asked the
        # provider later than this one: this run's answer must not take it away (store.commit).
        asked_at_us = now_us()
        try:
            announced = None
            if events and events.get(config.user_id):
                # Reading what the notifications name may call the provider (Oura documents):
                # it fails, defers and parks the person the same way the fetch does.
                announced = source.event_windows(config, events[config.user_id], now)
                if kind is SyncStrategy.PUSH and announced:
                    # Until read again, what changed is not covered: if this run cannot read
                    # it, the schedules' catch-up will.
                    store.uncover(
                        source.name,
                        config.user_id,
                        {t.value: [(s, min(e, to_us(now))) for s, e in w]
                         for t, w in announced.items() if t in types},
                    )  # fmt: skip
            windows = plan_days(
                kind,
                days=days,
                config=config,
                types=types,
                history_start=history_start(config, connected_at_us, now),
                now=now,
                covered=covered,
                horizon=source.resync_horizon,
                announced=announced,
            )
            if not windows:
                report.users_synced.append(config.user_id)
                continue
            result = fetch_person(source, config, windows)
        except RateLimited as exc:
            # Every further call would be refused too: defer the rest of the people.
            report.deferred = [c.user_id for c, _ in people[position:]]
            report.retry_after_s = max(report.retry_after_s or 0.0, exc.retry_after_s or 60.0)
            break
        except NeedsReauthorization as exc:
            store.set_state(source.name, config.user_id, NEEDS_REAUTHORIZATION, str(exc))
            report.users_skipped[config.user_id] = f"needs reauthorization: {exc}"
            continue
        except (ProviderError, OhxError, ValueError, OSError) as exc:
            # OSError: a provider's network failure (reset, timeout) is one person's failure.
            message = f"{type(exc).__name__}: {exc}"
            report.failures[config.user_id] = message
            asked = windows or dict.fromkeys(types)
            store.record_errors(source.name, config.user_id, {t.value: message for t in asked})
            # Bad data or config stays bad on retry; a provider or network error may pass.
            report.transient &= isinstance(exc, ProviderError | OSError)
            continue
        # A notified window the provider answered empty is not covered
        # (ohx_dagster/sync/waiting.py).
        still, answered = waiting.settle(
            pending,
            announced if kind is SyncStrategy.PUSH else None,
            result.batch,
            result.covered,
            stored=partial(store.holds, source.name, config.user_id),
            now_us=to_us(now),
        )
        cursors = dict(result.cursors)
        if still or pending:
            cursors[waiting.WAITING] = waiting.dump(still)
        report.waiting_for_provider += sum(1 for w in still if not w.expired)
        commit = store.commit(
            source.name,
            config.user_id,
            config,
            result.batch,
            covered=answered,
            replace=answered,
            cursors=cursors,
            asked_at_us=asked_at_us,
        )
        report.days_changed |= commit.days
        if result.refused:
            store.record_errors(
                source.name, config.user_id, result.refused, refused=True, config=config
            )
            report.refused[config.user_id] = dict(result.refused)
        if result.failed:
            store.record_errors(source.name, config.user_id, result.failed)
            report.failures[config.user_id] = "; ".join(
                f"{t}: {m}" for t, m in sorted(result.failed.items())
            )
        else:
            report.users_synced.append(config.user_id)
        _count(report, result.batch)
        for data_type, count in implausible_values(result.batch).items():
            report.implausible[data_type] = report.implausible.get(data_type, 0) + count
        report.unlinked += recordings_without_heart_rate(result.batch)
    if report.incomplete:
        raise SyncFailed(report)
    return report


def _count(report: SyncReport, batch: pd.DataFrame) -> None:
    if batch.empty:
        return
    for data_type, rows in rows_by(batch["data_type"].to_numpy()).items():
        report.records_by_type[data_type] = report.records_by_type.get(data_type, 0) + len(rows)
    first, last = batch["ts"].min().to_pydatetime(), batch["ts"].max().to_pydatetime()
    report.first = first if report.first is None else min(report.first, first)
    report.last = last if report.last is None else max(report.last, last)


# -- the run's checks (raw_health_records' asset checks; the fault suite reads the same) ----------


def uncovered(store: RecordStore, report: SyncReport, now: datetime) -> list[str]:
    """People the run synced whose goal is still not covered on one of its days, for a type the
    source delivers and the provider did not refuse: the invariant the sync keeps, checked
    against the store after the run."""
    strategy = parse(report.strategy)
    problems: list[str] = []
    if strategy is SyncStrategy.REFRESH or not report.users_synced:
        return problems
    synced = set(report.users_synced)
    coverage = store.coverage(report.source, sorted(synced))
    # A window waiting for the provider (a notification it answered empty) is no gap of the
    # run's: it is asked again, and sync_status says when it is late (ohx_dagster/sync/waiting.py).
    waits = store.cursors(report.source, waiting.WAITING, synced)
    for user_id, text in waits.items():
        for item in waiting.load(text):
            if not item.expired:
                key = (user_id, item.data_type)
                coverage[key] = normalize([*coverage.get(key, []), (item.start_us, item.end_us)])
    for person in store.people(report.source):
        config = person.config
        if config.user_id not in synced:
            continue
        start = history_start(config, person.connected_at_us, now)
        refused = set(report.refused.get(config.user_id, {})) | set(store.refused_types(config))
        for day in report.days:
            target = goal(strategy, day, config, start, now)
            if target is None:
                continue
            for kind in sorted(config.enabled_types & report.supported_types):
                if kind.value in refused:
                    continue
                missing = gaps(target, coverage.get((config.user_id, kind.value), []))
                if missing:
                    problems.append(f"{config.user_id} {kind.value} {day}: {len(missing)} gap(s)")
    return problems


def skipped(store: RecordStore, report: SyncReport) -> list[str]:
    """What the run could not fetch and no retry will: the types the provider refuses to the
    people it synced (403), and the people whose grant it no longer accepts (they must connect
    again). Shown until the person reconnects or their settings change."""
    problems = [
        f"{user}: {reason}"
        for user, reason in sorted(report.users_skipped.items())
        if NEEDS_REAUTHORIZATION.replace("_", " ") in reason
    ]
    people = {p.config.user_id: p.config for p in store.people(report.source)}
    for user in sorted(set(report.users_synced) | set(report.refused)):
        refused = dict(report.refused.get(user, {}))
        if user in people:
            enabled = {k.value for k in people[user].enabled_types & report.supported_types}
            refused |= {k: r for k, r in store.refused_types(people[user]).items() if k in enabled}
        problems += [f"{user} {kind}: refused: {why}" for kind, why in sorted(refused.items())]
    return problems


def run_checks(store: RecordStore, report: SyncReport, now: datetime) -> dict[str, list[str]]:
    """The raw asset's checks of a finished run: check name -> problems (none: passed)."""
    return {"day_covered": uncovered(store, report, now), "nothing_skipped": skipped(store, report)}
