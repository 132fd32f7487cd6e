"""Issue 8's fault suite as tests: every scenario of `scripts/faults` (faults/scenarios.py) ends
with nothing the provider holds lost or counted twice, the published NDJSON equal to the store,
and every run that could not complete red (a failed run or a failed check), never green with
missing data. Real parts: SQLite files and a PostgreSQL server (pgserver), the webhook receiver
and local provider servers on real ports answering documented shapes, run processes killed with
SIGKILL, and Dagster itself for the acceptance test.

Beside them, the races the fault table found, replayed in a fixed order so that they cannot pass
by luck: a render older than the published one, another run's garbage collection between
writing a bucket's files and committing them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faults import scenarios
from faults.backends import Backend, Postgres, SQLite
from faults.scenarios import SCENARIOS, Row, run_scenario
from ohx_dagster.publish import partitions as publish
from ohx_dagster.sync.strategies import SyncStrategy

SLOW = {"crash", "kill", "dagster"}
# What depends on the database (locks, transactions, concurrent writers): on PostgreSQL too.
ON_POSTGRES = ["order", "threads", "processes", "late-daily", "delete", "stale-answer",
               "close-outage", "early-2", "zone"]  # fmt: skip


def check(row: Row) -> None:
    figures = (
        f"{row.scenario} [{row.backend}]: held {row.held}, stored {row.stored}, lost {row.lost}, "
        f"duplicated {row.duplicated}, published {row.published} "
        f"({'=' if row.published_ok else '!='} store), daily aggregates {row.aggregated} "
        f"({'=' if row.aggregated_ok else '!='} store), green runs with loss {row.green_loss}"
    )
    assert row.ok and row.aggregated_ok, (
        f"{figures}; problems: {row.problems[:5]}; notes: {row.notes[:5]}"
    )
    assert row.held > 0 and row.stored == row.held, figures


@pytest.fixture(scope="module")
def postgres(pg_url: str) -> Backend:
    return Postgres(pg_url)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in SLOW])
def test_scenario_on_sqlite(name: str, tmp_path: Path) -> None:
    check(run_scenario(name, SQLite(), tmp_path))


@pytest.mark.parametrize("name", ON_POSTGRES)
def test_scenario_on_postgresql(name: str, tmp_path: Path, postgres: Backend) -> None:
    check(run_scenario(name, postgres, tmp_path))


def write_points(backend: Backend, root: Path) -> list[str]:
    """The write points of one incremental run of yesterday (faults.scenarios.crash_at)."""
    seen: list[str] = []
    start = scenarios.anchor()
    day = start.date() - timedelta(days=1)
    world = scenarios.simulated_world(backend, root, "probe", start=start, first_day=day)
    with scenarios.crash_at(world, None, seen):
        world.sync(SyncStrategy.INCREMENTAL, [day])
    world.close()
    return seen


def test_crash_just_before_and_just_after_every_commit(tmp_path: Path) -> None:
    """A transaction boundary is where a split write would show: the run dies as it commits
    (rolled back) or right after (committed, the next write never happens). Every commit of
    the run, sync and publish. (tests/fault_suite/test_invariants.py draws any write point at
    random; scripts/faults runs every one.)"""
    seen = write_points(SQLite(), tmp_path)
    commits = [n for n, point in enumerate(seen, start=1) if point == "COMMIT"]
    points = sorted({p for n in commits for p in (n, n + 1) if p <= len(seen)})
    check(scenarios.crash_points(SQLite(), tmp_path / "points", points))


def test_crash_on_postgresql(tmp_path: Path, postgres: Backend) -> None:
    """The first commit, the middle write and the last write, on PostgreSQL."""
    seen = write_points(postgres, tmp_path)
    points = sorted({seen.index("COMMIT") + 2, len(seen) // 2, len(seen)})
    check(scenarios.crash_points(postgres, tmp_path / "points", points))


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
def test_kill_9_in_the_middle_of_a_run(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend = SQLite() if backend_name == "sqlite" else request.getfixturevalue("postgres")
    row = scenarios.kill_mid_run(backend, tmp_path, delays=(1.0,))
    check(row)


def test_out_of_order_and_concurrent_runs_publish_what_one_partition_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acceptance test of issue 8, through Dagster: incremental runs of two day partitions,
    the later day first, and the two at once in two run processes, give byte-identical NDJSON
    (Provenance aside: it names its run) to one partition run of the two days on a fresh store."""
    monkeypatch.delenv("OHX_DATABASE_URL", raising=False)
    check(scenarios.dagster_acceptance(SQLite(), tmp_path))


