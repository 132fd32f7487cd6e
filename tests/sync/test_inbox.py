"""The webhook inbox on SQLite and PostgreSQL: dedup, cursor order, batch bounds, status changes."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.providers.webhook.events import MAX_CHARS, MAX_PAYLOAD_BYTES, NewEvent
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox, pending_after

WHEN = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


def event(key: str, user: str = "sim-001", data_type: str | None = "heart_rate", **extra):
    return NewEvent("simulated", key, user, data_type, WHEN, {"event_id": key}, **extra)


def test_add_commits_new_events_and_skips_duplicates(store: RecordStore):
    inbox = Inbox(store)
    assert inbox.add([event("a"), event("b")]) == 2
    assert inbox.add([event("b"), event("c")]) == 1  # a provider retry of "b" adds nothing
    # The same key from another provider is another event.
    assert inbox.add([NewEvent("oura", "b", "u", "steps", None, {})]) == 1
    assert inbox.add([event("d"), event("d")]) == 1  # a key repeated within one call
    assert inbox.counts() == {"pending": 5, "dispatched": 0, "ignored": 0}
    keys = [(e.provider, e.event_key) for e in inbox.after(0, 100)]
    assert sorted(keys) == sorted([("simulated", k) for k in "abcd"] + [("oura", "b")]) and len(
        keys
    ) == len(set(keys))


def test_after_reads_pending_events_in_id_order_from_the_cursor(store: RecordStore):
    inbox = Inbox(store)
    inbox.add([event(f"e{i:02d}", data_type=None if i == 3 else "steps") for i in range(10)])
    first = inbox.after(0, 4)
    assert [e.event_key for e in first] == ["e00", "e01", "e02", "e03"]
    ids = [e.id for e in first]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert first[3].data_type is None and first[0].data_type == "steps"
    assert first[0].occurred_at == WHEN and first[0].payload == {"event_id": "e00"}
    assert first[0].received_at.tzinfo is not None
    rest = inbox.after(ids[-1], 100)
    assert [e.event_key for e in rest] == [f"e{i:02d}" for i in range(4, 10)]
    assert inbox.after(rest[-1].id, 100) == []
    with pytest.raises(ValidationError, match="limit"):
        inbox.after(0, 0)


def test_dispatched_and_ignored_events_leave_the_pending_stream(store: RecordStore):
    inbox = Inbox(store)
    inbox.add([event(f"e{i}") for i in range(6)])
    events = inbox.after(0, 10)
    inbox.mark_dispatched([events[0].id, events[1].id, events[1].id], "2026-03-01|simulated|2")
    inbox.mark_ignored({events[2].id: "user 'sim-001' is not connected to simulated"})
    assert [e.event_key for e in inbox.after(0, 10)] == ["e3", "e4", "e5"]
    assert inbox.counts() == {"pending": 3, "dispatched": 2, "ignored": 1}
    with store.read() as conn:
        rows = conn.execute(
            sa.text("SELECT event_key, status, reason, run_key FROM webhook_inbox ORDER BY id")
        ).all()
    assert rows[1] == ("e1", "dispatched", None, "2026-03-01|simulated|2")
    assert rows[2] == ("e2", "ignored", "user 'sim-001' is not connected to simulated", None)
    inbox.mark_dispatched([], "nothing")
    inbox.mark_ignored({})
    assert inbox.counts()["pending"] == 3


def test_events_with_an_ignored_reason_are_kept_but_never_pending(store: RecordStore):
    inbox = Inbox(store)
    revoked = event("revoked", data_type=None, ignored_reason="withings appli 50: bed in")
    assert inbox.add([revoked, event("hr")]) == 2
    assert [e.event_key for e in inbox.after(0, 10)] == ["hr"]
    assert inbox.counts() == {"pending": 1, "dispatched": 0, "ignored": 1}
    assert inbox.add([revoked]) == 0


def test_group_commit_reports_new_events_per_request(store: RecordStore):
    inbox = Inbox(store)
    inbox.add([event("old")])
    counts = inbox.add_groups([[event("a"), event("old")], [], [event("a"), event("b")]])
    assert counts == [1, 0, 1]  # "a" is new for the first request that named it only
    assert inbox.counts()["pending"] == 3


def test_concurrent_writers_never_let_a_cursor_skip_an_event(store: RecordStore):
    """A reader that advances its cursor while writers commit sees every event exactly once:
    ids become visible in id order (SQLite: one writer; PostgreSQL: the advisory lock)."""
    inbox = Inbox(store)
    writers, per_writer = 4, 40
    seen: list[int] = []
    done = threading.Event()

    def write(n: int) -> None:
        for i in range(per_writer):
            inbox.add([event(f"w{n}-{i}", user=f"u{n}")])

    def read() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            batch = inbox.after(cursor, 7)
            seen.extend(e.id for e in batch)
            if batch:
                cursor = batch[-1].id
            elif finished:
                return
            else:
                time.sleep(0.001)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join(timeout=30)
    assert len(seen) == writers * per_writer == len(set(seen))
    assert seen == sorted(seen)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"data_type": "pulse"}, "data_type"),
        ({"data_type": "x" * 33}, "data_type"),
        ({"occurred_at": datetime(2026, 3, 1)}, "occurred_at"),
        ({"event_key": ""}, "event_key"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": None}, "user_id"),
        ({"provider": "p" * 65}, "provider"),
        ({"user_id": "u" * 129}, "user_id"),
        ({"user_id": "u" * 200}, "user_id"),
        ({"event_key": "k" * 513}, "event_key"),
        ({"user_id": "u\x00"}, "user_id"),  # PostgreSQL refuses NUL in text
        ({"event_key": "k\n1"}, "event_key"),
        ({"payload": {"x": {1, 2}}}, "payload"),  # not JSON
        ({"payload": {"x": "y" * MAX_PAYLOAD_BYTES}}, "payload"),
        ({"payload": ["not", "an", "object"]}, "payload"),
        ({"ignored_reason": "why\x00"}, "ignored_reason"),
        ({"ignored_reason": "w" * 1_001}, "ignored_reason"),
    ],
)
def test_new_event_rejects_what_the_inbox_cannot_hold(kwargs, field):
    values = {
        "provider": "simulated",
        "event_key": "k",
        "user_id": "u",
        "data_type": "heart_rate",
        "occurred_at": WHEN,
    }
    with pytest.raises(ValidationError) as error:
        NewEvent(**{**values, **kwargs})
    assert error.value.field == field
    assert len(str(error.value)) < 400  # a long value is cut in the message


def test_values_at_the_limits_commit_on_both_backends(store: RecordStore):
    """The limits NewEvent checks are the columns' own: the longest accepted values commit on
    PostgreSQL (which enforces VARCHAR lengths) as on SQLite, and one more character is refused
    before any database sees it."""
    inbox = Inbox(store)
    longest = NewEvent(
        "p" * MAX_CHARS["provider"],
        "k" * MAX_CHARS["event_key"],
        "u" * MAX_CHARS["user_id"],
        "heart_rate",
        WHEN,
        {"note": "é" * 1_000, "nested": [{"a": None}]},
        ignored_reason="r" * 1_000,
    )
    assert MAX_CHARS == {"provider": 64, "user_id": 128, "event_key": 512}
    assert inbox.add([longest]) == 1
    with store.read() as conn:
        user, key = conn.execute(sa.text("SELECT user_id, event_key FROM webhook_inbox")).one()
    assert (len(user), len(key)) == (128, 512)
    with pytest.raises(ValidationError, match="user_id"):
        NewEvent("simulated", "k", "u" * 129, "heart_rate", WHEN)


def test_inbox_created_for_a_store_built_before(tmp_path):
    url = f"sqlite:///{tmp_path / 'early.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    engine.dispose()
    store = RecordStore(url)
    assert Inbox(store).add([event("a")]) == 1
    store.dispose()


def test_after_seeks_the_status_id_index_with_100k_pending(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'big.db'}")
    inbox = Inbox(store)
    query = pending_after(50_000, 500).compile(store.engine)
    with store.read() as conn:
        plan = conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {query}", tuple(query.construct_params().values())
        ).all()
    detail = " ".join(row[-1] for row in plan)
    assert "INDEX ix_inbox_status_id (status=? AND id>?)" in detail, detail
    assert "TEMP B-TREE" not in detail  # no sort: the index gives id order

    stamp = WHEN - timedelta(days=1)
    dispatched = [NewEvent("simulated", f"d{i}", "u", "steps", stamp) for i in range(20_000)]
    inbox.add(dispatched)
    inbox.mark_dispatched([e.id for e in inbox.after(0, 20_000)], "old-run")
    inbox.add([NewEvent("simulated", f"p{i}", "u", "steps", stamp) for i in range(100_000)])
    assert inbox.counts() == {"pending": 100_000, "dispatched": 20_000, "ignored": 0}
    head = inbox.after(0, 1_000)
    middle = inbox.after(head[0].id + 60_000, 1_000)
    assert [e.event_key for e in head[:2]] == ["p0", "p1"] and len(head) == 1_000
    assert middle[0].event_key == "p60001" and len(middle) == 1_000
    store.dispose()
