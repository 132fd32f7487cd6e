"""The google_health source against a local server answering only Google Health API v4's
documented shapes (ohx_dagster/providers/google_health/fixtures, SOURCE.md): the reconciled
stream with the raw points' provenance, proto3's omitted zero values (a person at UTC+0, a minute
of 0 steps), phone and watch steps counted once, a malformed value, a refused type, a rate limit,
and notification windows, deletions included."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from provider_api_server import Call, FakeApi, answer, documented

from ohx_dagster.core.errors import RateLimited
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.providers.api.http import ApiClient
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.providers.base import Event, HealthSource
from ohx_dagster.providers.google_health import APP, GoogleHealthSource
from ohx_dagster.providers.google_health.source import (
    ALL_SOURCES,
    CIVIL_REACH,
    TYPES,
    provenance,
    rfc3339,
)
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition

HR, STEPS, WEIGHT, SPO2 = (
    HealthDataType.HEART_RATE,
    HealthDataType.STEPS,
    HealthDataType.WEIGHT,
    HealthDataType.SPO2,
)
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAY = NOW.date() - timedelta(days=2)
USER = HealthSyncConfig(user_id="2515055256096816351", provider="google_health", timezone="UTC")
PROVIDER = "google_health"
# The data sources of the fixtures: a Pixel Watch (heart_rate.json), a phone through Health Connect
# (steps.json), a weight typed in the Fitbit app (weight.json).
WATCH = documented(PROVIDER, "heart_rate")["dataPoints"][0]["dataSource"]
PHONE = documented(PROVIDER, "steps")["dataPoints"][0]["dataSource"]
TYPED = documented(PROVIDER, "weight")["dataPoints"][0]["dataSource"]
FILTER = re.compile(
    r'^(?P<field>[a-z_]+)\.(?P<path>interval\.start_time|sample_time\.physical_time) >= "(?P<start>'
    r'[^"]+)" AND (?P=field)\.(?P=path) < "(?P<end>[^"]+)"$'
)


def civil(moment: datetime, offset_s: int) -> dict[str, Any]:
    """CivilDateTime as proto3 JSON writes it: zero fields left out."""
    local = moment + timedelta(seconds=offset_s)
    clock = {"hours": local.hour, "minutes": local.minute, "seconds": local.second}
    time_of_day = {k: v for k, v in clock.items() if v}
    value: dict[str, Any] = {"date": {"year": local.year, "month": local.month, "day": local.day}}
    if time_of_day:
        value["time"] = time_of_day
    return value


def sample_time(moment: datetime, offset_s: int) -> dict[str, Any]:
    """ObservationSampleTime; a zero offset is left out, as proto3 JSON does."""
    time = {"physicalTime": rfc3339(moment), "civilTime": civil(moment, offset_s)}
    if offset_s:
        time["utcOffset"] = f"{offset_s}s"
    return time


def heart(moment: datetime, bpm: int | None, source=WATCH, offset_s: int = 3600) -> dict:
    point = documented(PROVIDER, "heart_rate")["dataPoints"][0]
    point["dataSource"] = source
    point["heartRate"]["sampleTime"] = sample_time(moment, offset_s)
    if bpm is None:
        del point["heartRate"]["beatsPerMinute"]
    else:
        point["heartRate"]["beatsPerMinute"] = str(bpm)
    return point


def steps(start: datetime, count: int, source=PHONE, offset_s: int = 3600) -> dict:
    point = documented(PROVIDER, "steps")["dataPoints"][0]
    end = start + timedelta(minutes=1)
    interval = {
        "startTime": rfc3339(start),
        "endTime": rfc3339(end),
        "civilStartTime": civil(start, offset_s),
        "civilEndTime": civil(end, offset_s),
    }
    if offset_s:
        interval |= {"startUtcOffset": f"{offset_s}s", "endUtcOffset": f"{offset_s}s"}
    point["dataSource"] = source
    point["steps"] = {"interval": interval}
    if count:
        point["steps"]["count"] = str(count)
    return point


def weight(moment: datetime, grams: float, source=TYPED, offset_s: int = 3600) -> dict:
    point = documented(PROVIDER, "weight")["dataPoints"][0]
    point["dataSource"] = source
    point["weight"] = {"sampleTime": sample_time(moment, offset_s), "weightGrams": grams}
    return point


def label(point: dict) -> str:
    return provenance(point)[0] or str(point.get("dataSource", {}).get("platform"))


class FakeGoogleHealth:
    """Google Health API v4 answering its documented shapes from what each data source holds.
    `list` returns every source's points; `reconcile` one point per interval or sample time: the
    source first in `priority` wins (ours: how Google reconciles is not documented). Filters
    are parsed and checked as the filter documentation states them; pages hold at most `page`."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.points: dict[HealthDataType, list[dict]] = defaultdict(list)
        self.priority: list[str] = ["Pixel Watch 3"]
        self.refuse: set[HealthDataType] = set()
        self.page = 1_000
        for kind, spec in TYPES.items():
            api.on(spec.endpoint, lambda call, k=kind: self._answer(call, k, reconcile=False))
            api.on(spec.reconcile, lambda call, k=kind: self._answer(call, k, reconcile=True))

    def _start(self, kind: HealthDataType, point: dict) -> datetime:
        member = point[TYPES[kind].field]
        text = member["interval"]["startTime"] if "interval" in member else None
        text = text or member["sampleTime"]["physicalTime"]
        return datetime.fromisoformat(text)

    def _reconciled(self, kind: HealthDataType, points: list[dict]) -> list[dict]:
        chosen: dict[str, tuple[int, dict]] = {}
        for point in points:
            member = point[TYPES[kind].field]
            if "interval" in member:
                key = f"{member['interval']['startTime']}/{member['interval']['endTime']}"
            else:
                key = member["sampleTime"]["physicalTime"]
            rank = self.priority.index(label(point)) if label(point) in self.priority else 99
            if key not in chosen or rank < chosen[key][0]:
                chosen[key] = (rank, point)
        out = []
        for _, point in chosen.values():
            reconciled = {k: v for k, v in point.items() if k not in ("dataSource", "name")}
            if "name" in point:
                reconciled["dataPointName"] = point["name"]
            out.append(reconciled)
        return out

    def _answer(self, call: Call, kind: HealthDataType, *, reconcile: bool):
        spec = TYPES[kind]
        if kind in self.refuse:
            return answer(403, documented(PROVIDER, "error_scope"))
        match = FILTER.match(call.query.get("filter", ""))
        path = "interval.start_time" if spec.interval else "sample_time.physical_time"
        if match is None or match["field"] != spec.filter_name or match["path"] != path:
            return answer(400, documented(PROVIDER, "error_filter"))
        if reconcile and call.query.get("dataSourceFamily") != ALL_SOURCES:
            return answer(400, documented(PROVIDER, "error_filter"))
        start = datetime.fromisoformat(match["start"])
        end = datetime.fromisoformat(match["end"])
        inside = [p for p in self.points[kind] if start <= self._start(kind, p) < end]
        if reconcile:
            inside = self._reconciled(kind, inside)
        inside.sort(key=lambda p: self._start(kind, p), reverse=True)  # "descending order"
        size = min(int(call.query.get("pageSize", "1440")), self.page)
        offset = int(call.query.get("pageToken", "offset-0").removeprefix("offset-"))
        body: dict[str, Any] = {}
        if inside[offset : offset + size]:  # proto3 JSON leaves an empty list out
            body["dataPoints"] = inside[offset : offset + size]
        if offset + size < len(inside):
            body["nextPageToken"] = f"offset-{offset + size}"
        return answer(200, body)


