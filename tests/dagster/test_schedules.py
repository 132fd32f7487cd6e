"""Schedules per sync frequency: which partitions, which users, which window."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from ohx_dagster.config.settings import Settings
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig, SyncFrequency
from ohx_dagster.core.records import empty_batch
from ohx_dagster.core.times import to_us
from ohx_dagster.definitions import build_definitions
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.storage.schema import coverage, users
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.run_request import SyncRequest
from ohx_dagster.sync.strategies import SyncStrategy
from resources import RecordStoreResource
from sensors.schedules import CATCH_UP_DAYS, days_closing_at


@pytest.fixture
def defs(tmp_path) -> dg.Definitions:
    env = {
        "OHX_HOME": str(tmp_path),
        "OHX_PARTITIONS_START": "2026-01-01",
        "OHX_FITABASE_DIR": "/nonexistent-is-fine-at-load",
        "OHX_FITABASE_TZ": "UTC",
    }
    return build_definitions(Settings.from_env(env))


@pytest.fixture
def store(tmp_path) -> RecordStore:
    return RecordStore(f"sqlite:///{tmp_path / 'schedules.db'}")


pytestmark = pytest.mark.filterwarnings("ignore")


def evaluate(
    defs: dg.Definitions,
    name: str,
    moment: datetime,
    store: RecordStore | None = None,
    instance: dg.DagsterInstance | None = None,
) -> list[dg.RunRequest]:
    schedule = defs.get_schedule_def(name)
    resources = {} if store is None else {"store": RecordStoreResource(database_url=store.url)}
    if instance is None:
        instance = dg.DagsterInstance.local_temp()
    with dg.build_schedule_context(
        scheduled_execution_time=moment, resources=resources, instance=instance
    ) as context:
        return list(schedule(context))


def user(zone: str, frequency: SyncFrequency = SyncFrequency.HOURLY) -> HealthSyncConfig:
    return HealthSyncConfig(
        user_id=f"u-{zone}", provider="simulated", timezone=zone, sync_frequency=frequency
    )


# The schedules read coverage against the wall clock, as they do in production.
MOMENT = datetime.now(UTC).replace(minute=5, second=0, microsecond=0)


def connected_days_ago(store: RecordStore, config: HealthSyncConfig, days: int) -> None:
    """Register a person as connected `days` ago (the schedule leaves people connected in the
    last hours to the new-user backfill)."""
    store.upsert_user(config)
    with store.write() as conn:
        conn.execute(
            users.update()
            .where(users.c.user_id == config.user_id)
            .values(connected_at_us=to_us(MOMENT - timedelta(days=days)))
        )


def covered_until(store: RecordStore, config: HealthSyncConfig, until: datetime) -> None:
    """Coverage of every simulated type from the person's history start up to `until`."""
    start = to_us(MOMENT - timedelta(days=60))
    store.commit(
        "simulated", config.user_id, config.zone, empty_batch(),
        covered={t.value: [(start, to_us(until))] for t in HealthDataType},
    )  # fmt: skip


def test_hourly_schedule_syncs_today_for_every_source_hourly_and_realtime_users(
    defs, store
) -> None:
    requests = evaluate(defs, "hourly_incremental_sync", MOMENT, store)
    today = MOMENT.date().isoformat()
    assert sorted(r.partition_key for r in requests) == [f"{today}|fitabase", f"{today}|simulated"]
    request = SyncRequest.from_tags(requests[0].tags)
    assert request.strategy is SyncStrategy.INCREMENTAL
    assert request.frequencies == {SyncFrequency.HOURLY, SyncFrequency.REALTIME}
    assert not request.selects(user("UTC", SyncFrequency.DAILY), MOMENT.date())
    assert request.selects(user("UTC", SyncFrequency.REALTIME), MOMENT.date())
    assert len({r.run_key for r in requests}) == 2


def test_after_an_outage_the_hourly_run_syncs_the_days_coverage_misses(defs, store) -> None:
    utc, kolkata = user("UTC"), user("Asia/Kolkata")
    connected_days_ago(store, utc, 20)
    connected_days_ago(store, kolkata, 20)
    covered_until(store, utc, MOMENT - timedelta(days=3))  # an outage of three days
    covered_until(store, kolkata, MOMENT - timedelta(hours=1))
    requests = evaluate(defs, "hourly_incremental_sync", MOMENT, store)
    days = sorted(r.partition_key.split("|")[0] for r in requests if "simulated" in r.partition_key)
    expected = sorted({(MOMENT - timedelta(days=d)).date().isoformat() for d in range(4)})
    assert days == expected
    # Forty days uncovered (within the history): the most recent CATCH_UP_DAYS a tick.
    covered_until(store, utc, MOMENT - timedelta(days=40))
    with store.write() as conn:
        conn.execute(coverage.delete().where(coverage.c.user_id == utc.user_id))
    requests = evaluate(defs, "hourly_incremental_sync", MOMENT, store)
    days = sorted(r.partition_key.split("|")[0] for r in requests if "simulated" in r.partition_key)
    assert len(days) == CATCH_UP_DAYS + 1 and days[-1] == MOMENT.date().isoformat()


