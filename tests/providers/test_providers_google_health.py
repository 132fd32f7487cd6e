"""The google_health source against a local server answering only Google Health API v4's
documented shapes (ohx_dagster/providers/google_health/fixtures, SOURCE.md): the reconciled
stream with the raw points' provenance, proto3's omitted zero values (a person at UTC+0, a minute
of 0 steps), phone and watch steps counted once, a malformed value, a refused type, a rate limit,
notification windows, deletions included, and sleep and exercise as sessions (a night with its
stages, the codelab's real walk) through to FHIR."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from provider_api_server import Call, FakeApi, answer, documented

from ohx_dagster.core.errors import RateLimited
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.providers.api.http import ApiClient
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.providers.base import Event, HealthSource
from ohx_dagster.providers.google_health import APP, GoogleHealthSource
from ohx_dagster.providers.google_health.sessions import SESSIONS
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
GLUCOSE, HRV, RESP = (
    HealthDataType.BLOOD_GLUCOSE,
    HealthDataType.HRV_RMSSD,
    HealthDataType.RESPIRATORY_RATE,
)
NIGHT, WORKOUT = HealthDataType.SLEEP, HealthDataType.WORKOUT
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
    r"^(?P<field>[a-z_]+)\.(?P<path>interval\.start_time|sample_time\.physical_time|date"
    r'|interval\.end_time|interval\.civil_start_time) >= "'
    r'(?P<start>[^"]+)" AND (?P=field)\.(?P=path) < "(?P<end>[^"]+)"$'
)
# The DataPoint member of each type the source reads.
MEMBER = {k: g.field for k, g in TYPES.items()} | {k: g.field for k, g in SESSIONS.items()}


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
    are parsed and checked as the filter documentation states them (sleep by its end, exercise by
    its civil start); pages hold at most `page` (25 for sessions)."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.points: dict[HealthDataType, list[dict]] = defaultdict(list)
        self.priority: list[str] = ["Pixel Watch 3"]
        self.refuse: set[HealthDataType] = set()
        self.page = 1_000
        for kind, spec in [*TYPES.items(), *SESSIONS.items()]:
            api.on(spec.endpoint, lambda call, k=kind: self._answer(call, k, reconcile=False))
            api.on(spec.reconcile, lambda call, k=kind: self._answer(call, k, reconcile=True))

    def _start(self, kind: HealthDataType, point: dict) -> str:
        """What the filter compares: an RFC 3339 instant, a daily point's ISO date, a night's
        end, an exercise's civil start (its start's wall clock at its start's offset)."""
        member = point[MEMBER[kind]]
        if "date" in member:
            return date(**member["date"]).isoformat()
        if kind is NIGHT:
            return rfc3339(datetime.fromisoformat(member["interval"]["endTime"]))
        if kind is WORKOUT:
            interval = member["interval"]
            offset = int(interval.get("startUtcOffset", "0s").removesuffix("s"))
            start = datetime.fromisoformat(interval["startTime"]) + timedelta(seconds=offset)
            return start.replace(tzinfo=None).isoformat()
        text = member["interval"]["startTime"] if "interval" in member else None
        return rfc3339(datetime.fromisoformat(text or member["sampleTime"]["physicalTime"]))

    def _path(self, kind: HealthDataType) -> str:
        if kind in SESSIONS:
            return "interval.end_time" if SESSIONS[kind].by_end else "interval.civil_start_time"
        spec = TYPES[kind]
        return (
            "date"
            if spec.daily
            else ("interval.start_time" if spec.interval else "sample_time.physical_time")
        )

    def _reconciled(self, kind: HealthDataType, points: list[dict]) -> list[dict]:
        chosen: dict[str, tuple[int, dict]] = {}
        for point in points:
            member = point[MEMBER[kind]]
            if "interval" in member:
                key = f"{member['interval']['startTime']}/{member['interval']['endTime']}"
            elif "date" in member:
                key = self._start(kind, point)
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
        if kind in self.refuse:
            return answer(403, documented(PROVIDER, "error_scope"))
        match = FILTER.match(call.query.get("filter", ""))
        name = SESSIONS[kind].field if kind in SESSIONS else TYPES[kind].filter_name
        if match is None or match["field"] != name or match["path"] != self._path(kind):
            return answer(400, documented(PROVIDER, "error_filter"))
        if reconcile and call.query.get("dataSourceFamily") != ALL_SOURCES:
            return answer(400, documented(PROVIDER, "error_filter"))
        # "Date literal expected in ISO 8601 YYYY-MM-DD format"; timestamps in RFC 3339; civil
        # times "YYYY-MM-DD[THH:mm:ss]" (compared as naive wall clocks).
        daily = kind in TYPES and TYPES[kind].daily
        parse: Any = date.fromisoformat if daily else datetime.fromisoformat
        start, end = parse(match["start"]), parse(match["end"])
        inside = [p for p in self.points[kind] if start <= parse(self._start(kind, p)) < end]
        if reconcile:
            inside = self._reconciled(kind, inside)
        inside.sort(key=lambda p: parse(self._start(kind, p)), reverse=True)  # "descending order"
        # "The maximum page size for `exercise` and `sleep` is 25."
        limit = 25 if kind in SESSIONS else self.page
        size = min(int(call.query.get("pageSize", "1440")), self.page, limit)
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
        Event(None, None, NOW, notification("distance")),
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