@pytest.fixture
def google(api: FakeApi) -> FakeGoogleHealth:
    return FakeGoogleHealth(api)


def connect(store: RecordStore, user: HealthSyncConfig = USER) -> None:
    tokens = OAuthTokens("at-1", "rt-1", NOW + timedelta(days=1))
    connect_user(store, PROVIDER, user.user_id, tokens, user)


@pytest.fixture
def sqlite(sqlite_store: RecordStore, token_key: str) -> RecordStore:
    connect(sqlite_store)
    return sqlite_store


def source_for(api: FakeApi, store: RecordStore) -> GoogleHealthSource:
    oauth = OAuthClient(PROVIDER, f"{api.base_url}/token", "cid", "cs")
    settings = ApiSettings(PROVIDER, api.base_url, oauth)
    return GoogleHealthSource(store, settings, backoff_s=0.0, clock=lambda: NOW)


def day_window(day: date = DAY) -> tuple[int, int]:
    window = utc_day(day)
    return to_us(window.start), to_us(window.end)


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return utc_day(day).start + timedelta(hours=hour, minutes=minute)


def test_a_source_by_the_protocol_that_enumerates_nobody(api, sqlite) -> None:
    source = source_for(api, sqlite)
    assert isinstance(source, HealthSource)
    assert source.discover_users() == [] and source.supported_types == APP.supported_types


