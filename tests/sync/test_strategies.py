"""Sync strategies: windows from coverage, never from a clock mark.

The invariant under test: whatever order runs of any strategy happen in, every run leaves its
goal covered, and fetches nothing that is covered unless its strategy says to re-read it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.coverage import gaps, normalize
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.sync.strategies import SyncStrategy, goal, local_day, plan_days, plan_windows

NOW = datetime(2026, 11, 30, 14, 30, tzinfo=UTC)
TODAY = NOW.date()
CONFIG = HealthSyncConfig(user_id="u1", provider="oura", timezone="America/New_York")
HR = HealthDataType.HEART_RATE
HISTORY = NOW - timedelta(days=30)


def day_span(day: date) -> tuple[int, int]:
    """What a run of day partition `day` must leave covered: the UTC day, and the person's local
    day of that date (New York: until 05:00Z the next day), which the partition publishes."""
    window = utc_day(day)
    local_start, local_end = local_day(day, CONFIG)
    return min(to_us(window.start), local_start), max(to_us(window.end), local_end)


def plan(strategy: str, day: date, covered=(), horizon=timedelta(0), announced=None, now=NOW):
    return plan_windows(
        strategy,
        day=day,
        config=CONFIG,
        types=[HR],
        history_start=HISTORY,
        now=now,
        covered={HR.value: list(covered)},
        horizon=horizon,
        announced=announced,
    ).get(HR, [])


def test_partition_reads_the_whole_day_even_when_covered() -> None:
    day = TODAY - timedelta(days=3)
    assert plan("partition", day, covered=[day_span(day)]) == [day_span(day)]


def test_incremental_reads_only_the_gaps_of_an_earlier_day() -> None:
    day = TODAY - timedelta(days=3)
    start, end = day_span(day)
    middle = (start + 3_600_000_000, start + 7_200_000_000)
    assert plan("incremental", day, covered=[middle]) == [(start, middle[0]), (middle[1], end)]
    assert plan("incremental", day, covered=[day_span(day)]) == []


def test_todays_incremental_rereads_the_horizon_across_midnight() -> None:
    start, _ = day_span(TODAY)
    covered = [(to_us(HISTORY), to_us(NOW))]
    windows = plan("incremental", TODAY, covered=covered, horizon=timedelta(hours=48))
    assert windows == [(to_us(NOW - timedelta(hours=48)), to_us(NOW))]
    assert windows[0][0] < start  # yesterday's late uploads are read by today's run
    # An earlier day's run does not re-read the horizon: that is today's run's job.
    assert (
        plan("incremental", TODAY - timedelta(days=1), covered=covered, horizon=timedelta(hours=48))
        == []
    )


def test_push_reads_what_the_notification_announced_wherever_it_falls() -> None:
    covered = [(to_us(HISTORY), to_us(NOW))]
    night = (to_us(NOW - timedelta(hours=20)), to_us(NOW - timedelta(hours=12)))
    assert plan("push", TODAY, covered=covered, announced={HR: [night]}) == [night]
    # Never less: a gap of the day is read too.
    start, _ = day_span(TODAY)
    hole = (start, start + 600_000_000)
    rest = [(hole[1], to_us(NOW))]
    assert plan(
        "push", TODAY, covered=[(to_us(HISTORY), start), *rest], announced={HR: [night]}
    ) == normalize([night, hole])


def test_push_pays_for_new_data_only_never_the_horizon() -> None:
    """A realtime person's push a minute after the last one reads that minute and what the
    notification names; the horizon is the hourly incremental run's (issue 21)."""
    last = NOW - timedelta(minutes=1)
    covered = [(to_us(HISTORY), to_us(last))]
    assert plan("push", TODAY, covered=covered, horizon=timedelta(hours=48)) == [
        (to_us(last), to_us(NOW))
    ]
    late = (to_us(NOW - timedelta(hours=30)), to_us(NOW - timedelta(hours=29)))
    assert plan(
        "push", TODAY, covered=covered, horizon=timedelta(hours=48), announced={HR: [late]}
    ) == [late, (to_us(last), to_us(NOW))]
    # The incremental run of the same moment re-reads the horizon.
    assert plan("incremental", TODAY, covered=covered, horizon=timedelta(hours=48)) == [
        (to_us(NOW - timedelta(hours=48)), to_us(NOW))
    ]


def test_initial_starts_at_the_persons_history() -> None:
    edge = HISTORY.date()
    _, end = day_span(edge)
    assert plan("initial", edge) == [(to_us(HISTORY), end)]
    assert plan("initial", edge - timedelta(days=1)) == []


def test_close_covers_the_persons_local_day() -> None:
    day = TODAY - timedelta(days=1)
    assert plan("close", day) == [local_day(day, CONFIG)]


def test_refresh_fetches_nothing() -> None:
    assert plan("refresh", TODAY) == []
    assert goal(SyncStrategy.REFRESH, TODAY, CONFIG, HISTORY, NOW) is None


def test_nothing_after_now_is_asked_for() -> None:
    assert all(end <= to_us(NOW) for _, end in plan("partition", TODAY))
    assert plan("partition", TODAY + timedelta(days=1)) == []


def test_a_backfill_run_asks_once_for_a_week() -> None:
    days = [TODAY - timedelta(days=d) for d in range(10, 3, -1)]
    windows = plan_days(
        "initial",
        days=days,
        config=CONFIG,
        types=[HR],
        history_start=HISTORY,
        now=NOW,
        covered={},
        horizon=timedelta(0),
    )
    assert windows[HR] == [(day_span(days[0])[0], day_span(days[-1])[1])]


runs = st.lists(
    st.tuples(
        st.sampled_from(["incremental", "initial", "push", "partition", "close"]), st.integers(0, 6)
    ),
    min_size=1,
    max_size=12,
)


@given(runs, st.lists(st.tuples(st.integers(0, 6), st.integers(0, 23)), max_size=5))
@settings(max_examples=examples(300), deadline=None)
def test_runs_in_any_order_leave_every_goal_covered(sequence, failures) -> None:
    """Apply runs in the given order (a failed run commits nothing); after each successful run
    its goal is covered, whatever came before."""
    covered: list[tuple[int, int]] = []
    failed = {(d, h) for d, h in failures}
    for position, (strategy, back) in enumerate(sequence):
        day = TODAY - timedelta(days=back)
        windows = plan(strategy, day, covered=covered, horizon=timedelta(hours=24))
        if (back, position % 24) in failed:
            continue
        covered = normalize([*covered, *windows])
        target = goal(SyncStrategy(strategy), day, CONFIG, HISTORY, NOW)
        if target is not None:
            assert gaps(target, covered) == []