# -- blood glucose, daily heart rate variability (RMSSD), daily respiratory rate ---------------

BERLIN = HealthSyncConfig(user_id=USER.user_id, provider=PROVIDER, timezone="Europe/Berlin")
COLUMNS = ["data_type", "ts", "value", "unit", "utc_offset_min", "device_id", "method", "context"]


def glucose(moment: datetime, mg_dl: float, **fields: str | None) -> dict:
    """blood_glucose.json's point at `moment` (UTC+1); a field given None is left out."""
    point = documented(PROVIDER, "blood_glucose")["dataPoints"][0]
    value = {"sampleTime": sample_time(moment, 3600), "bloodGlucoseMilligramsPerDeciliter": mg_dl}
    member = point["bloodGlucose"] | value | fields
    point["bloodGlucose"] = {k: v for k, v in member.items() if v is not None}
    return point


def daily(name: str, day: date, **values: float | None) -> dict:
    """The fixture `name`'s daily point for `day`; a value given None is left out."""
    point = documented(PROVIDER, name)["dataPoints"][0]
    [field] = [k for k in point if k != "dataSource"]
    member = point[field] | {"date": {"year": day.year, "month": day.month, "day": day.day}}
    point[field] = {k: v for k, v in (member | values).items() if v is not None}
    return point


def test_blood_glucose_is_stored_in_mg_dl_as_the_meter_read_it(api, google, sqlite) -> None:
    """blood_glucose.json: a finger stick of 104 mg/dL before breakfast at 07:45+01:00, stored
    and published as that (LOINC 2339-0, mg/dL), attributed to the meter."""
    from ohx_dagster.fhir.measurements import measurement_observation

    google.points[GLUCOSE] = documented(PROVIDER, "blood_glucose")["dataPoints"]
    moment = datetime(2026, 3, 7, 6, 45, tzinfo=UTC)
    window = (to_us(moment - timedelta(hours=1)), to_us(moment + timedelta(hours=1)))
    result = source_for(api, sqlite).fetch_windows(USER, {GLUCOSE: [window]})
    assert result.batch[COLUMNS].astype(object).values.tolist() == [
        ["blood_glucose", moment, 104.0, "mg/dL", 60, "Contour Next One", "device", "before_meal"]
    ]
    assert api.calls_to(TYPES[GLUCOSE].reconcile)[0].query["filter"] == (
        'blood_glucose.sample_time.physical_time >= "2026-03-07T05:45:00Z" AND '
        'blood_glucose.sample_time.physical_time < "2026-03-07T07:45:00Z"'
    )
    row = result.batch.iloc[0].to_dict() | {"ts_us": to_us(moment)}
    observation = measurement_observation(row, USER)
    assert [(c["system"], c["code"]) for c in observation["code"]["coding"]] == [
        ("http://loinc.org", "2339-0")
    ]
    assert observation["valueQuantity"] == {
        "value": 104, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"
    }  # fmt: skip
    assert observation["effectiveDateTime"] == "2026-03-07T07:45:00+01:00"