def test_the_documented_pages_become_records_with_their_provenance(api, sqlite) -> None:
    """heart_rate.json as Google lists it, its reconciled twin, and the page token followed."""
    listed = documented(PROVIDER, "heart_rate")
    point = listed["dataPoints"][0]
    reconciled = {"heartRate": point["heartRate"]}  # a ReconciledDataPoint: no dataSource
    spec = TYPES[HR]
    api.queue(spec.endpoint, answer(200, listed), answer(200, {}))
    api.queue(
        spec.reconcile,
        answer(200, {"dataPoints": [reconciled], "nextPageToken": "opaque-token"}),
        answer(200, {}),
    )
    moment = datetime(2026, 3, 7, 16, 29, tzinfo=UTC)
    window = (to_us(moment - timedelta(hours=1)), to_us(moment + timedelta(hours=1)))
    result = source_for(api, sqlite).fetch_windows(USER, {HR: [window]})
    rows = result.batch[["ts", "value", "utc_offset_min", "device_id", "method", "context"]]
    assert rows.astype(object).values.tolist() == [
        [moment, 72.0, 60, "Pixel Watch 3", "device", "sedentary"]
    ]
    assert result.covered == {"heart_rate": [window]}
    first, second = api.calls_to(spec.reconcile)
    assert first.query == {
        "filter": 'heart_rate.sample_time.physical_time >= "2026-03-07T15:29:00Z" AND '
        'heart_rate.sample_time.physical_time < "2026-03-07T17:29:00Z"',
        "pageSize": "10000",
        "dataSourceFamily": "users/me/dataSourceFamilies/all-sources",
    }
    assert second.query["pageToken"] == "opaque-token"
    assert [c.query.get("pageToken") for c in api.calls_to(spec.endpoint)] == [None, "opaque-token"]
    assert "dataSourceFamily" not in api.calls_to(spec.endpoint)[0].query
    assert {c.bearer for c in api.calls} == {"at-1"}


def test_the_codelabs_real_response_names_a_typed_entry_without_a_device() -> None:
    """The one real Google response (the codelab's): dataSource without `device`."""
    [point] = documented(PROVIDER, "exercise_codelab")["dataPoints"]
    assert provenance(point) == ("", "manual")
    assert provenance(documented(PROVIDER, "steps")["dataPoints"][0]) == ("phone", "device")
    assert provenance({"dataSource": {"application": {"packageName": "com.x"}}}) == (
        "com.x",
        "device",
    )


def test_a_person_at_utc_with_omitted_zero_values_syncs(api, google, store, token_key) -> None:
    """Proto3 JSON leaves zeros out: no utcOffset at UTC+0, no count for 0 steps. A heart-rate
    point without its value is no reading. None of it fails the person."""
    connect(store)
    google.points[HR] = [heart(at(8, m), 60 + m, offset_s=0) for m in range(3)]
    google.points[HR].append(heart(at(8, 5), None, offset_s=0))
    google.points[STEPS] = [steps(at(8, 0), 80, offset_s=0), steps(at(8, 1), 0, offset_s=0)]
    google.points[WEIGHT] = [weight(at(7), 71_250.0, offset_s=0)]
    assert "utcOffset" not in google.points[HR][0]["heartRate"]["sampleTime"]
    assert "count" not in google.points[STEPS][1]["steps"]
    report = sync_partition(source_for(api, store), store, DAY, strategy="partition", now=NOW)
    assert report.users_synced == [USER.user_id] and not report.failures
    assert report.records_by_type == {"heart_rate": 3, "steps": 2, "weight": 1}
    stored = store.read_records(PROVIDER, utc_day(DAY))
    assert set(stored["utc_offset_min"]) == {0}
    assert sorted(stored.loc[stored["data_type"] == "steps", "value"]) == [0.0, 80.0]
    assert store.last_synced(PROVIDER, USER.user_id, "spo2") == utc_day(DAY).end


