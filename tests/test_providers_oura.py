"""The oura source against a local server answering Oura API v2's documented shapes
(usercollection heartrate / daily_activity / daily_spo2: {"data": [...], "next_token": ...})."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from cryptography.fernet import Fernet
from provider_api_server import FakeApi, answer

from ohx_dagster.errors import ProviderError, RateLimited
from ohx_dagster.times import utc_day
from ohx_dagster.models import HealthDataType, HealthSyncConfig
from ohx_dagster.providers.api import ApiSettings
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.providers.oura import DAILY_ACTIVITY, DAILY_SPO2, HEARTRATE, OuraSource
from ohx_dagster.providers.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import SyncFailed, sync_partition

DAY = date(2026, 3, 2)
WINDOW = utc_day(DAY)
NOW = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
TYPES = frozenset({HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.SPO2})
USER = HealthSyncConfig(
    user_id="oura-u1", provider="oura", timezone="Europe/Berlin", enabled_types=TYPES
)


def hr(bpm: int, at: str, source: str = "awake") -> dict:
    moment = datetime.fromisoformat(at)
    return {
        "bpm": bpm,
        "source": source,
        "timestamp": at,
        "timestamp_unix": int(moment.timestamp() * 1000),
    }


def activity(day: str, steps: int, timestamp: str) -> dict:
    return {
        "id": f"act-{day}",
        "class_5_min": "0011122233334444",
        "score": 82,
        "active_calories": 420,
        "average_met_minutes": 1.6,
        "equivalent_walking_distance": 7300,
        "high_activity_time": 600,
        "medium_activity_time": 2400,
        "low_activity_time": 12000,
        "non_wear_time": 0,
        "resting_time": 28000,
        "sedentary_time": 30000,
        "steps": steps,
        "total_calories": 2500,
        "met": {"interval": 60.0, "items": [0.9, 1.1], "timestamp": timestamp},
        "day": day,
        "timestamp": timestamp,
    }


@pytest.fixture
def store(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OHX_TOKEN_KEY", Fernet.generate_key().decode())
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    expires = NOW + timedelta(days=1)
    connect_user(record_store, "oura", USER.user_id, OAuthTokens("at-1", "rt-1", expires), USER)
    yield record_store
    record_store.dispose()


def source_for(api: FakeApi, store: RecordStore) -> OuraSource:
    settings = ApiSettings(
        "oura", api.base_url, OAuthClient("oura", f"{api.base_url}/oauth/token", "cid", "cs")
    )
    return OuraSource(store, settings, backoff_s=0.0, clock=lambda: NOW)


def serve_documented_day(api: FakeApi) -> None:
    api.on(
        HEARTRATE,
        lambda call: (
            answer(
                200, {"data": [hr(120, "2026-03-02T08:10:00+00:00", "workout")], "next_token": None}
            )
            if call.query.get("next_token") == "page-2"
            else answer(
                200,
                {
                    "data": [
                        hr(62, "2026-03-02T08:00:00+00:00"),
                        hr(64, "2026-03-02T08:05:00+00:00"),
                    ],
                    "next_token": "page-2",
                },
            )
        ),
    )
    api.queue(
        DAILY_ACTIVITY,
        answer(
            200,
            {
                "data": [
                    activity("2026-03-01", 5000, "2026-03-01T04:00:00+01:00"),
                    activity("2026-03-02", 9120, "2026-03-02T04:00:00+01:00"),
                ],
                "next_token": None,
            },
        ),
    )
    api.queue(
        DAILY_SPO2,
        answer(
            200,
            {
                "data": [
                    {
                        "id": "s1",
                        "day": "2026-03-02",
                        "breathing_disturbance_index": None,
                        "spo2_percentage": None,
                    },
                    {
                        "id": "s2",
                        "day": "2026-03-03",
                        "breathing_disturbance_index": 3,
                        "spo2_percentage": {"average": 96.5},
                    },
                ],
                "next_token": None,
            },
        ),
    )


def test_follows_the_protocol_and_enumerates_no_users(api, store) -> None:
    source = source_for(api, store)
    assert isinstance(source, HealthSource)
    assert source.discover_users() == []


def test_documented_day_becomes_exact_records(api: FakeApi, store: RecordStore) -> None:
    serve_documented_day(api)
    batch = source_for(api, store).fetch(USER, TYPES, WINDOW)

    heart = batch[batch["data_type"] == "heart_rate"]
    assert heart["ts"].tolist() == [
        pd.Timestamp("2026-03-02T08:00:00Z"),
        pd.Timestamp("2026-03-02T08:05:00Z"),
        pd.Timestamp("2026-03-02T08:10:00Z"),
    ]
    assert heart["value"].tolist() == [62.0, 64.0, 120.0]
    assert set(heart["unit"]) == {"/min"} and set(heart["device_id"]) == {"oura-ring"}
    assert heart["utc_offset_min"].isna().all()  # UTC stamps: no local offset given

    steps = batch[batch["data_type"] == "steps"]  # 2026-03-01 starts outside the window
    assert steps[["ts", "value", "unit", "utc_offset_min", "duration_s"]].values.tolist() == [
        [pd.Timestamp("2026-03-02T03:00:00Z"), 9120.0, "1", 60, 86400.0]
    ]
    # A null aggregate is no reading; 2026-03-03 starts at 23:00 UTC in Berlin, inside the window.
    spo2 = batch[batch["data_type"] == "spo2"]
    assert spo2[["ts", "value", "unit", "utc_offset_min"]].values.tolist() == [
        [pd.Timestamp("2026-03-02T23:00:00Z"), 96.5, "%", 60]
    ]

    first, second = api.calls_to(HEARTRATE)
    assert first.query == {
        "start_datetime": "2026-03-02T00:00:00+00:00",
        "end_datetime": "2026-03-03T00:00:00+00:00",
    }
    assert second.query["next_token"] == "page-2"
    assert {c.bearer for c in api.calls} == {"at-1"}
    assert api.calls_to(DAILY_ACTIVITY)[0].query == {
        "start_date": "2026-03-01",
        "end_date": "2026-03-04",
    }


def test_missing_field_is_a_provider_error_naming_it(api: FakeApi, store: RecordStore) -> None:
    api.queue(
        HEARTRATE,
        answer(
            200,
            {
                "data": [hr(60, "2026-03-02T08:00:00+00:00"), {"source": "rest", "timestamp": "x"}],
                "next_token": None,
            },
        ),
    )
    with pytest.raises(ProviderError, match=r"oura .*heartrate data\[1\]: field 'timestamp'"):
        source_for(api, store).fetch(USER, [HealthDataType.HEART_RATE], WINDOW)
    api.queue(DAILY_ACTIVITY, answer(200, {"next_token": None}))
    with pytest.raises(ProviderError, match="field 'data' is missing"):
        source_for(api, store).fetch(USER, [HealthDataType.STEPS], WINDOW)


def test_rate_limit_and_refresh_on_401(api: FakeApi, store: RecordStore) -> None:
    api.queue(HEARTRATE, answer(429, {"detail": "Too many requests"}, Retry_After="42"))
    with pytest.raises(RateLimited) as error:
        source_for(api, store).fetch(USER, [HealthDataType.HEART_RATE], WINDOW)
    assert error.value.retry_after_s == 42.0

    api.on(
        HEARTRATE,
        lambda call: (
            answer(200, {"data": [], "next_token": None})
            if call.bearer == "at-2"
            else answer(401, {"detail": "Unauthorized"})
        ),
    )
    api.queue(
        "/oauth/token",
        answer(
            200,
            {
                "access_token": "at-2",
                "refresh_token": "rt-2",
                "expires_in": 86400,
                "token_type": "bearer",
            },
        ),
    )
    assert source_for(api, store).fetch(USER, [HealthDataType.HEART_RATE], WINDOW).empty
    assert api.calls_to("/oauth/token")[0].form["refresh_token"] == "rt-1"


def test_sync_partition_end_to_end(api: FakeApi, store: RecordStore) -> None:
    serve_documented_day(api)
    source = source_for(api, store)
    report = sync_partition(source, store, WINDOW, now=NOW)
    assert report.users_synced == [USER.user_id]
    assert report.records_by_type == {"heart_rate": 3, "steps": 1, "spo2": 1}
    stored = store.read_records("oura", WINDOW)
    assert len(stored) == 5 and set(stored["user_id"]) == {USER.user_id}
    assert store.last_synced("oura", USER.user_id, "heart_rate") == WINDOW.end
    again = sync_partition(source, store, WINDOW, now=NOW)  # idempotent
    assert again.records == 5 and store.count_records("oura") == 5


def test_an_outage_fails_the_user_as_transient(api: FakeApi, store: RecordStore) -> None:
    api.queue(HEARTRATE, answer(503, "upstream unavailable"))
    api.queue(DAILY_ACTIVITY, answer(200, {"data": [], "next_token": None}))
    api.queue(DAILY_SPO2, answer(200, {"data": [], "next_token": None}))
    with pytest.raises(SyncFailed, match="HTTP 503") as error:
        sync_partition(source_for(api, store), store, WINDOW, now=NOW)
    assert error.value.report.transient
    assert len(api.calls_to(HEARTRATE)) == 4  # retried with backoff first
    assert store.last_synced("oura", USER.user_id, "heart_rate") is None


def test_registered_as_a_live_source(store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from ohx_dagster.errors import ConfigError
    from ohx_dagster.settings import Settings
    from resources.sources import SourcesResource

    app = {"OHX_OURA_CLIENT_ID": "cid", "OHX_OURA_CLIENT_SECRET": "cs"}
    settings = Settings.from_env({"OHX_SOURCES": "simulated,oura", **app})
    assert settings.live_sources == ("simulated", "oura")  # webhooks and new-user backfills
    monkeypatch.delenv("OHX_OURA_CLIENT_ID", raising=False)
    monkeypatch.setenv("OHX_OURA_CLIENT_SECRET", "cs")
    with pytest.raises(ConfigError, match="needs OHX_OURA_CLIENT_ID"):
        SourcesResource().get("oura", store)
    monkeypatch.setenv("OHX_OURA_CLIENT_ID", "cid")
    monkeypatch.setenv("OHX_OURA_API_URL", "http://127.0.0.1:9")
    source = SourcesResource().get("oura", store)
    assert isinstance(source, OuraSource)
    assert source.connection.api.base_url == "http://127.0.0.1:9"
    assert source.connection.settings.oauth.token_url == "https://api.ouraring.com/oauth/token"
    with pytest.raises(ConfigError, match="needs the record store"):
        SourcesResource().get("oura")