def test_glucose_a_cgm_measured_or_of_another_fluid_is_not_blood_glucose(
    api, google, sqlite
) -> None:
    """BloodGlucose.measurementSource CONTINUOUS_GLUCOSE_MONITORING and specimen
    INTERSTITIAL_FLUID or TEARS are not glucose in blood: skipped. A laboratory's plasma value
    and a reading without specimen or source are stored, each at its time and own offset."""
    google.points[GLUCOSE] = [
        glucose(at(7), 98.0),
        glucose(at(8), 140.0, measurementSource="CONTINUOUS_GLUCOSE_MONITORING", specimen=None),
        glucose(at(9), 120.0, specimen="INTERSTITIAL_FLUID", measurementSource=None),
        glucose(at(10), 131.0, specimen="TEARS"),
        glucose(at(11), 92.0, specimen="PLASMA", measurementSource="LAB_TEST",
                measurementTiming="FASTING"),
        glucose(at(12), 150.0, specimen=None, measurementSource=None, measurementTiming=None),
    ]  # fmt: skip
    report = sync_partition(source_for(api, sqlite), sqlite, DAY, strategy="partition", now=NOW)
    assert report.records_by_type == {"blood_glucose": 3} and not report.failures
    stored = sqlite.read_records(PROVIDER, utc_day(DAY)).sort_values("ts")
    assert stored[["data_type", "ts", "value", "unit", "utc_offset_min", "context"]].astype(
        object
    ).values.tolist() == [
        ["blood_glucose", at(7), 98.0, "mg/dL", 60, "before_meal"],
        ["blood_glucose", at(11), 92.0, "mg/dL", 60, "fasting"],
        ["blood_glucose", at(12), 150.0, "mg/dL", 60, ""],
    ]


def test_daily_hrv_is_rmssd_at_the_start_of_its_local_day(api, google, sqlite) -> None:
    """daily_heart_rate_variability.json: averageHeartRateVariabilityMilliseconds ("calculated
    using the root mean square of successive differences (RMSSD)") of 2026-03-07 for a person in
    Berlin: 38.5 ms at 2026-03-07T00:00+01:00, in that local day, published under this project's
    RMSSD code, never LOINC 80404-7 (SDNN). A day with entropy but no average is no reading."""
    from ohx_dagster.core.localdays import Calendar
    from ohx_dagster.fhir.measurements import measurement_observation

    google.points[HRV] = [
        *documented(PROVIDER, "daily_heart_rate_variability")["dataPoints"],
        daily("daily_heart_rate_variability", date(2026, 3, 8),
              averageHeartRateVariabilityMilliseconds=None),
    ]  # fmt: skip
    start = datetime(2026, 3, 6, 23, tzinfo=UTC)
    window = (to_us(start), to_us(start + timedelta(days=2)))
    result = source_for(api, sqlite).fetch_windows(BERLIN, {HRV: [window]})
    assert result.batch[COLUMNS].astype(object).values.tolist() == [
        ["hrv_rmssd", start, 38.5, "ms", 60, "Pixel Watch 3", "device", ""]
    ]
    assert result.batch["duration_s"].isna().all()  # a reading at the day's start
    assert Calendar.of(BERLIN).day_of(to_us(start)) == date(2026, 3, 7)
    assert api.calls_to(TYPES[HRV].reconcile)[0].query["filter"] == (
        'daily_heart_rate_variability.date >= "2026-03-05" AND '
        'daily_heart_rate_variability.date < "2026-03-10"'
    )
    row = result.batch.iloc[0].to_dict() | {"ts_us": to_us(start)}
    observation = measurement_observation(row, BERLIN)
    assert [(c["system"], c["code"]) for c in observation["code"]["coding"]] == [
        ("urn:ohx:fhir:heart-rate-variability", "rmssd")
    ]
    assert observation["valueQuantity"]["value"] == 38.5
    assert observation["valueQuantity"]["code"] == "ms"
    assert observation["effectiveDateTime"] == "2026-03-07T00:00:00+01:00"