def test_phone_and_watch_steps_are_counted_once(api, google, sqlite) -> None:
    """The watch and the phone both counted 08:00-08:05; the phone alone 08:10. The reconciled
    stream gives one reading a minute; each keeps the device that recorded it."""
    watch = [steps(at(8, m), 100 + m, WATCH) for m in range(5)]
    phone = [steps(at(8, m), 90 + m, PHONE) for m in range(5)] + [steps(at(8, 10), 40, PHONE)]
    google.points[STEPS] = watch + phone
    google.page = 3  # pages of three: the raw and the reconciled reads both page
    result = source_for(api, sqlite).fetch_windows(USER, {STEPS: [day_window()]})
    batch = result.batch.sort_values("ts")
    raw_total = sum(int(p["steps"]["count"]) for p in watch + phone)
    assert batch["value"].sum() == sum(range(100, 105)) + 40 < raw_total
    assert batch["device_id"].tolist() == ["Pixel Watch 3"] * 5 + ["phone"]
    assert batch["duration_s"].tolist() == [60.0] * 6
    assert batch["utc_offset_min"].tolist() == [60] * 6
    assert len(api.calls_to(TYPES[STEPS].reconcile)) == 2
    assert len(api.calls_to(TYPES[STEPS].endpoint)) == 4


def test_a_typed_weight_is_manual_and_an_ambiguous_reading_names_no_device(
    api, google, sqlite
) -> None:
    scale = {"recordingMethod": "ACTIVELY_MEASURED",
             "device": {"formFactor": "SCALE", "manufacturer": "Withings"}}  # fmt: skip
    google.points[WEIGHT] = [
        weight(at(7), 72_500.0, TYPED),
        weight(at(19), 72_100.0, scale),
        # The same reading from two sources: reconcile keeps one, whose is not said.
        weight(at(21), 72_000.0, TYPED),
        weight(at(21), 72_000.0, scale),
    ]
    google.priority = ["Withings scale"]
    batch = source_for(api, sqlite).fetch_windows(USER, {WEIGHT: [day_window()]}).batch
    rows = batch.sort_values("ts")[["value", "device_id", "method"]].values.tolist()
    assert [(round(v, 3), d, m) for v, d, m in rows] == [
        (72.5, "", "manual"), (72.1, "Withings scale", "device"), (72.0, "", "device")
    ]  # fmt: skip


def test_a_malformed_value_fails_its_type_in_one_line(api, google, sqlite) -> None:
    google.points[HR] = [heart(at(8), 64)]
    bad = weight(at(7), 70_000.0)
    bad["weight"]["sampleTime"]["utcOffset"] = "one hour"
    google.points[WEIGHT] = [bad]
    result = source_for(api, sqlite).fetch_windows(
        USER, {HR: [day_window()], WEIGHT: [day_window()]}
    )
    assert set(result.covered) == {"heart_rate"} and len(result.batch) == 1
    message = result.failed["weight"]
    assert "\n" not in message
    assert "/weight/dataPoints dataPoints[0].weight: field 'sampleTime.utcOffset' is " in message
    assert "'one hour': expected a duration like \"3600s\"" in message


