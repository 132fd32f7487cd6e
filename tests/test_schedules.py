"""Schedules per sync frequency: which partitions, which users, which window."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.publish import utc_day
from ohx_dagster.models import HealthSyncConfig, SyncFrequency
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.run_request import SyncRequest
from ohx_dagster.settings import Settings
from ohx_dagster.store import RecordStore
from ohx_dagster.strategies import SyncStrategy
from ohx_dagster.sync import sync_partition
from resources import RecordStoreResource
from sensors.schedules import CATCH_UP_DAYS, days_closing_at


@pytest.fixture
def defs(tmp_path) -> dg.Definitions:
    env = {
        "OHX_HOME": str(tmp_path),
        "OHX_PARTITIONS_START": "2026-01-01",
        "OHX_FITABASE_DIR": "/nonexistent-is-fine-at-load",
    }
    return build_definitions(Settings.from_env(env))


@pytest.fixture
def store(tmp_path) -> RecordStore:
    return RecordStore(f"sqlite:///{tmp_path / 'schedules.db'}")


def evaluate(
    defs: dg.Definitions, name: str, moment: datetime, store: RecordStore | None = None
) -> list[dg.RunRequest]:
    schedule = defs.get_schedule_def(name)
    resources = {} if store is None else {"store": RecordStoreResource(database_url=store.url)}
    context = dg.build_schedule_context(scheduled_execution_time=moment, resources=resources)
    return list(schedule(context))


def user(zone: str, frequency: SyncFrequency = SyncFrequency.HOURLY) -> HealthSyncConfig:
    return HealthSyncConfig(
        user_id=f"u-{zone}", provider="simulated", timezone=zone, sync_frequency=frequency
    )


def test_hourly_schedule_syncs_today_for_every_source_hourly_and_realtime_users(
    defs, store
) -> None:
    moment = datetime(2026, 11, 25, 13, 5, tzinfo=UTC)
    requests = evaluate(defs, "hourly_incremental_sync", moment, store)
    assert sorted(r.partition_key for r in requests) == [
        "2026-11-25|fitabase",
        "2026-11-25|simulated",
    ]
    request = SyncRequest.from_tags(requests[0].tags)
    assert request.strategy is SyncStrategy.INCREMENTAL
    assert request.frequencies == {SyncFrequency.HOURLY, SyncFrequency.REALTIME}
    assert not request.selects(user("UTC", SyncFrequency.DAILY), date(2026, 11, 25))
    assert request.selects(user("UTC", SyncFrequency.REALTIME), date(2026, 11, 25))
    assert len({r.run_key for r in requests}) == 2


def test_first_hourly_run_after_midnight_also_finishes_yesterday(defs, store) -> None:
    store.add_users([user("UTC")])
    store.advance_sync_state(
        "simulated", "u-UTC", ["heart_rate"], datetime(2026, 11, 24, 23, 5, tzinfo=UTC)
    )
    requests = evaluate(
        defs, "hourly_incremental_sync", datetime(2026, 11, 25, 0, 5, tzinfo=UTC), store
    )
    simulated = sorted(r.partition_key for r in requests if r.partition_key.endswith("simulated"))
    assert simulated == ["2026-11-24|simulated", "2026-11-25|simulated"]
    # fitabase has no synced user: only today
    assert [r.partition_key for r in requests if "fitabase" in r.partition_key] == [
        "2026-11-25|fitabase"
    ]


def test_after_an_outage_the_hourly_run_catches_up_a_bounded_number_of_days(defs, store) -> None:
    store.add_users([user("UTC"), user("Asia/Kolkata")])
    moment = datetime(2026, 11, 25, 13, 5, tzinfo=UTC)
    store.advance_sync_state("simulated", "u-UTC", ["steps"], moment - timedelta(days=3))
    store.advance_sync_state("simulated", "u-Asia/Kolkata", ["steps"], moment - timedelta(hours=1))
    requests = evaluate(defs, "hourly_incremental_sync", moment, store)
    days = sorted(r.partition_key.split("|")[0] for r in requests if "simulated" in r.partition_key)
    assert days == ["2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25"]
    store.advance_sync_state("simulated", "u-UTC", ["heart_rate"], moment - timedelta(days=40))
    requests = evaluate(defs, "hourly_incremental_sync", moment, store)
    days = sorted(r.partition_key.split("|")[0] for r in requests if "simulated" in r.partition_key)
    assert len(days) == CATCH_UP_DAYS + 1 and days[-1] == "2026-11-25"


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
    moment = datetime(2026, 11, 25, 5, 20, tzinfo=UTC)
    source = SimulatedSource(2, clock=lambda: moment)
    # The simulator knows its own users only; connect one of them as a New York daily user.
    profile = next(iter(source.profiles.values()))
    config = HealthSyncConfig(
        user_id=profile.user_id,
        provider="simulated",
        timezone="America/New_York",
        sync_frequency=SyncFrequency.DAILY,
    )
    store.upsert_user(config)
    request = SyncRequest(SyncStrategy.CLOSE, close_at=moment)
    report = sync_partition(
        source,
        store,
        utc_day(date(2026, 11, 24)),
        strategy=request.strategy,
        user_ids=[profile.user_id],
        select=request.selects,
        now=moment,
    )
    assert report.users_synced == [profile.user_id]
    local_day_start = datetime(2026, 11, 24, tzinfo=ZoneInfo("America/New_York"))
    assert report.first >= local_day_start
    assert report.last >= datetime(2026, 11, 25, 4, 50, tzinfo=UTC)  # beyond the UTC day
    last = store.last_synced("simulated", profile.user_id, "heart_rate")
    assert last == datetime(2026, 11, 25, 5, 0, tzinfo=UTC)  # local midnight in New York