def test_daily_values_are_stored_at_the_start_of_their_local_day(
    api, google, store, token_key
) -> None:
    """daily_respiratory_rate.json's breathsPerMinute (14.6, "the average number of breaths
    taken per minute") and daily_heart_rate_variability.json's average (38.5 ms) for a person in
    New York, synced by day: stored as 14.6 /min and 38.5 ms at local midnight of their date with
    that zone's offset, the only records of the day."""
    new_york = HealthSyncConfig(user_id=USER.user_id, provider=PROVIDER,
                                timezone="America/New_York")  # fmt: skip
    connect(store, new_york)
    google.points[RESP] = [daily("daily_respiratory_rate", DAY)]
    google.points[HRV] = [daily("daily_heart_rate_variability", DAY)]
    report = sync_partition(source_for(api, store), store, DAY, strategy="partition", now=NOW)
    assert report.users_synced == [USER.user_id] and not report.failures
    assert report.records_by_type == {"respiratory_rate": 1, "hrv_rmssd": 1}
    midnight = datetime.combine(DAY, datetime.min.time(), tzinfo=ZoneInfo("America/New_York"))
    offset = int(midnight.utcoffset().total_seconds() // 60)
    stored = store.read_records(PROVIDER, utc_day(DAY)).sort_values("data_type")
    assert stored[COLUMNS].astype(object).values.tolist() == [
        ["hrv_rmssd", midnight.astimezone(UTC), 38.5, "ms", offset, "Pixel Watch 3", "device", ""],
        ["respiratory_rate", midnight.astimezone(UTC), 14.6, "/min", offset, "Pixel Watch 3",
         "device", ""],
    ]  # fmt: skip


def test_a_daily_point_with_a_malformed_date_fails_its_type_in_one_line(
    api, google, sqlite
) -> None:
    bad = daily("daily_respiratory_rate", DAY)
    bad["dailyRespiratoryRate"]["date"] = "2026-03-07"
    reconciled = {"dailyRespiratoryRate": bad["dailyRespiratoryRate"]}
    api.queue(TYPES[RESP].reconcile, answer(200, {"dataPoints": [reconciled]}))
    api.queue(TYPES[RESP].endpoint, answer(200, {"dataPoints": [bad]}))
    google.points[HR] = [heart(at(8), 64)]
    result = source_for(api, sqlite).fetch_windows(USER, {RESP: [day_window()], HR: [day_window()]})
    assert set(result.covered) == {"heart_rate"}
    message = result.failed["respiratory_rate"]
    assert "\n" not in message
    assert "dataPoints[0].dailyRespiratoryRate: field 'date' is '2026-03-07'" in message
    assert "expected a full Date {year, month, day}" in message


def test_notifications_of_the_new_types_are_parsed_and_read_again(api, sqlite) -> None:
    """The guide lists Blood Glucose, Daily Heart Rate Variability and Daily Respiratory Rate
    among the webhook data types: each notification maps to its type. A daily type's window is
    the whole local day it touches: its points are dated at the day's start."""
    from ohx_dagster.providers.google_health.webhook import parse_notification

    names = ["blood-glucose", "daily-heart-rate-variability", "daily-respiratory-rate"]
    parsed = parse_notification([{"data": notification(name)} for name in names])
    assert [e.data_type for e in parsed] == ["blood_glucose", "hrv_rmssd", "respiratory_rate"]
    assert not any(e.ignored_reason for e in parsed)
    events = [Event(e.data_type, e.occurred_at, NOW, e.payload) for e in parsed]
    windows = source_for(api, sqlite).event_windows(BERLIN, events, NOW)
    start = datetime(2026, 3, 8, 1, 29, tzinfo=UTC)  # 02:29 in Berlin
    local_day = (
        to_us(datetime(2026, 3, 7, 23, tzinfo=UTC)),
        to_us(datetime(2026, 3, 8, 23, tzinfo=UTC)),
    )
    assert windows == {
        GLUCOSE: [(to_us(start), to_us(start + timedelta(minutes=5)) + 1)],
        HRV: [local_day],
        RESP: [local_day],
    }


# -- sleep and exercise: sessions stamped at their end -----------------------------------------

SESSION_COLUMNS = ["data_type", "ts", "value", "unit", "duration_s", "utc_offset_min",
                   "device_id", "method", "context"]  # fmt: skip
STAGE_CODES = {"DEEP": 1.0, "LIGHT": 2.0, "REM": 3.0, "AWAKE": 4.0, "ASLEEP": 5.0}
BERLIN_ZONE = ZoneInfo("Europe/Berlin")


def berlin_offset_s(moment: datetime) -> int:
    offset = moment.astimezone(BERLIN_ZONE).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def session_interval(start: datetime, end: datetime) -> dict[str, Any]:
    """SessionTimeInterval of a session lived in Berlin: each end at its own offset."""
    first, last = berlin_offset_s(start), berlin_offset_s(end)
    return {"startTime": rfc3339(start), "startUtcOffset": f"{first}s",
            "endTime": rfc3339(end), "endUtcOffset": f"{last}s",
            "civilStartTime": civil(start, first), "civilEndTime": civil(end, last)}  # fmt: skip


def sleep_point(start: datetime, end: datetime, *stages: tuple[str, datetime, datetime]) -> dict:
    """sleep.json's point as another night: its interval and stages (type, start, end), no
    summary (Google's output only: the stages give the time asleep)."""
    point = documented(PROVIDER, "sleep")["dataPoints"][0]
    member = point["sleep"]
    member["interval"] = session_interval(start, end)
    member["stages"] = [
        {"startTime": rfc3339(a), "startUtcOffset": f"{berlin_offset_s(a)}s",
         "endTime": rfc3339(b), "endUtcOffset": f"{berlin_offset_s(b)}s", "type": kind}
        for kind, a, b in stages
    ]  # fmt: skip
    del member["summary"]
    return point


def exercise_point(start: datetime, end: datetime) -> dict:
    """exercise.json's run as another session, without pauses."""
    point = documented(PROVIDER, "exercise")["dataPoints"][0]
    member = point["exercise"]
    member["interval"] = session_interval(start, end)
    member["activeDuration"] = f"{int((end - start).total_seconds())}s"
    del member["exerciseEvents"]
    return point


def components(observation: dict) -> dict[str, Any]:
    return {
        c["code"]["coding"][0]["code"]: c.get("valueQuantity", {}).get(
            "value", c.get("valueInteger")
        )
        for c in observation.get("component", [])
    }


def test_the_app_asks_the_sleep_scope() -> None:
    """Sleep needs its own scope (S1: "See your Google Health sleep data"); exercise is read
    with activity_and_fitness, asked already."""
    assert APP.authorize.scopes == (
        "https://www.googleapis.com/auth/googlehealth.activity_and_fitness.readonly",
        "https://www.googleapis.com/auth/googlehealth.health_metrics_and_measurements.readonly",
        "https://www.googleapis.com/auth/googlehealth.sleep.readonly",
    )
    assert {NIGHT, WORKOUT} <= APP.supported_types


def test_a_documented_night_is_stored_at_its_end_and_published_with_its_stages(
    api, google, store, token_key
) -> None:
    """sleep.json: a watch's night in Berlin, 23:40 to 07:10 (+01:00), 415 minutes asleep by its
    summary, twelve stages (deep 80, light 230, REM 105 minutes, one waking between sleeps). Google
    lists the stages in no documented order: given latest first, they are stored in order, each
    exactly as given. The night is the day it ended on, published as 93832-4 with its stages."""
    from ohx_dagster.fhir.sleep import sleep_observation
    from ohx_dagster.fhir.validation import validate_resources

    connect(store, BERLIN)
    point = documented(PROVIDER, "sleep")["dataPoints"][0]
    given = list(point["sleep"]["stages"])
    point["sleep"]["stages"] = given[::-1]
    google.points[NIGHT] = [point]
    day = date(2026, 3, 7)
    report = sync_partition(source_for(api, store), store, day, strategy="partition",
                            now=datetime(2026, 3, 8, 12, tzinfo=UTC))  # fmt: skip
    assert report.records_by_type == {"sleep": 1} and not report.failures
    # Asked by its end ("Session end time (Sleep specific)"), the whole local day and more.
    first = api.calls_to(SESSIONS[NIGHT].reconcile)[0].query
    asked = FILTER.match(first["filter"])
    assert asked is not None and (asked["field"], asked["path"]) == ("sleep", "interval.end_time")
    assert asked["start"] <= "2026-03-06T23:00:00Z" and asked["end"] >= "2026-03-07T23:00:00Z"
    assert (first["pageSize"], first["dataSourceFamily"]) == ("25", ALL_SOURCES)
    stored = store.read_records(PROVIDER, utc_day(day))
    start, end = datetime(2026, 3, 6, 22, 40, tzinfo=UTC), datetime(2026, 3, 7, 6, 10, tzinfo=UTC)
    assert stored[SESSION_COLUMNS].astype(object).values.tolist() == [
        ["sleep", end, 415.0, "min", 27_000.0, 60, "Pixel Watch 3", "device", ""]
    ]
    seconds = [
        value
        for stage in given
        for value in (
            (datetime.fromisoformat(stage["startTime"]) - start).total_seconds(),
            (datetime.fromisoformat(stage["endTime"]) - start).total_seconds(),
            STAGE_CODES[stage["type"]],
        )
    ]
    row = stored.iloc[0].to_dict()
    assert list(row["samples"]) == seconds
    observation = sleep_observation(row | {"ts_us": to_us(end)}, BERLIN)
    assert observation["effectivePeriod"] == {
        "start": "2026-03-06T23:40:00+01:00",
        "end": "2026-03-07T07:10:00+01:00",
    }
    assert observation["valueQuantity"]["value"] == 415
    assert components(observation) == {
        "93831-6": 80, "93830-8": 230, "93829-0": 105,
        "wakeAfterSleepOnset": 10, "numberOfAwakenings": 1,
    }  # fmt: skip
    assert validate_resources([observation]) == []


def test_classic_stages_restless_left_out_overlaps_cut_and_a_nap(api, google, sqlite) -> None:
    """A classic night without summary (23:00-07:00Z): its time asleep is its ASLEEP stages;
    RESTLESS (neither asleep nor awake in Google's sums) is left out; an AWAKE stage overlapping
    the sleep before it is cut where that ends. A nap (metadata.nap) with only its summary."""
    night_start, night_end = at(23) - timedelta(days=1), at(7)
    minutes = [night_start + timedelta(minutes=m) for m in (0, 180, 200, 360, 350, 370, 480)]
    night = sleep_point(
        night_start, night_end,
        ("ASLEEP", minutes[0], minutes[1]), ("RESTLESS", minutes[1], minutes[2]),
        ("ASLEEP", minutes[2], minutes[3]), ("AWAKE", minutes[4], minutes[5]),
        ("ASLEEP", minutes[5], minutes[6]),
    )  # fmt: skip
    night["sleep"]["type"] = "CLASSIC"
    nap = sleep_point(at(14), at(14, 45))
    nap["sleep"] |= {"metadata": {"nap": True}, "summary": {"minutesAsleep": "40"}}
    del nap["sleep"]["stages"]
    google.points[NIGHT] = [night, nap]
    result = source_for(api, sqlite).fetch_windows(USER, {NIGHT: [day_window()]})
    rows = result.batch.sort_values("ts")
    assert rows[["ts", "value", "duration_s", "context"]].values.tolist() == [
        [night_end, 450.0, 28_800.0, ""], [at(14, 45), 40.0, 2_700.0, "nap"]
    ]  # fmt: skip
    assert list(rows.iloc[0]["samples"]) == [
        0.0, 10_800.0, 5.0,  # ASLEEP
        12_000.0, 21_600.0, 5.0,  # ASLEEP, after 20 minutes RESTLESS
        21_600.0, 22_200.0, 4.0,  # AWAKE, its first 10 minutes cut (the sleep before ran on)
        22_200.0, 28_800.0, 5.0,  # ASLEEP
    ]  # fmt: skip
    assert rows.iloc[1]["samples"] is None


def test_the_codelabs_real_walk_and_a_documented_run_are_workouts(api, google, sqlite) -> None:
    """exercise_codelab.json, Google's own answer: a 15-minute walk typed in the Fitbit app,
    13:10-13:25Z at -05:00: stored at its end as 15 minutes of "Walk", 16 kcal and 1609.344 m
    (its `distanceMillimiters`), manual, no device; published as the activity panel.
    exercise.json, S1's spelling: a 45-minute run with a 2-minute pause, its average heart rate."""
    from ohx_dagster.fhir.validation import validate_resources
    from ohx_dagster.fhir.workouts import workout_resources

    walk = documented(PROVIDER, "exercise_codelab")["dataPoints"]
    run = documented(PROVIDER, "exercise")["dataPoints"]
    paused = documented(PROVIDER, "exercise")["dataPoints"][0]
    paused["exercise"]["interval"] = session_interval(at(18), at(18, 45))
    del paused["exercise"]["activeDuration"]  # then its events tell the pause
    for event, minute in zip(paused["exercise"]["exerciseEvents"], (0, 30, 32, 45), strict=True):
        event["eventTime"] = rfc3339(at(18, minute))
    google.points[WORKOUT] = [*walk, *run, paused]
    end = datetime(2026, 2, 23, 13, 25, tzinfo=UTC)
    window = (to_us(end - timedelta(hours=12)), to_us(end + timedelta(hours=1)))
    result = source_for(api, sqlite).fetch_windows(USER, {WORKOUT: [window]})
    assert api.calls_to(SESSIONS[WORKOUT].endpoint)[0].query == {
        "filter": 'exercise.interval.civil_start_time >= "2026-02-21T11:25:00" AND '
        'exercise.interval.civil_start_time < "2026-02-24T04:25:01"',
        "pageSize": "25",
    }
    assert result.batch[SESSION_COLUMNS].astype(object).values.tolist() == [
        ["workout", end, 15.0, "min", 900.0, -300, "", "manual", "Walk"]
    ]
    row = result.batch.iloc[0].to_dict()
    measures = [None if v != v else v for v in row["samples"]]
    assert measures == [16.0, 1609.344, None, None]
    resources = workout_resources(row | {"ts_us": to_us(end)}, USER)
    panel, *members = resources
    assert panel["code"]["coding"][0]["code"] == "PAPanel"
    assert panel["effectivePeriod"] == {
        "start": "2026-02-23T08:10:00-05:00",
        "end": "2026-02-23T08:25:00-05:00",
    }
    values = {
        m["code"]["coding"][0]["code"]: m.get("valueQuantity", {}).get(
            "value", m.get("valueCodeableConcept")
        )
        for m in members
    }
    assert values == {"73985-4": {"text": "Walk"}, "55411-3": 15, "55424-6": 16,
                      "distance": 1609.344}  # fmt: skip
    assert validate_resources(resources) == []

    day = source_for(api, sqlite).fetch_windows(
        USER, {WORKOUT: [(to_us(datetime(2026, 3, 7, tzinfo=UTC)), to_us(NOW))]}
    )
    rows = day.batch.sort_values("ts")
    assert rows[SESSION_COLUMNS].astype(object).values.tolist() == [
        ["workout", datetime(2026, 3, 7, 8, 15, tzinfo=UTC), 43.0, "min", 2_700.0, 60,
         "Pixel Watch 3", "device", "Run"],
        ["workout", at(18, 45), 43.0, "min", 2_700.0, 60, "Pixel Watch 3", "device", "Run"],
    ]  # fmt: skip
    assert [list(parts)[:3] for parts in rows["samples"]] == [[412.5, 7_250.0, 152.0]] * 2


def published(store: RecordStore, tmp_path, day: date, now: datetime) -> list[dict]:
    """The resources day partition `day` publishes (validated), [] when it has none."""
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.fhir.validation import validate_resources
    from ohx_dagster.publish.partitions import partition_dir, publish_partition
    from ohx_dagster.sync.shards import Shard

    output = FhirOutput(str(tmp_path / "fhir"))
    report = publish_partition(store, output, provider=PROVIDER, key=PROVIDER,
                               shard=Shard(PROVIDER), day=day, scope=None, now=now,
                               horizon=APP.resync_horizon, validate=validate_resources)  # fmt: skip
    assert report.invalid_buckets == {}
    return list(output.listed_resources(partition_dir(day, PROVIDER)))


def test_a_night_and_a_workout_across_midnight_and_the_clock_change_are_in_one_day(
    api, google, store, token_key, tmp_path
) -> None:
    """Berlin's clocks went forward at 2026-03-29T01:00Z. A night from 22:30 (+01:00) to 07:30
    (+02:00), and a run from 23:40 to 00:20 (+01:00), which ends on UTC's 28th: each is one
    record at its end with the end's offset, and only local day 29, the day it ended on, holds
    it, whichever day's run read it."""
    from ohx_dagster.core.localdays import Calendar

    connect(store, BERLIN)
    start, end = datetime(2026, 3, 28, 21, 30, tzinfo=UTC), datetime(2026, 3, 29, 5, 30, tzinfo=UTC)
    change = datetime(2026, 3, 29, 1, tzinfo=UTC)
    night = sleep_point(start, end, ("LIGHT", start, change), ("DEEP", change, end))
    assert night["sleep"]["interval"]["endUtcOffset"] == "7200s"
    assert night["sleep"]["interval"]["startUtcOffset"] == "3600s"
    google.points[NIGHT] = [night]
    run_end = datetime(2026, 3, 28, 23, 20, tzinfo=UTC)
    google.points[WORKOUT] = [exercise_point(run_end - timedelta(minutes=40), run_end)]
    now = datetime(2026, 3, 30, 12, tzinfo=UTC)
    reports = [
        sync_partition(source_for(api, store), store, day, strategy="partition", now=now)
        for day in (date(2026, 3, 28), date(2026, 3, 29))
    ]
    assert not any(r.failures for r in reports)
    stored = store.read_records(
        PROVIDER, DateRange(datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))
    ).sort_values("data_type")
    assert stored[SESSION_COLUMNS].astype(object).values.tolist() == [
        ["sleep", end, 480.0, "min", 28_800.0, 120, "Pixel Watch 3", "device", ""],
        ["workout", run_end, 40.0, "min", 2_400.0, 60, "Pixel Watch 3", "device", "Run"],
    ]
    assert list(stored.iloc[0]["samples"]) == [0.0, 12_600.0, 2.0, 12_600.0, 28_800.0, 1.0]
    calendar = Calendar.of(BERLIN)
    assert {calendar.day_of(to_us(t)) for t in stored["ts"]} == {date(2026, 3, 29)}
    # Published: day 28 holds neither session, day 29 both, once.
    codes = {
        day: sorted(
            r["code"]["coding"][0]["code"]
            for r in published(store, tmp_path, day, now)
            if r["resourceType"] == "Observation"
            and r["code"]["coding"][0]["code"] in ("93832-4", "PAPanel")
        )
        for day in (date(2026, 3, 28), date(2026, 3, 29))
    }
    assert codes == {date(2026, 3, 28): [], date(2026, 3, 29): ["93832-4", "PAPanel"]}