def test_a_refused_type_and_a_rate_limit(api, google, sqlite) -> None:
    google.refuse.add(HealthDataType.SPO2)
    google.points[HR] = [heart(at(8), 64)]
    result = source_for(api, sqlite).fetch_windows(USER, {HR: [day_window()], SPO2: [day_window()]})
    assert "HTTP 403" in result.refused["spo2"]
    assert "insufficient authentication scopes" in result.refused["spo2"]
    assert set(result.covered) == {"heart_rate"}
    api.queue(
        TYPES[WEIGHT].reconcile,
        answer(429, documented(PROVIDER, "error_rate_limit"), Retry_After="60"),
    )
    with pytest.raises(RateLimited) as limited:
        source_for(api, sqlite).fetch_windows(USER, {WEIGHT: [day_window()]})
    assert limited.value.retry_after_s == 60.0


def notification(data_type: str, operation: str = "UPSERT", **changes: Any) -> dict[str, Any]:
    data = documented(PROVIDER, "notification")["data"]
    return {**data, "healthUserId": USER.user_id, "dataType": data_type,
            "operation": operation, **changes}  # fmt: skip


def test_notifications_name_the_windows_to_read_again(api, sqlite) -> None:
    source = source_for(api, sqlite)
    documented_steps = notification("steps")
    start = datetime(2026, 3, 8, 1, 29, tzinfo=UTC)
    end = datetime(2026, 3, 8, 1, 34, tzinfo=UTC)
    civil_only = notification(
        "heart-rate",
        "DELETE",
        intervals=[{"civilIso8601TimeInterval": documented_steps["intervals"][0][
            "civilIso8601TimeInterval"]}],
    )  # fmt: skip
    local = datetime(2026, 3, 7, 17, 29, tzinfo=UTC)
    events = [
        Event("steps", start, NOW, documented_steps),
        Event("heart_rate", None, NOW, civil_only),
        Event("weight", None, NOW, notification("weight", intervals=[])),
        Event(None, None, NOW, notification("sleep")),
    ]
    windows = source.event_windows(USER, events, NOW)
    assert windows == {
        STEPS: [(to_us(start), to_us(end) + 1)],
        HR: [(to_us(local - CIVIL_REACH), to_us(local + timedelta(minutes=5) + CIVIL_REACH) + 1)],
        WEIGHT: [(to_us(NOW - APP.resync_horizon), to_us(NOW))],
    }
    no_steps = HealthSyncConfig(user_id="x", provider=PROVIDER, enabled_types=frozenset({HR}))
    assert STEPS not in source.event_windows(no_steps, events, NOW)


def test_a_delete_notification_removes_what_google_no_longer_holds(api, google, sqlite) -> None:
    google.points[STEPS] = [steps(at(8, m), 100 + m, WATCH) for m in range(5)]
    google.points[HR] = [heart(at(8, m), 70, WATCH) for m in range(5)]
    sync_partition(source_for(api, sqlite), sqlite, DAY, strategy="partition", now=NOW)
    assert len(sqlite.read_records(PROVIDER, utc_day(DAY))) == 10
    google.points[STEPS] = google.points[STEPS][:2]  # the person deleted three minutes
    interval = {"physicalTimeInterval": {"startTime": rfc3339(at(8, 2)),
                                         "endTime": rfc3339(at(8, 5))}}  # fmt: skip
    deleted = notification("steps", "DELETE", intervals=[interval])
    event = Event("steps", at(8, 2), NOW, deleted)
    report = sync_partition(
        source_for(api, sqlite), sqlite, DAY, strategy="push",
        events={USER.user_id: [event]}, now=NOW,
    )  # fmt: skip
    stored = sqlite.read_records(PROVIDER, utc_day(DAY))
    assert sorted(stored.loc[stored["data_type"] == "steps", "value"]) == [100.0, 101.0]
    assert (stored["data_type"] == "heart_rate").sum() == 5
    assert DAY in report.days_changed


def test_the_connect_flow_finds_the_person_by_identity(api) -> None:
    api.on("/v4/users/me/identity", lambda call: answer(200, documented(PROVIDER, "identity")))
    client = ApiClient(PROVIDER, api.base_url, backoff_s=0.0)
    assert APP.find_user_id(client, {}, "fresh-token") == "2515055256096816351"
    assert api.calls[-1].bearer == "fresh-token"