# -- the races, in a fixed order -----------------------------------------------------------------


@pytest.fixture
def two_people(tmp_path: Path) -> Iterator[scenarios.World]:
    """Two hourly simulated people, nothing of theirs synced yet."""
    start = scenarios.anchor()
    day = start.date() - timedelta(days=1)
    world = scenarios.simulated_world(SQLite(), tmp_path, "race", start=start, first_day=day)
    yield world
    world.close()


def test_a_render_older_than_the_published_one_never_replaces_it(
    two_people: scenarios.World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publisher A reads a bucket before a person's first data of the day is committed; B
    commits that data and publishes it; A then commits its older render. The person's data stays
    published (A's render is dropped as stale, whoever else is in the bucket)."""
    world = two_people
    day = world.clock.now.date() - timedelta(days=1)
    first, second = sorted(world.configs())
    bucket = 7  # the two people share a bucket
    monkeypatch.setattr(publish, "bucket_of", lambda provider, user: bucket)
    world.sync(SyncStrategy.INCREMENTAL, [day], user_ids=[first])
    original = publish._read_bucket
    interleaved = {"done": False}

    def read_then_let_b_run(*args, **kwargs):
        found = original(*args, **kwargs)
        if not interleaved["done"]:
            interleaved["done"] = True
            # B: the second person's first data of the day, committed and published.
            world.sync(SyncStrategy.INCREMENTAL, [day], user_ids=[second])
        return found

    monkeypatch.setattr(publish, "_read_bucket", read_then_let_b_run)
    report = world.publish(day, force=True)  # A, with its snapshot from before B
    monkeypatch.setattr(publish, "_read_bucket", original)
    assert report.stale_buckets == [bucket]
    measure = world.measure(
        scenarios.utc_midnight(day), scenarios.utc_midnight(day + timedelta(days=1))
    )
    assert measure.published_ok, measure.published_problems
    assert (measure.lost, measure.duplicated) == (0, 0)


def test_garbage_collection_between_writing_and_committing_a_bucket_loses_no_file(
    two_people: scenarios.World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publisher B has written its bucket's files and is about to commit them when publisher A
    (another bucket of the same partition) finishes and collects garbage: the files are nobody's
    yet and go. B's commit still names only files that exist."""
    world = two_people
    day = world.clock.now.date() - timedelta(days=1)
    first, second = sorted(world.configs())
    world.sync(SyncStrategy.INCREMENTAL, [day], publish=False)
    buckets = {first: 1, second: 2}
    monkeypatch.setattr(publish, "bucket_of", lambda provider, user: buckets[user])
    original = publish._commit_bucket
    interleaved = {"done": False}

    def collect_then_commit(store, output, **kwargs):
        if kwargs["bucket"] == 2 and not interleaved["done"]:
            interleaved["done"] = True
            world.publish(day, user_ids=[first], force=True)  # A publishes bucket 1 and collects
        return original(store, output, **kwargs)

    monkeypatch.setattr(publish, "_commit_bucket", collect_then_commit)
    world.publish(day, user_ids=[second], force=True)  # B
    assert interleaved["done"]
    monkeypatch.setattr(publish, "_commit_bucket", original)
    measure = world.measure(
        scenarios.utc_midnight(day), scenarios.utc_midnight(day + timedelta(days=1))
    )
    assert measure.published_ok, measure.published_problems
