"""The google_health source against a local server answering Google Health API v4's documented
users.dataTypes.dataPoints.list shape: {"dataPoints": [DataPoint], "nextPageToken": string}, a
DataPoint holding `name` and one union field (heartRate, steps, weight, oxygenSaturation) with
ObservationSampleTime {physicalTime, utcOffset} or ObservationTimeInterval {startTime,
startUtcOffset, endTime, endUtcOffset}; int64 values as JSON strings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from cryptography.fernet import Fernet
from provider_api_server import Call, FakeApi, answer

from ohx_dagster.errors import ProviderError, RateLimited
from ohx_dagster.times import utc_day
from ohx_dagster.models import HealthDataType, HealthSyncConfig
from ohx_dagster.providers.api import ApiSettings
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.providers.google_health import TYPES, GoogleHealthSource
from ohx_dagster.providers.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import sync_partition

DAY = date(2026, 3, 2)
WINDOW = utc_day(DAY)
NOW = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
USER = HealthSyncConfig(user_id="gh-1", provider="google_health", timezone="Europe/Berlin")
HR = TYPES[HealthDataType.HEART_RATE].endpoint
STEPS = TYPES[HealthDataType.STEPS].endpoint
WEIGHT = TYPES[HealthDataType.WEIGHT].endpoint
SPO2 = TYPES[HealthDataType.SPO2].endpoint


def sample(field: str, kind: str, n: int, values: dict, at: str, offset: str = "3600s") -> dict:
    return {
        "name": f"users/4242/dataTypes/{kind}/dataPoints/{n}",
        field: {**values, "sampleTime": {"physicalTime": at, "utcOffset": offset}},
    }


def steps(n: int, count: str, start: str, end: str) -> dict:
    return {
        "name": f"users/4242/dataTypes/steps/dataPoints/{n}",
        "steps": {
            "count": count,
            "interval": {
                "startTime": start,
                "startUtcOffset": "3600s",
                "endTime": end,
                "endUtcOffset": "3600s",
            },
        },
    }


@pytest.fixture
def store(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OHX_TOKEN_KEY", Fernet.generate_key().decode())
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    grant = OAuthTokens("at-1", "rt-1", NOW + timedelta(hours=1), "googlehealth.readonly")
    connect_user(record_store, "google_health", USER.user_id, grant, USER)
    yield record_store
    record_store.dispose()


def source_for(api: FakeApi, store: RecordStore) -> GoogleHealthSource:
    oauth = OAuthClient("google_health", f"{api.base_url}/token", "cid", "cs")
    settings = ApiSettings("google_health", api.base_url, oauth)
    return GoogleHealthSource(store, settings, backoff_s=0.0, clock=lambda: NOW)


def serve_documented_day(api: FakeApi) -> None:
    def heart(call: Call) -> tuple:
        if call.query.get("pageToken") == "next-1":
            points = [
                sample(
                    "heartRate", "heart-rate", 3, {"beatsPerMinute": "131"}, "2026-03-02T08:02:00Z"
                )
            ]
            return answer(200, {"dataPoints": points})
        points = [
            sample("heartRate", "heart-rate", 1, {"beatsPerMinute": "72"}, "2026-03-02T08:00:00Z"),
            sample("heartRate", "heart-rate", 2, {"beatsPerMinute": "75"}, "2026-03-02T08:01:00Z"),
        ]
        return answer(200, {"dataPoints": points, "nextPageToken": "next-1"})

    api.on(HR, heart)
    api.queue(
        STEPS,
        answer(
            200,
            {
                "dataPoints": [
                    steps(1, "120", "2026-03-02T08:00:00Z", "2026-03-02T08:01:00Z"),
                    steps(2, "96", "2026-03-02T08:01:00Z", "2026-03-02T08:02:00Z"),
                ]
            },
        ),
    )
    api.queue(
        WEIGHT,
        answer(
            200,
            {
                "dataPoints": [
                    sample("weight", "weight", 1, {"weightGrams": 71250.0}, "2026-03-02T06:30:00Z")
                ]
            },
        ),
    )
    api.queue(SPO2, answer(200, {}))  # an empty page omits dataPoints


def test_documented_day_becomes_exact_records(api: FakeApi, store: RecordStore) -> None:
    serve_documented_day(api)
    source = source_for(api, store)
    assert isinstance(source, HealthSource) and source.discover_users() == []
    batch = source.fetch(USER, list(HealthDataType), WINDOW, batch_size=100)
    rows = batch[["data_type", "ts", "value", "unit", "utc_offset_min", "duration_s"]]
    got = rows.astype(object).where(rows.notna(), None).values.tolist()
    t = pd.Timestamp
    assert got == [
        ["heart_rate", t("2026-03-02T08:00:00Z"), 72.0, "/min", 60, None],
        ["heart_rate", t("2026-03-02T08:01:00Z"), 75.0, "/min", 60, None],
        ["heart_rate", t("2026-03-02T08:02:00Z"), 131.0, "/min", 60, None],
        ["steps", t("2026-03-02T08:00:00Z"), 120.0, "1", 60, 60.0],
        ["steps", t("2026-03-02T08:01:00Z"), 96.0, "1", 60, 60.0],
        ["weight", t("2026-03-02T06:30:00Z"), 71.25, "kg", 60, None],
    ]
    first, second = api.calls_to(HR)
    assert first.query == {
        "filter": 'heart_rate.sample_time.physical_time >= "2026-03-02T00:00:00Z" AND '
        'heart_rate.sample_time.physical_time < "2026-03-03T00:00:00Z"',
        "pageSize": "100",
    }
    assert second.query["pageToken"] == "next-1"
    assert (
        api.calls_to(STEPS)[0]
        .query["filter"]
        .startswith('steps.interval.start_time >= "2026-03-02T00:00:00Z"')
    )
    assert {c.bearer for c in api.calls} == {"at-1"}


def test_errors(api: FakeApi, store: RecordStore) -> None:
    source = source_for(api, store)
    api.queue(
        WEIGHT,
        answer(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, Retry_After="60"),
    )
    with pytest.raises(RateLimited) as limited:
        source.fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    assert limited.value.retry_after_s == 60.0
    bad = sample("weight", "weight", 1, {"weightGrams": 70000}, "2026-03-02T06:30:00Z")
    del bad["weight"]["sampleTime"]["utcOffset"]
    api.queue(WEIGHT, answer(200, {"dataPoints": [bad]}))
    with pytest.raises(
        ProviderError, match=r"dataPoints\[0\]\.weight: field 'sampleTime.utcOffset'"
    ):
        source.fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    api.queue(WEIGHT, answer(200, {"dataPoints": [{"name": "users/1/dataTypes/weight/x"}]}))
    with pytest.raises(ProviderError, match="field 'weight' is missing"):
        source.fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    api.queue(WEIGHT, answer(500, "internal"), answer(500, "internal"), answer(200, "<html>"))
    with pytest.raises(ProviderError, match="malformed JSON"):
        source.fetch(USER, [HealthDataType.WEIGHT], WINDOW)


def test_sync_partition_end_to_end(api: FakeApi, store: RecordStore) -> None:
    serve_documented_day(api)
    report = sync_partition(source_for(api, store), store, WINDOW, now=NOW)
    assert report.users_synced == ["gh-1"]
    assert report.records_by_type == {"heart_rate": 3, "steps": 2, "weight": 1}
    assert store.count_records("google_health") == 6
    assert store.last_synced("google_health", "gh-1", "spo2") == WINDOW.end