def test_a_day_with_a_run_under_way_is_not_asked_for_again(defs, store) -> None:
    utc = user("UTC")
    connected_days_ago(store, utc, 20)
    covered_until(store, utc, MOMENT - timedelta(days=2))
    yesterday = f"{(MOMENT - timedelta(days=1)).date()}|simulated"
    with dg.instance_for_test() as instance:
        instance.add_run(
            DagsterRun(
                job_name="sync_partition",
                run_id="running-run",
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/partition": yesterday},
            )
        )
        requests = evaluate(defs, "hourly_incremental_sync", MOMENT, store, instance)
    keys = {r.partition_key for r in requests}
    assert yesterday not in keys and f"{(MOMENT - timedelta(days=2)).date()}|simulated" in keys


def _closing_by_zoneinfo(moment: datetime, zones: list[str]) -> set[date]:
    closing = set()
    for zone in zones:
        local = moment.astimezone(ZoneInfo(zone))
        if local.hour == 0:
            closing.add(local.date() - timedelta(days=1))
    return closing


@pytest.mark.parametrize("hour", range(24))
def test_days_closing_cover_every_real_zone(hour: int) -> None:
    moment = datetime(2026, 11, 25, hour, 20, tzinfo=UTC)
    zones = [
        "Pacific/Kiritimati", "Pacific/Auckland", "Asia/Kolkata", "Asia/Kathmandu",
        "Europe/Amsterdam", "UTC", "America/New_York", "America/St_Johns", "Pacific/Honolulu",
        "Pacific/Pago_Pago", "Etc/GMT+12",
    ]  # fmt: skip
    assert _closing_by_zoneinfo(moment, zones) <= set(days_closing_at(moment))


def test_daily_close_selects_only_users_whose_local_day_just_ended(defs) -> None:
    # 05:20 UTC on 25 Nov is 00:20 in New York: New York's 24 November has just ended.
    moment = datetime(2026, 11, 25, 5, 20, tzinfo=UTC)
    requests = [
        r for r in evaluate(defs, "daily_close", moment) if r.partition_key.endswith("simulated")
    ]
    assert "2026-11-24|simulated" in {r.partition_key for r in requests}
    request = SyncRequest.from_tags(requests[0].tags)
    assert request.strategy is SyncStrategy.CLOSE
    new_york, amsterdam = user("America/New_York", SyncFrequency.DAILY), user("Europe/Amsterdam")
    assert request.selects(new_york, date(2026, 11, 24))
    assert not request.selects(new_york, date(2026, 11, 25))
    assert not request.selects(amsterdam, date(2026, 11, 24))


def test_close_run_syncs_the_whole_local_day_of_a_daily_user(tmp_path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    new_york = ZoneInfo("America/New_York")
    # 00:20 in New York, yesterday's local day just ended.
    moment = datetime.combine(MOMENT.date(), datetime.min.time(), tzinfo=new_york) + timedelta(
        minutes=20
    )
    day = (moment - timedelta(hours=1)).astimezone(new_york).date()
    simulator = SimulatedSource(2, clock=lambda: moment)
    source = Windowed(simulator, SUPPORTED_TYPES["simulated"])
    profile = next(iter(simulator.profiles.values()))
    config = HealthSyncConfig(
        user_id=profile.user_id, provider="simulated", timezone="America/New_York",
        sync_frequency=SyncFrequency.DAILY,
    )  # fmt: skip
    store.upsert_user(config)
    request = SyncRequest(SyncStrategy.CLOSE, close_at=moment)
    report = sync_partition(
        source, store, day, strategy=request.strategy, user_ids=[profile.user_id],
        select=request.selects, now=moment,
    )  # fmt: skip
    assert report.users_synced == [profile.user_id]
    local_day_start = datetime.combine(day, datetime.min.time(), tzinfo=new_york)
    assert report.first >= local_day_start
    assert report.last >= local_day_start + timedelta(hours=23, minutes=50)  # beyond the UTC day
    last = store.last_synced("simulated", profile.user_id, "heart_rate")
    assert last == local_day_start + timedelta(days=1)  # local midnight in New York
    store.dispose()