def test_a_malformed_session_fails_only_its_type_in_one_line(api, google, sqlite) -> None:
    """A stage ending after its night, and an exercise ending before it starts: each fails its
    own type, named by the point and the field; the heart rate goes on."""
    night = sleep_point(at(0), at(7), ("LIGHT", at(0), at(3)), ("DEEP", at(3), at(7, 10)))
    run = exercise_point(at(9), at(8, 30))
    google.points[NIGHT], google.points[WORKOUT] = [night], [run]
    google.points[HR] = [heart(at(8), 64)]
    windows = {NIGHT: [day_window()], WORKOUT: [day_window()], HR: [day_window()]}
    result = source_for(api, sqlite).fetch_windows(USER, windows)
    assert set(result.covered) == {"heart_rate"} and len(result.batch) == 1
    sleep, workout = result.failed["sleep"], result.failed["workout"]
    assert "\n" not in sleep and "\n" not in workout
    assert (
        f"/sleep/dataPoints dataPoints[0].sleep.stages[1]: field 'endTime' is "
        f"'{rfc3339(at(7, 10))}': expected an instant not before startTime, inside the night"
    ) in sleep
    assert (
        f"/exercise/dataPoints dataPoints[0].exercise: field 'interval.endTime' is "
        f"'{rfc3339(at(8, 30))}': expected an instant not before interval.startTime"
    ) in workout


def test_session_notifications_read_every_end_a_day_past_their_interval(api, sqlite) -> None:
    """`sleep` and `exercise` notifications name their types; a session is read by its end,
    and the guide does not say which part of it the interval is: a day further is read."""
    from ohx_dagster.providers.google_health.webhook import parse_notification

    parsed = parse_notification([{"data": notification(n)} for n in ("sleep", "exercise")])
    assert [(e.data_type, e.ignored_reason) for e in parsed] == [
        ("sleep", None), ("workout", None)
    ]  # fmt: skip
    events = [Event(e.data_type, e.occurred_at, NOW, e.payload) for e in parsed]
    windows = source_for(api, sqlite).event_windows(USER, events, NOW)
    start = datetime(2026, 3, 8, 1, 29, tzinfo=UTC)
    reach = (to_us(start), to_us(start + timedelta(minutes=5, days=1)) + 1)
    assert windows == {NIGHT: [reach], WORKOUT: [reach]}
