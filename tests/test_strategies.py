"""Sync strategies at their edges: lookback, overlap, fallback, push window, partition clipping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ohx_dagster.errors import ValidationError
from ohx_dagster.models import DateRange, HealthSyncConfig
from ohx_dagster.strategies import (
    PRIORITY,
    SyncStrategy,
    incremental_plan,
    initial_plan,
    partition_plan,
    plan_for_partition,
    push_plan,
)

NOW = datetime(2016, 4, 12, 14, 30, tzinfo=UTC)
CONFIG = HealthSyncConfig(user_id="u1", provider="fitbit")
MINUTE = timedelta(minutes=1)


def day(offset_days: int) -> DateRange:
    """The UTC day `offset_days` from NOW's day."""
    start = datetime(2016, 4, 12, tzinfo=UTC) + timedelta(days=offset_days)
    return DateRange(start, start + timedelta(days=1))


def plan(strategy: str, partition: DateRange, last: datetime | None = None, **kw: object):
    config = kw.pop("config", CONFIG)
    now = kw.pop("now", NOW)
    return plan_for_partition(
        strategy,
        partition=partition,
        config=config,  # type: ignore[arg-type]
        last_synced=last,
        now=now,  # type: ignore[arg-type]
    )


def test_initial_reaches_back_30_days_in_batches_of_1000_at_low_priority() -> None:
    initial = initial_plan(CONFIG, NOW)
    assert initial.window == DateRange(NOW - timedelta(days=30), NOW)
    assert initial.batch_size == 1000
    assert initial.priority < PRIORITY[SyncStrategy.INCREMENTAL] < PRIORITY[SyncStrategy.PUSH]
    longer = HealthSyncConfig(user_id="u1", provider="fitbit", lookback_days=90)
    assert initial_plan(longer, NOW).window.start == NOW - timedelta(days=90)


def test_initial_clipped_to_partition_days_at_the_lookback_edge() -> None:
    # The lookback starts at 14:30 thirty days ago: that day is partly inside, the day before out.
    edge = plan("initial", day(-30))
    assert edge is not None
    assert edge.window == DateRange(NOW - timedelta(days=30), day(-30).end)
    assert plan("initial", day(-31)) is None
    assert plan("initial", day(-5)).window == day(-5)  # type: ignore[union-attr]
    assert plan("initial", day(0)).window == DateRange(day(0).start, NOW)  # type: ignore[union-attr]
    assert plan("initial", day(1)) is None


def test_incremental_overlaps_the_last_sync_by_five_minutes() -> None:
    last = NOW - timedelta(hours=1)
    incremental = incremental_plan(last, NOW)
    assert incremental.window == DateRange(last - 5 * MINUTE, NOW)
    assert incremental.batch_size == 100
    assert incremental.strategy is SyncStrategy.INCREMENTAL


def test_incremental_falls_back_to_24_hours_when_never_synced() -> None:
    assert incremental_plan(None, NOW).window == DateRange(NOW - timedelta(hours=24), NOW)
    # Clipped: yesterday from 14:30, today up to now, nothing for the day before.
    assert plan("incremental", day(-1)).window == DateRange(  # type: ignore[union-attr]
        NOW - timedelta(hours=24), day(-1).end
    )
    assert plan("incremental", day(0)).window == DateRange(day(0).start, NOW)  # type: ignore[union-attr]
    assert plan("incremental", day(-2)) is None


def test_incremental_synced_just_now_still_fetches_the_overlap() -> None:
    assert incremental_plan(NOW, NOW).window == DateRange(NOW - 5 * MINUTE, NOW)


def test_incremental_overlap_crosses_midnight_into_yesterday() -> None:
    after_midnight = datetime(2016, 4, 12, 0, 2, tzinfo=UTC)
    yesterday = plan("incremental", day(-1), last=after_midnight, now=after_midnight)
    assert yesterday is not None
    assert yesterday.window == DateRange(after_midnight - 5 * MINUTE, day(-1).end)
    today = plan("incremental", day(0), last=after_midnight, now=after_midnight)
    assert today.window == DateRange(day(0).start, after_midnight)  # type: ignore[union-attr]


def test_incremental_with_a_last_sync_in_the_future_fetches_nothing() -> None:
    later = NOW + timedelta(hours=2)
    assert incremental_plan(later, NOW).window.duration == timedelta(0)
    assert plan("incremental", day(0), last=later) is None


def test_push_is_the_last_15_minutes_in_batches_of_50_at_high_priority() -> None:
    push = push_plan(NOW)
    assert push.window == DateRange(NOW - 15 * MINUTE, NOW)
    assert (push.batch_size, push.priority) == (50, PRIORITY[SyncStrategy.PUSH])
    assert push.priority == max(PRIORITY.values())
    just_after_midnight = datetime(2016, 4, 12, 0, 10, tzinfo=UTC)
    split = plan("push", day(-1), now=just_after_midnight)
    assert split.window == DateRange(just_after_midnight - 15 * MINUTE, day(-1).end)  # type: ignore[union-attr]
    assert plan("push", day(-1)) is None


def test_partition_is_the_whole_day_or_up_to_now() -> None:
    assert plan("partition", day(-3)).window == day(-3)  # type: ignore[union-attr]
    assert plan("partition", day(0)).window == DateRange(day(0).start, NOW)  # type: ignore[union-attr]
    assert partition_plan(day(1), NOW).window.duration == timedelta(0)
    assert plan("partition", day(1)) is None
    assert plan("partition", day(0), now=day(0).start) is None


def test_windows_are_utc_whatever_zone_now_is_in() -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    window = plan("incremental", day(0), now=tokyo).window  # type: ignore[union-attr]
    assert window.end == NOW and window.end.tzinfo is UTC


@pytest.mark.parametrize("strategy", ["initial", "incremental", "push", "partition"])
def test_naive_now_is_rejected(strategy: str) -> None:
    with pytest.raises(ValidationError) as caught:
        plan(strategy, day(0), now=NOW.replace(tzinfo=None))
    assert caught.value.field == "now"


def test_naive_last_synced_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        incremental_plan(NOW.replace(tzinfo=None), NOW)
    assert caught.value.field == "last_synced"


def test_unknown_strategy_names_the_field() -> None:
    with pytest.raises(ValidationError, match="strategy='weekly'") as caught:
        plan("weekly", day(0))
    assert caught.value.field == "strategy"
