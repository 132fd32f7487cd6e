"""A notified window the provider answered empty waits for the provider: it is never covered by
the empty answer, it is asked again with backoff, and it stops waiting when the data comes, or is
given up on (covered, reported) after GIVE_UP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.coverage import gaps, normalize
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.core.records import make_batch
from ohx_dagster.core.times import HOUR_US, to_us
from ohx_dagster.sync import waiting

HR = HealthDataType.HEART_RATE
T0 = datetime(2026, 11, 20, tzinfo=UTC)
NIGHT = (to_us(T0), to_us(T0 + timedelta(hours=8)))
ASKED = {HR.value: [(to_us(T0 - timedelta(hours=2)), to_us(T0 + timedelta(hours=10)))]}
EMPTY = pd.DataFrame(columns=["data_type", "ts"]).astype({"ts": "datetime64[us, UTC]"})


def night_batch() -> pd.DataFrame:
    moments = [T0 + timedelta(minutes=5 * i) for i in range(96)]
    return make_batch(provider="oura", user_id="p", data_type="heart_rate", timestamps=moments,
                      values=[60.0] * 96, unit="/min")  # fmt: skip


def settle(pending, *, announced=None, batch=EMPTY, stored=False, now=NIGHT[1] + HOUR_US):
    return waiting.settle(pending, announced, batch, ASKED, stored=lambda *_: stored, now_us=now)


def test_an_empty_answer_to_a_notification_covers_nothing_of_the_night() -> None:
    still, covered = settle([], announced={HR: [NIGHT]})
    assert [(w.start_us, w.end_us, w.expired) for w in still] == [(*NIGHT, False)]
    assert gaps(NIGHT, covered[HR.value]) == [NIGHT]  # the rest of what was asked is covered
    assert gaps(ASKED[HR.value][0], covered[HR.value]) == [NIGHT]


def test_an_empty_answer_where_data_was_stored_is_a_deletion_and_covers() -> None:
    still, covered = settle([], announced={HR: [NIGHT]}, stored=True)
    assert still == [] and covered == ASKED


def test_the_window_is_asked_again_with_backoff_until_the_data_comes() -> None:
    now = NIGHT[1] + HOUR_US
    still, _ = settle([], announced={HR: [NIGHT]}, now=now)
    waits = []
    for _ in range(7):
        (item,) = still
        assert waiting.not_due(still, item.next_ask_us - 1) == {HR.value: [NIGHT]}
        assert waiting.not_due(still, item.next_ask_us) == {}
        waits.append((item.next_ask_us - item.asked_us) // HOUR_US)
        still, covered = settle(still, now=item.next_ask_us)
        assert gaps(NIGHT, covered[HR.value]) == [NIGHT]
    assert waits == [1, 2, 4, 8, 16, 24, 24]
    still, covered = settle(still, batch=night_batch(), now=still[0].next_ask_us)
    assert still == [] and covered == ASKED


def test_given_up_after_two_weeks_covered_and_reported_then_forgotten() -> None:
    still, _ = settle([], announced={HR: [NIGHT]})
    later = NIGHT[1] + (waiting.GIVE_UP + timedelta(hours=2)) // timedelta(microseconds=1)
    still, covered = settle(still, now=later)
    assert [w.expired for w in still] == [True] and covered == ASKED
    assert still[0].late(later, timedelta(hours=48))
    gone = NIGHT[1] + (waiting.FORGET_AFTER + timedelta(hours=2)) // timedelta(microseconds=1)
    assert settle(still, now=gone)[0] == []


def test_the_list_survives_its_cursor() -> None:
    still, _ = settle([], announced={HR: [NIGHT]})
    assert waiting.load(waiting.dump(still)) == still
    assert waiting.load(None) == []


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), min_size=1, max_size=5),
    st.lists(st.integers(0, 52 * 12), max_size=40),
)
def test_no_empty_notified_window_is_ever_covered_before_its_data_or_give_up(windows, samples):
    """Whatever is notified and whatever the answer holds, the coverage an answer adds never
    includes a notified window that answered empty (before give-up), and always includes the
    rest of what was asked."""
    start = to_us(T0)
    announced = {HR: [(start + a * HOUR_US, start + (a + n) * HOUR_US) for a, n in windows]}
    asked = {HR.value: [(start, start + 52 * HOUR_US)]}
    moments = sorted({T0 + timedelta(minutes=5 * m) for m in samples})
    batch = (
        make_batch(provider="oura", user_id="p", data_type="heart_rate", timestamps=moments,
                   values=[60.0] * len(moments), unit="/min")
        if moments else EMPTY
    )  # fmt: skip
    stamps = [to_us(m) for m in moments]
    still, covered = waiting.settle(
        [], announced, batch, asked, stored=lambda *_: False, now_us=start + 60 * HOUR_US
    )
    # Notifications that overlap name one window together.
    for a, b in normalize(announced[HR]):
        empty = not any(a <= t < b for t in stamps)
        assert any((w.start_us, w.end_us) == (a, b) for w in still) == empty
        if empty:
            assert gaps((a, b), covered[HR.value]) == [(a, b)]
    open_windows = [(w.start_us, w.end_us) for w in still]
    for piece in gaps(asked[HR.value][0], open_windows):
        assert gaps(piece, covered[HR.value]) == []


def test_status_says_waiting_then_late_after_the_horizon(sqlite_store) -> None:
    """`ohx status` and the sync_status asset read the same rows: the type says it waits for the
    provider, and is late once the re-sync horizon has passed."""
    from ohx_dagster.core.models import HealthSyncConfig
    from ohx_dagster.sync.status import collect

    config = HealthSyncConfig("p", "oura", timezone="Europe/Berlin")
    sqlite_store.add_users([config])
    still, _ = settle([], announced={HR: [NIGHT]})
    with sqlite_store.write() as conn:
        sqlite_store.set_cursor(conn, "oura", "p", waiting.WAITING, waiting.dump(still))
    now = T0 + timedelta(hours=10)
    (row,) = [r for r in collect(sqlite_store, "oura", now) if r.data_type == HR.value]
    assert row.waiting_windows == 1 and row.state_text().startswith("waiting for the provider")
    assert not row.waiting_late(now, timedelta(hours=48))
    assert row.waiting_late(now + timedelta(hours=48), timedelta(hours=48))


def test_the_hourly_catch_up_waits_for_the_backoff_too(sqlite_store) -> None:
    """A day whose only gap is a window waiting for the provider gets a catch-up run only when
    the window's backoff is over (a run per hour for nothing costs seconds of CPU each)."""
    from ohx_dagster.core.models import HealthSyncConfig
    from ohx_dagster.storage.schema import users
    from sensors.schedules import days_with_gaps

    config = HealthSyncConfig("p", "oura", timezone="UTC", enabled_types=frozenset({HR}))
    sqlite_store.add_users([config])
    with sqlite_store.write() as conn:  # connected long before the scenario, not at test time
        conn.execute(users.update().values(connected_at_us=to_us(T0 - timedelta(days=10))))
    day = T0.date()
    history = (to_us(T0 - timedelta(days=40)), to_us(T0 + timedelta(days=2)))
    covered = [piece for piece in gaps(history, [NIGHT])]
    sqlite_store.commit("oura", "p", config, EMPTY.iloc[:0], covered={HR.value: covered})
    still, _ = settle([], announced={HR: [NIGHT]})
    with sqlite_store.write() as conn:
        sqlite_store.set_cursor(conn, "oura", "p", waiting.WAITING, waiting.dump(still))
    first = day - timedelta(days=3)
    later = T0 + timedelta(days=2)  # connected long enough ago for the catch-up
    assert day in days_with_gaps(sqlite_store, "oura", later, first)  # due long ago
    with sqlite_store.write() as conn:
        fresh = [waiting.Waiting(HR.value, *NIGHT, since_us=to_us(later), asked_us=to_us(later))]
        sqlite_store.set_cursor(conn, "oura", "p", waiting.WAITING, waiting.dump(fresh))
    assert day not in days_with_gaps(sqlite_store, "oura", later, first)
    assert day in days_with_gaps(sqlite_store, "oura", later + timedelta(hours=1), first)
