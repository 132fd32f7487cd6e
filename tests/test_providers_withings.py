"""The withings source against a local server answering measure getmeas's documented shape:
{"status": 0, "body": {"updatetime", "timezone", "measuregrps": [{"grpid", "attrib", "date",
"created", "modified", "category", "deviceid", "hash_deviceid", "measures": [{"value", "type",
"unit", "algo", "fm"}], "comment", "timezone"}], "more", "offset"}}."""

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
from ohx_dagster.providers.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.providers.withings import MEASURE, WithingsSource, measure_value
from ohx_dagster.store import RecordStore
from ohx_dagster.sync import sync_partition

DAY = date(2020, 7, 8)
WINDOW = utc_day(DAY)
NOW = datetime(2020, 7, 9, 1, 0, tzinfo=UTC)
USER = HealthSyncConfig(user_id="363", provider="withings", timezone="Europe/Paris")
DEVICE = "892359876fd8805ac45bab078c4828692f0276b1"


def group(grpid: int, when: int, measures: list[tuple[int, int, int]], tz: str) -> dict:
    return {
        "grpid": grpid,
        "attrib": 0,
        "date": when,
        "created": when + 60,
        "modified": when + 60,
        "category": 1,
        "deviceid": DEVICE,
        "hash_deviceid": DEVICE,
        "measures": [
            {"value": value, "type": kind, "unit": unit, "algo": 3425, "fm": 1}
            for kind, value, unit in measures
        ],
        "comment": None,
        "timezone": tz,
    }


PAGE_1 = {
    "status": 0,
    "body": {
        "updatetime": 1594257200,
        "timezone": "Europe/Paris",
        "measuregrps": [
            group(12, 1594245600, [(1, 65750, -3)], "Europe/Paris"),  # 22:00Z, Paris +2 h
            group(13, 1594200000, [(9, 80, 0), (10, 120, 0), (11, 64, 0)], "Europe/Paris"),
            group(14, 1594252800, [(1, 65000, -3)], "Europe/Paris"),  # 00:00Z next day: outside
        ],
        "more": 1,
        "offset": 3,
    },
}
PAGE_2 = {
    "status": 0,
    "body": {
        "updatetime": 1594257200,
        "timezone": "Europe/Paris",
        "measuregrps": [
            group(15, 1594210000, [(54, 97, 0)], "America/New_York"),
            group(16, 1594220000, [(71, 3685, -2)], "America/New_York"),
        ],
        "more": 0,
        "offset": 0,
    },
}


