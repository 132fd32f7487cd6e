"""Sync strategies: which time window to fetch, as pure functions of config, state and now.

- initial: a new user's history, `lookback_days` back from now (30 by default).
- incremental: from the last committed sync minus a 5-minute overlap (late-arriving samples), or
  the last 24 hours when the user was never synced.
- push: the last 15 minutes, for webhook-triggered realtime runs, reaching back to the oldest
  event of the batch when the webhooks name older data.
- partition: the whole partition day, what a plain materialization or a UI backfill means.
- close: the user's whole local calendar day whose date is the partition's, run once after the
  user's local midnight (daily-frequency users are synced only then).

A run for a day partition fetches the strategy's window clipped to that day, so a partition's run
never writes records that belong to another partition. `close` is the one exception: a local day
straddles two UTC days, and its records land in the store where the neighbouring partition's
aggregates pick them up on that partition's next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Final

from ohx_dagster.errors import ValidationError
from ohx_dagster.models import DateRange, HealthSyncConfig, require_aware


class SyncStrategy(StrEnum):
    INITIAL = "initial"
    INCREMENTAL = "incremental"
    PUSH = "push"
    PARTITION = "partition"
    CLOSE = "close"


INCREMENTAL_OVERLAP: Final = timedelta(minutes=5)
INCREMENTAL_FALLBACK: Final = timedelta(hours=24)
PUSH_WINDOW: Final = timedelta(minutes=15)

# Records per provider request page, and the run priority (Dagster's dagster/priority tag).
BATCH_SIZE: Final[dict[SyncStrategy, int]] = {
    SyncStrategy.INITIAL: 1000,
    SyncStrategy.INCREMENTAL: 100,
    SyncStrategy.PUSH: 50,
    SyncStrategy.PARTITION: 1000,
    SyncStrategy.CLOSE: 1000,
}
PRIORITY: Final[dict[SyncStrategy, int]] = {
    SyncStrategy.PUSH: 10,
    SyncStrategy.INCREMENTAL: 0,
    SyncStrategy.PARTITION: 0,
    SyncStrategy.CLOSE: 0,
    SyncStrategy.INITIAL: -10,
}


@dataclass(frozen=True, slots=True)
class SyncPlan:
    strategy: SyncStrategy
    window: DateRange
    batch_size: int
    priority: int


def _plan(strategy: SyncStrategy, start: datetime, end: datetime) -> SyncPlan:
    return SyncPlan(strategy, DateRange(start, end), BATCH_SIZE[strategy], PRIORITY[strategy])


def initial_plan(config: HealthSyncConfig, now: datetime) -> SyncPlan:
    now = require_aware("now", now)
    return _plan(SyncStrategy.INITIAL, now - timedelta(days=config.lookback_days), now)


def incremental_plan(last_synced: datetime | None, now: datetime) -> SyncPlan:
    now = require_aware("now", now)
    if last_synced is None:
        return _plan(SyncStrategy.INCREMENTAL, now - INCREMENTAL_FALLBACK, now)
    start = require_aware("last_synced", last_synced) - INCREMENTAL_OVERLAP
    return _plan(SyncStrategy.INCREMENTAL, min(start, now), now)


def push_plan(now: datetime, since: datetime | None = None) -> SyncPlan:
    """The last 15 minutes, or from `since` (the oldest webhook event's time) when earlier."""
    now = require_aware("now", now)
    start = now - PUSH_WINDOW
    if since is not None:
        start = min(start, require_aware("since", since) - INCREMENTAL_OVERLAP)
    return _plan(SyncStrategy.PUSH, start, now)


def close_plan(day: date, config: HealthSyncConfig, now: datetime) -> SyncPlan:
    """The user's local calendar day `day`, up to now."""
    start = datetime.combine(day, time(), tzinfo=config.zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=config.zone)
    now = require_aware("now", now)
    return _plan(SyncStrategy.CLOSE, start, max(start, min(end, now)))


def partition_plan(partition: DateRange, now: datetime) -> SyncPlan:
    end = min(partition.end, require_aware("now", now))
    return _plan(SyncStrategy.PARTITION, partition.start, max(end, partition.start))


def plan_for_partition(
    strategy: SyncStrategy | str,
    *,
    partition: DateRange,
    config: HealthSyncConfig,
    last_synced: datetime | None,
    now: datetime,
    since: datetime | None = None,
) -> SyncPlan | None:
    """The strategy's window for one user, clipped to the partition day (but for `close`);
    None if they miss."""
    try:
        kind = SyncStrategy(strategy)
    except ValueError:
        raise ValidationError(
            "strategy", strategy, f"one of {[s.value for s in SyncStrategy]}"
        ) from None
    if kind is SyncStrategy.INITIAL:
        plan = initial_plan(config, now)
    elif kind is SyncStrategy.INCREMENTAL:
        plan = incremental_plan(last_synced, now)
    elif kind is SyncStrategy.PUSH:
        plan = push_plan(now, since)
    elif kind is SyncStrategy.CLOSE:
        plan = close_plan(partition.start.date(), config, now)
        return plan if plan.window.duration else None
    else:
        plan = partition_plan(partition, now)
    window = plan.window.intersect(partition)
    if window is None:
        return None
    return SyncPlan(plan.strategy, window, plan.batch_size, plan.priority)
