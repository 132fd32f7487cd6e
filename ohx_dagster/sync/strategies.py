"""Sync strategies: which windows to fetch for one person and type, as pure functions of the
partition day, the person's history start, what is already covered, and now.

Every strategy leaves its goal covered: the fetch is computed from coverage (`gaps`), never from a
clock mark, so runs of any days in any order, or at the same time, never skip data.

| strategy | goal | fetched |
|---|---|---|
| partition | the UTC day, up to now | the whole goal, covered or not (asked for by hand) |
| initial | the day from the person's history start | the goal's gaps |
| incremental | the day from the history start | gaps; today's run also the trailing horizon |
| push | as incremental | gaps, and every window the notifications name (never the horizon) |
| close | the person's local calendar day | gaps, and the trailing horizon before now |
| refresh | none | nothing: publish what changed (late data, a status turning final) |

The trailing re-sync horizon (per provider, providers/registry.py) is re-read by today's
incremental run and by a daily person's close run (their only run of the day), across midnight:
uploads that reach the provider late land without a run for each day they belong to. A push does
not re-read it: a notification names what changed, and a realtime person's hourly incremental run
re-reads the horizon, so a push pays for its new data only (issue 21: an hour re-read for each
one-minute event was 60 times the work).

A person's history starts `lookback_days` before they connected and never before their retention
period (ohx_dagster.storage.store.history_start). Windows may reach beyond the partition day (the
horizon, a notification's range, a local day): what they change is marked for publishing in the
partitions it belongs to (store.CommitReport.days).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Final

from ohx_dagster.core import coverage as cov
from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day


class SyncStrategy(StrEnum):
    INITIAL = "initial"
    INCREMENTAL = "incremental"
    PUSH = "push"
    PARTITION = "partition"
    CLOSE = "close"
    REFRESH = "refresh"


# The run priority (Dagster's dagster/priority tag): realtime first, history last.
PRIORITY: Final[dict[SyncStrategy, int]] = {
    SyncStrategy.PUSH: 10,
    SyncStrategy.REFRESH: 5,
    SyncStrategy.INCREMENTAL: 0,
    SyncStrategy.PARTITION: 0,
    SyncStrategy.CLOSE: 0,
    SyncStrategy.INITIAL: -10,
}


def parse(strategy: SyncStrategy | str) -> SyncStrategy:
    try:
        return SyncStrategy(strategy)
    except ValueError:
        raise ValidationError(
            "strategy", strategy, f"one of {[s.value for s in SyncStrategy]}"
        ) from None


def local_day(day: date, config: HealthSyncConfig) -> Interval:
    """The person's local day `day` as UTC microseconds (their zone history included)."""
    return Calendar.of(config).day_window(day)


def goal(
    strategy: SyncStrategy,
    day: date,
    config: HealthSyncConfig,
    history_start: datetime,
    now: datetime,
) -> Interval | None:
    """The window the run must leave covered for the person, or None."""
    if strategy is SyncStrategy.REFRESH:
        return None
    if strategy is SyncStrategy.CLOSE:
        start, end = local_day(day, config)
    else:
        # The UTC day, and the person's local day of that date, which the partition publishes
        # (ohx_dagster/core/localdays.py): a partition's run leaves its own publication complete.
        window = utc_day(day)
        local_start, local_end = local_day(day, config)
        start, end = min(to_us(window.start), local_start), max(to_us(window.end), local_end)
    if strategy is not SyncStrategy.PARTITION:
        start = max(start, to_us(history_start))
    end = min(end, to_us(now))
    return (start, end) if start < end else None


def plan_windows(
    strategy: SyncStrategy | str,
    *,
    day: date,
    config: HealthSyncConfig,
    types: Sequence[HealthDataType],
    history_start: datetime,
    now: datetime,
    covered: Mapping[str, Sequence[Interval]],
    horizon: timedelta,
    announced: Mapping[HealthDataType, Sequence[Interval]] | None = None,
) -> dict[HealthDataType, list[Interval]]:
    """The windows to fetch per type (normalized; types with nothing to fetch are left out)."""
    kind = parse(strategy)
    target = goal(kind, day, config, history_start, now)
    now_us = to_us(now)
    today = now.date() == day
    plan: dict[HealthDataType, list[Interval]] = {}
    for data_type in types:
        windows: list[Interval] = []
        if target is not None:
            if kind is SyncStrategy.PARTITION:
                windows.append(target)
            else:
                windows += cov.gaps(target, covered.get(data_type.value, ()))
            owns_horizon = kind is SyncStrategy.CLOSE or (
                kind is SyncStrategy.INCREMENTAL and today
            )
            if owns_horizon and horizon:
                # Today's run (and a daily person's close, their only run of the day) owns the
                # trailing horizon, across midnight: late uploads of the days before land without
                # a run for each of them.
                start = max(now_us - int(horizon.total_seconds() * 1e6), to_us(history_start))
                windows.append((start, now_us))
        if kind is SyncStrategy.PUSH and announced:
            windows += [(s, min(e, now_us)) for s, e in announced.get(data_type, ())]
        windows = cov.normalize(windows)
        if windows:
            plan[data_type] = windows
    return plan


def plan_days(
    strategy: SyncStrategy | str,
    *,
    days: Sequence[date],
    announced: Mapping[HealthDataType, Sequence[Interval]] | None = None,
    **plan: object,
) -> dict[HealthDataType, list[Interval]]:
    """`plan_windows` over several day partitions, joined: a backfill run covering a week asks
    the provider once per type, not once per day."""
    joined: dict[HealthDataType, list[Interval]] = {}
    for position, day in enumerate(days):
        found = plan_windows(
            strategy,
            day=day,
            announced=announced if position == 0 else None,
            **plan,  # type: ignore[arg-type]
        )
        for data_type, windows in found.items():
            joined.setdefault(data_type, []).extend(windows)
    return {t: cov.normalize(w) for t, w in joined.items()}