@pytest.fixture
def store(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OHX_TOKEN_KEY", Fernet.generate_key().decode())
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    grant = OAuthTokens("at-1", "rt-1", NOW + timedelta(hours=3), "user.metrics")
    connect_user(record_store, "withings", USER.user_id, grant, USER)
    yield record_store
    record_store.dispose()


def source_for(api: FakeApi, store: RecordStore) -> WithingsSource:
    oauth = OAuthClient(
        "withings", f"{api.base_url}/v2/oauth2", "cid", "cs", {"action": "requesttoken"}, True
    )
    settings = ApiSettings("withings", api.base_url, oauth)
    return WithingsSource(store, settings, backoff_s=0.0, clock=lambda: NOW)


def serve_pages(api: FakeApi) -> None:
    api.on(MEASURE, lambda call: answer(200, PAGE_2 if call.form.get("offset") else PAGE_1))


def test_value_times_ten_to_the_unit() -> None:
    assert measure_value({"value": 65750, "unit": -3}, "w") == 65.75
    assert measure_value({"value": 3685, "unit": -2}, "w") == 36.85
    assert measure_value({"value": 12, "unit": 1}, "w") == 120.0


def test_documented_pages_become_exact_records(api: FakeApi, store: RecordStore) -> None:
    serve_pages(api)
    source = source_for(api, store)
    assert isinstance(source, HealthSource) and source.discover_users() == []
    batch = source.fetch(USER, list(HealthDataType), WINDOW)
    rows = batch[["data_type", "ts", "value", "diastolic", "unit", "utc_offset_min", "device_id"]]
    got = sorted(rows.astype(object).where(rows.notna(), None).values.tolist(), key=str)
    t = pd.Timestamp.fromtimestamp
    assert got == sorted(
        [
            ["weight", t(1594245600, tz=UTC), 65.75, None, "kg", 120, DEVICE],
            ["blood_pressure", t(1594200000, tz=UTC), 120.0, 80.0, "mm[Hg]", 120, DEVICE],
            ["heart_rate", t(1594200000, tz=UTC), 64.0, None, "/min", 120, DEVICE],
            ["spo2", t(1594210000, tz=UTC), 97.0, None, "%", -240, DEVICE],
            ["temperature", t(1594220000, tz=UTC), 36.85, None, "Cel", -240, DEVICE],
        ],
        key=str,
    )
    first, second = api.calls_to(MEASURE)
    assert first.method == "POST" and first.bearer == "at-1"
    assert first.form == {
        "action": "getmeas",
        "meastypes": "1,9,10,11,54,71",
        "category": "1",
        "startdate": "1594166400",
        "enddate": "1594252800",
    }
    assert second.form["offset"] == "3"


def test_only_the_asked_types(api: FakeApi, store: RecordStore) -> None:
    serve_pages(api)
    batch = source_for(api, store).fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    assert batch["data_type"].tolist() == ["weight"]
    assert source_for(api, store).fetch(USER, [HealthDataType.ECG], WINDOW).empty


def test_status_401_in_the_body_refreshes_then_retries(api: FakeApi, store: RecordStore) -> None:
    def measure(call: Call) -> tuple:
        if call.bearer != "at-2":
            return answer(200, {"status": 401, "body": {}, "error": "XRequestID: invalid_token"})
        return answer(200, PAGE_2)

    api.on(MEASURE, measure)
    api.queue(
        "/v2/oauth2",
        answer(
            200,
            {
                "status": 0,
                "body": {
                    "userid": "363",
                    "access_token": "at-2",
                    "refresh_token": "rt-2",
                    "expires_in": 10800,
                    "scope": "user.metrics",
                    "token_type": "Bearer",
                },
            },
        ),
    )
    batch = source_for(api, store).fetch(USER, [HealthDataType.SPO2], WINDOW)
    assert batch["value"].tolist() == [97.0]
    assert api.calls_to("/v2/oauth2")[0].form["refresh_token"] == "rt-1"


def test_error_statuses(api: FakeApi, store: RecordStore) -> None:
    api.queue(MEASURE, answer(200, {"status": 601, "body": {}, "error": "Too Many Requests"}))
    with pytest.raises(RateLimited):
        source_for(api, store).fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    api.queue(MEASURE, answer(200, {"status": 503, "body": {}, "error": "Invalid params"}))
    with pytest.raises(ProviderError, match="withings /measure getmeas: status 503 Invalid params"):
        source_for(api, store).fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    api.queue(MEASURE, answer(429, "", Retry_After="30"))
    with pytest.raises(RateLimited) as limited:
        source_for(api, store).fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    assert limited.value.retry_after_s == 30.0


def test_malformed_groups_name_the_field(api: FakeApi, store: RecordStore) -> None:
    half = {
        "status": 0,
        "body": {
            "measuregrps": [group(1, 1594200000, [(10, 120, 0)], "UTC")],
            "more": 0,
            "offset": 0,
        },
    }
    api.queue(MEASURE, answer(200, half))
    with pytest.raises(ProviderError, match=r"measuregrps\[0\]: field 'measures\[type=9\]'"):
        source_for(api, store).fetch(USER, [HealthDataType.BLOOD_PRESSURE], WINDOW)
    no_value = {
        "status": 0,
        "body": {"measuregrps": [group(1, 1594200000, [], "UTC")], "more": 0, "offset": 0},
    }
    no_value["body"]["measuregrps"][0]["measures"] = [{"type": 1, "unit": -3}]
    api.queue(MEASURE, answer(200, no_value))
    with pytest.raises(ProviderError, match=r"measures\[0\]: field 'value' is missing"):
        source_for(api, store).fetch(USER, [HealthDataType.WEIGHT], WINDOW)
    api.queue(MEASURE, answer(200, {"status": 0}))
    with pytest.raises(ProviderError, match="field 'body' is missing"):
        source_for(api, store).fetch(USER, [HealthDataType.WEIGHT], WINDOW)


def test_sync_partition_end_to_end(api: FakeApi, store: RecordStore) -> None:
    serve_pages(api)
    report = sync_partition(source_for(api, store), store, WINDOW, now=NOW)
    assert report.users_synced == ["363"]
    assert report.records_by_type == {
        "blood_pressure": 1,
        "heart_rate": 1,
        "spo2": 1,
        "temperature": 1,
        "weight": 1,
    }
    stored = store.read_records("withings", WINDOW, data_types=["blood_pressure"])
    assert stored[["value", "diastolic"]].values.tolist() == [[120.0, 80.0]]
    assert store.last_synced("withings", "363", "weight") == WINDOW.end
