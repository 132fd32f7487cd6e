"""The Oura source, receiver and runs against a local server answering only Oura's documented
shapes (ohx_dagster/providers/oura/fixtures, SOURCE.md): heart rate with its context, daily steps
and SpO2, a refused type, a rate limit, and notifications whose documents say what to read: a
night's heart rate after a `sleep` event, a day's steps, and deletions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import orjson
import pytest
from clock import latest_past
from provider_api_server import Call, FakeApi, answer, documented

from ohx_dagster.core.errors import RateLimited
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.providers.base import Event, HealthSource
from ohx_dagster.providers.oura import APP, OuraSource
from ohx_dagster.providers.oura.source import (
    DAILY_ACTIVITY,
    DAILY_SPO2,
    HEARTRATE,
    HRV,
    SLEEP,
    WORKOUT,
)
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import SyncFailed, sync_partition
from ohx_dagster.sync.shards import Shard

HR, STEPS, SPO2 = HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.SPO2
# Noon of the latest day that has had one: a night before it is over whatever the hour now.
NOW = latest_past(12)
DAY = NOW.date() - timedelta(days=2)
USER = HealthSyncConfig(
    user_id="oura-u1",
    provider="oura",
    timezone="Europe/Berlin",
    enabled_types=frozenset({HR, STEPS, SPO2}),
)


def stamp(moment: datetime) -> str:
    return moment.isoformat()


def heart_rows(start: datetime, count: int, source: str, bpm: int = 58) -> list[dict]:
    """`count` PublicHeartRateRow at 5-minute steps (Oura's heart-rate increment)."""
    template = documented("oura", "heartrate")["data"][0]
    rows = []
    for i in range(count):
        moment = start + timedelta(minutes=5 * i)
        rows.append(
            {**template, "timestamp": stamp(moment),
             "timestamp_unix": int(moment.timestamp() * 1000), "bpm": bpm + i % 3, "source": source}
        )  # fmt: skip
    return rows


class FakeOura:
    """Oura's API answering documented shapes from what a test says the provider holds."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.heart: list[dict] = []
        self.activity: list[dict] = []
        self.spo2: list[dict] = []
        self.sleep: list[dict] = []
        self.workouts: list[dict] = []
        self.documents: dict[str, dict] = {}
        self.refuse: set[str] = set()
        api.on(HEARTRATE, self._heart)
        api.on(DAILY_ACTIVITY, lambda call: self._daily(call, "daily_activity", self.activity))
        api.on(DAILY_SPO2, lambda call: self._daily(call, "daily_spo2", self.spo2))
        api.on(SLEEP, lambda call: self._daily(call, "sleep", self.sleep))
        api.on(WORKOUT, lambda call: self._daily(call, "workout", self.workouts))

    def _refused(self, name: str):
        if name in self.refuse:
            error = {**documented("oura", "error"), "status": 403, "title": "Forbidden",
                     "detail": "Missing required scopes"}  # fmt: skip
            return answer(403, error)
        return None

    def _heart(self, call: Call):
        refused = self._refused("heartrate")
        if refused:
            return refused
        start = datetime.fromisoformat(call.query["start_datetime"])
        end = datetime.fromisoformat(call.query["end_datetime"])
        rows = [r for r in self.heart if start <= datetime.fromisoformat(r["timestamp"]) < end]
        # Two pages, as a long window gets.
        half = len(rows) // 2
        if call.query.get("next_token") == "page-2":
            return answer(200, {"data": rows[half:], "next_token": None})
        return answer(200, {"data": rows[:half], "next_token": "page-2" if half else None})

    def _daily(self, call: Call, name: str, documents: list[dict]):
        refused = self._refused(name)
        if refused:
            return refused
        first = date.fromisoformat(call.query["start_date"])
        last = date.fromisoformat(call.query["end_date"])
        chosen = [d for d in documents if first <= date.fromisoformat(d["day"]) <= last]
        return answer(200, {"data": chosen, "next_token": None})

    def document(self, kind: str, body: dict) -> None:
        path = f"/v2/usercollection/{kind}/{body['id']}"
        self.documents[path] = body
        self.api.on(
            path,
            lambda call, p=path: (
                answer(200, self.documents[p]) if p in self.documents else answer(404, None)
            ),
        )


@pytest.fixture
def oura(api: FakeApi) -> FakeOura:
    return FakeOura(api)


@pytest.fixture
def store(tmp_path, token_key):
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    tokens = OAuthTokens("at-1", "rt-1", NOW + timedelta(days=1))
    connect_user(record_store, "oura", USER.user_id, tokens, USER)
    yield record_store
    record_store.dispose()


def source_for(api: FakeApi, store: RecordStore) -> OuraSource:
    settings = ApiSettings(
        "oura", api.base_url, OAuthClient("oura", f"{api.base_url}/oauth/token", "cid", "cs")
    )
    return OuraSource(store, settings, backoff_s=0.0, clock=lambda: NOW)


def day_start(day: date) -> datetime:
    return utc_day(day).start


def activity_of(day: date, steps: int) -> dict:
    local_4am = datetime.combine(day, datetime.min.time(), tzinfo=USER.zone) + timedelta(hours=4)
    return {**documented("oura", "daily_activity"), "id": f"act-{day}", "day": day.isoformat(),
            "steps": steps, "timestamp": stamp(local_4am)}  # fmt: skip


def spo2_of(day: date, average: float | None) -> dict:
    body = {**documented("oura", "daily_spo2"), "id": f"spo2-{day}", "day": day.isoformat()}
    body["spo2_percentage"] = None if average is None else {"average": average}
    return body


def test_a_source_by_the_protocol_that_enumerates_nobody(api, store) -> None:
    source = source_for(api, store)
    assert isinstance(source, HealthSource)
    assert source.discover_users() == [] and source.supported_types == APP.supported_types


def test_documented_pages_become_exact_records_with_their_context(api, oura, store) -> None:
    start = day_start(DAY) + timedelta(hours=8)
    oura.heart = heart_rows(start, 6, "awake") + heart_rows(
        start + timedelta(hours=2), 4, "workout", 120
    )
    oura.activity = [activity_of(DAY - timedelta(days=1), 5000), activity_of(DAY, 9120)]
    oura.spo2 = [spo2_of(DAY, None), spo2_of(DAY + timedelta(days=1), 96.5)]
    window = (to_us(day_start(DAY)), to_us(day_start(DAY) + timedelta(days=1)))
    result = source_for(api, store).fetch_windows(
        USER, {HR: [window], STEPS: [window], SPO2: [window]}
    )
    batch = result.batch
    heart = batch[batch["data_type"] == "heart_rate"]
    assert len(heart) == 10 and set(heart["context"]) == {"awake", "workout"}
    assert heart.loc[heart["context"] == "workout", "value"].min() == 120.0
    steps = batch[batch["data_type"] == "steps"]
    assert steps["value"].tolist() == [9120.0] and steps["duration_s"].tolist() == [86400.0]
    # The night of DAY was null (documented as nullable): nothing. The day after is stamped at
    # its local midnight in Berlin, which is still DAY in UTC: inside the window.
    spo2 = batch[batch["data_type"] == "spo2"]
    midnight = datetime.combine(DAY + timedelta(days=1), datetime.min.time(), tzinfo=USER.zone)
    assert spo2["value"].tolist() == [96.5] and spo2["ts"].tolist() == [midnight]
    assert set(result.covered) == {"heart_rate", "steps", "spo2"}
    assert [c.query.get("next_token") for c in api.calls_to(HEARTRATE)] == [None, "page-2"]


def test_a_nights_hrv_samples_become_rmssd_readings_at_their_own_times(api, oura, store) -> None:
    """A sleep's `hrv` SampleModel: every non-null 5-minute item is an hrv_rmssd reading at
    timestamp + i x interval with its own offset (+01:00 in Berlin's winter, +02:00 in summer),
    in ms exactly as Oura gave it; a deleted sleep gives nothing. Published under this project's
    RMSSD code, never LOINC 80404-7 (SDNN)."""
    from ohx_dagster.core.times import to_us as micros
    from ohx_dagster.fhir.measurements import measurement_observation

    bedtime = datetime.combine(DAY, datetime.min.time(), tzinfo=USER.zone) + timedelta(hours=1)
    night = {**documented("oura", "sleep"), "id": "night-1", "day": DAY.isoformat(),
             "bedtime_start": stamp(bedtime), "bedtime_end": stamp(bedtime + timedelta(hours=6)),
             "hrv": {"interval": 300.0, "items": [45.0, None, 51.5, 38.0],
                     "timestamp": stamp(bedtime)}}  # fmt: skip
    gone = {**night, "id": "night-2", "type": "deleted",
            "hrv": {**night["hrv"], "items": [99.0]}}  # fmt: skip
    oura.sleep = [night, gone]
    window = (to_us(day_start(DAY) - timedelta(hours=2)), to_us(day_start(DAY) + timedelta(days=1)))
    result = source_for(api, store).fetch_windows(USER, {HRV: [window]})
    hrv = result.batch[result.batch["data_type"] == "hrv_rmssd"]
    expected_at = [bedtime, bedtime + timedelta(minutes=10), bedtime + timedelta(minutes=15)]
    assert hrv["ts"].tolist() == expected_at
    assert hrv["value"].tolist() == [45.0, 51.5, 38.0] and set(hrv["unit"]) == {"ms"}
    offset = int(bedtime.utcoffset().total_seconds() // 60)
    assert set(hrv["utc_offset_min"]) == {offset}
    row = hrv.iloc[0].to_dict() | {"ts_us": micros(hrv["ts"].iloc[0]), "diastolic": None}
    coding = measurement_observation(row, USER)["code"]["coding"]
    assert coding[0]["system"] == "urn:ohx:fhir:heart-rate-variability"
    assert all(c["code"] != "80404-7" for c in coding)


def test_a_sleep_period_is_one_night_with_its_stages_as_oura_counted_them(api, oura, store) -> None:
    """The documented sleep period (7 h in bed, 380 min asleep: 80 deep, 200 light, 100 REM, its
    hypnograms agreeing) is one sleep record stamped at `bedtime_end` with its offset, lasting from
    `bedtime_start`, its stages laid from the 30-second hypnogram; published with the durations
    Oura reported and the waking between sleeps. A deleted period gives nothing."""
    from ohx_dagster.core.times import to_us as micros
    from ohx_dagster.fhir.sleep import sleep_observation

    given = documented("oura", "sleep")
    shift = datetime.combine(DAY, datetime.min.time(), tzinfo=USER.zone) - datetime.fromisoformat(
        given["bedtime_end"]
    ).replace(hour=0)
    start = datetime.fromisoformat(given["bedtime_start"]) + shift
    end = datetime.fromisoformat(given["bedtime_end"]) + shift
    night = {**given, "day": DAY.isoformat(), "bedtime_start": stamp(start),
             "bedtime_end": stamp(end)}  # fmt: skip
    nap = {**night, "id": "nap-1", "type": "late_nap", "sleep_phase_30_sec": None,
           "bedtime_start": stamp(end + timedelta(hours=9)), "total_sleep_duration": 1500,
           "bedtime_end": stamp(end + timedelta(hours=9, minutes=30)),
           "sleep_phase_5_min": "422222"}  # fmt: skip
    gone = {**night, "id": "night-2", "type": "deleted"}
    oura.sleep = [night, nap, gone]
    window = (to_us(day_start(DAY) - timedelta(hours=2)), to_us(day_start(DAY) + timedelta(days=1)))
    result = source_for(api, store).fetch_windows(USER, {HealthDataType.SLEEP: [window]})
    nights = result.batch[result.batch["data_type"] == "sleep"].reset_index(drop=True)
    assert nights["ts"].tolist() == [end, end + timedelta(hours=9, minutes=30)]
    assert nights["duration_s"].tolist() == [25_200.0, 1_800.0]
    assert nights["value"].tolist() == [380.0, 25.0] and set(nights["unit"]) == {"min"}
    assert nights["context"].tolist() == ["long_sleep", "late_nap"]
    assert set(nights["utc_offset_min"]) == {int(end.utcoffset().total_seconds() // 60)}
    row = nights.iloc[0].to_dict() | {"ts_us": micros(nights["ts"].iloc[0])}
    resource = sleep_observation(row, USER)
    assert resource["effectivePeriod"] == {"start": stamp(start), "end": stamp(end)}
    assert resource["valueQuantity"]["value"] == given["total_sleep_duration"] / 60
    components = {c["code"]["coding"][0]["code"]: c for c in resource["component"]}
    assert components["93831-6"]["valueQuantity"]["value"] == night["deep_sleep_duration"] / 60
    assert components["93830-8"]["valueQuantity"]["value"] == night["light_sleep_duration"] / 60
    assert components["93829-0"]["valueQuantity"]["value"] == night["rem_sleep_duration"] / 60
    # Awake 40 min in all (`awake_time`): 10 before sleeping, 20 after the last waking, 10 between.
    assert components["wakeAfterSleepOnset"]["valueQuantity"]["value"] == 10
    assert components["numberOfAwakenings"]["valueInteger"] == 2
    nap_stages = nights["samples"].iloc[1]
    assert nap_stages == [0.0, 300.0, 4.0, 300.0, 1800.0, 2.0]  # the 5-minute hypnogram's runs


def test_a_hypnogram_longer_than_its_period_fails_the_type_in_one_line(api, oura, store) -> None:
    night = {**documented("oura", "sleep"), "day": DAY.isoformat(),
             "bedtime_start": stamp(day_start(DAY) + timedelta(hours=1)),
             "bedtime_end": stamp(day_start(DAY) + timedelta(hours=2))}  # fmt: skip
    oura.sleep = [night]
    window = (to_us(day_start(DAY)), to_us(day_start(DAY) + timedelta(days=1)))
    result = source_for(api, store).fetch_windows(USER, {HealthDataType.SLEEP: [window]})
    message = result.failed["sleep"]
    assert "sleep_phase_30_sec" in message and "840 steps" in message and "\n" not in message
    assert result.batch.empty


def test_a_workout_is_one_workout_with_its_calories_and_distance_as_oura_gave_them(
    api, oura, store
) -> None:
    """The documented workout (cycling, 45 minutes, 300.5 kcal, 12 km) is one workout stamped at
    `end_datetime` with its offset; a manual one (`source` "manual") without calories or
    distance is marked manual and reports neither; published as the Physical Activity IG's panel
    with the values Oura gave."""
    from ohx_dagster.core.times import to_us as micros
    from ohx_dagster.fhir.workouts import workout_resources

    given = documented("oura", "workout")
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=USER.zone) + timedelta(hours=18)
    ride = {**given, "day": DAY.isoformat(), "start_datetime": stamp(start),
            "end_datetime": stamp(start + timedelta(minutes=45))}  # fmt: skip
    walk = {**ride, "id": "walk-1", "activity": "walking", "source": "manual", "calories": None,
            "distance": None, "start_datetime": stamp(start + timedelta(hours=2)),
            "end_datetime": stamp(start + timedelta(hours=2, minutes=20))}  # fmt: skip
    oura.workouts = [ride, walk]
    window = (to_us(day_start(DAY)), to_us(day_start(DAY) + timedelta(days=1)))
    result = source_for(api, store).fetch_windows(USER, {HealthDataType.WORKOUT: [window]})
    found = result.batch.reset_index(drop=True)
    assert found["ts"].tolist() == [
        start + timedelta(minutes=45),
        start + timedelta(hours=2, minutes=20),
    ]
    assert found["value"].tolist() == [45.0, 20.0] and set(found["unit"]) == {"min"}
    assert found["context"].tolist() == ["cycling", "walking"]
    assert found["method"].tolist() == ["device", "manual"]
    row = found.iloc[0].to_dict() | {"ts_us": micros(found["ts"].iloc[0])}
    panel, *members = workout_resources(row, USER)
    assert panel["effectivePeriod"]["end"] == stamp(start + timedelta(minutes=45))
    values = {
        m["code"]["coding"][0]["code"]: m.get("valueQuantity") or m["valueCodeableConcept"]
        for m in members
    }
    assert values["73985-4"] == {"text": given["activity"]}
    assert values["55424-6"]["value"] == given["calories"] and values["55424-6"]["code"] == "kcal"
    assert values["distance"]["value"] == given["distance"] and values["distance"]["code"] == "m"
    assert "55425-3" not in values  # Oura gives no heart rate of a workout
    walked = found.iloc[1].to_dict() | {"ts_us": micros(found["ts"].iloc[1])}
    _, *walk_members = workout_resources(walked, USER)
    assert [m["code"]["coding"][0]["code"] for m in walk_members] == ["73985-4", "55411-3"]
    assert all(m["method"]["text"] == "entered by hand" for m in walk_members)


def test_a_refused_type_is_recorded_and_the_others_sync(api, oura, store) -> None:
    oura.refuse.add("daily_spo2")
    oura.heart = heart_rows(day_start(DAY) + timedelta(hours=8), 3, "awake")
    report = sync_partition(source_for(api, store), store, DAY, strategy="incremental", now=NOW)
    assert "Missing required scopes" in report.refused["oura-u1"]["spo2"]
    assert report.records_by_type["heart_rate"] == 3
    assert store.refused_types(USER) == {"spo2": report.refused["oura-u1"]["spo2"]}
    assert "spo2" not in store.coverage("oura") and (
        "oura-u1",
        "heart_rate",
    ) in store.coverage("oura")


def test_a_rate_limit_defers_the_person_with_the_providers_wait(api, store) -> None:
    api.on(HEARTRATE, lambda call: answer(429, None, Retry_After="30"))
    with pytest.raises(SyncFailed) as failed:
        sync_partition(source_for(api, store), store, DAY, strategy="incremental", now=NOW)
    assert failed.value.report.deferred == ["oura-u1"]
    assert failed.value.report.retry_after_s == 30.0
    assert store.coverage("oura") == {}
    # The whole application now waits: the next call is not even sent.
    calls = len(api.calls)
    with pytest.raises(RateLimited):
        source_for(api, store).fetch_windows(USER, {HR: [(to_us(NOW) - 1, to_us(NOW))]})
    assert len(api.calls) == calls


def test_a_sleep_notification_reads_the_whole_night(api, oura, store) -> None:
    """Oura sends `sleep` and `daily_activity` notifications about 30 s after the ring syncs:
    the run reads the night's 96 heart-rate samples, the day's steps and the SpO2, whatever a
    15-minute window would have missed."""
    night = datetime.combine(NOW.date(), datetime.min.time(), tzinfo=UTC) - timedelta(hours=2)
    oura.heart = heart_rows(night, 96, "sleep")
    morning = NOW.date()
    oura.activity = [activity_of(morning, 1200)]
    oura.spo2 = [spo2_of(morning, 97.0)]
    sleep = {**documented("oura", "sleep"), "id": "night-1", "day": morning.isoformat(),
             "bedtime_start": stamp(night),
             "bedtime_end": stamp(night + timedelta(hours=8))}  # fmt: skip
    oura.document("sleep", sleep)
    oura.document("daily_activity", activity_of(morning, 1200) | {"id": "act-today"})
    received = NOW
    events = [
        Event(None, received, received, {**documented("oura", "notification"), "data_type": "sleep",
              "object_id": "night-1", "user_id": USER.user_id}),
        Event("steps", received, received, {**documented("oura", "notification"),
              "data_type": "daily_activity", "object_id": "act-today", "user_id": USER.user_id}),
    ]  # fmt: skip
    store.commit("oura", USER.user_id, USER.zone, store.read_records("oura", utc_day(DAY)),
                 covered={t.value: [(to_us(NOW - timedelta(days=40)), to_us(NOW))]
                          for t in (HR, STEPS, SPO2)})  # fmt: skip
    report = sync_partition(
        source_for(api, store), store, NOW.date(), strategy="push",
        events={USER.user_id: events}, now=NOW,
    )  # fmt: skip
    assert report.records_by_type["heart_rate"] == 96
    assert report.records_by_type["steps"] == 1 and report.records_by_type["spo2"] == 1
    stored = store.read_records("oura", utc_day(night.date()))
    assert (stored["context"] == "sleep").sum() == len(stored[stored["data_type"] == "heart_rate"])
    assert (night - timedelta(days=0)).date() in report.days_changed


def test_a_deletion_is_read_again_and_the_deleted_data_goes(api, oura, store) -> None:
    workout_start = day_start(DAY) + timedelta(hours=17)
    oura.heart = heart_rows(workout_start, 9, "workout", 130)
    sync_partition(source_for(api, store), store, DAY, strategy="partition", now=NOW)
    assert len(store.read_records("oura", utc_day(DAY))) == 9
    oura.heart = oura.heart[:3]  # the person deleted the workout's last samples
    event = Event("heart_rate", NOW, NOW, {**documented("oura", "notification"),
                  "event_type": "delete", "data_type": "workout", "object_id": "gone",
                  "user_id": USER.user_id})  # fmt: skip
    report = sync_partition(
        source_for(api, store), store, NOW.date(), strategy="push",
        events={USER.user_id: [event]}, now=NOW,
    )  # fmt: skip
    assert len(store.read_records("oura", utc_day(DAY))) == 3
    assert DAY in report.days_changed


def test_a_workout_notification_reads_its_heart_rate_and_fhir_keeps_it(
    api, oura, store, tmp_path
) -> None:
    start = day_start(DAY) + timedelta(hours=18)
    oura.heart = heart_rows(start, 9, "workout", 130)
    workout = {**documented("oura", "workout"), "id": "w-1", "day": DAY.isoformat(),
               "start_datetime": stamp(start),
               "end_datetime": stamp(start + timedelta(minutes=45))}  # fmt: skip
    oura.document("workout", workout)
    event = Event("heart_rate", NOW, NOW, {**documented("oura", "notification"),
                  "data_type": "workout", "object_id": "w-1", "user_id": USER.user_id})  # fmt: skip
    windows = source_for(api, store).event_windows(USER, [event], NOW)
    assert windows == {HR: [(to_us(start), to_us(start + timedelta(minutes=45)) + 1)]}
    sync_partition(source_for(api, store), store, DAY, strategy="push",
                   events={USER.user_id: [event]}, now=NOW)  # fmt: skip
    output = FhirOutput(str(tmp_path / "fhir"))
    publish_partition(store, output, provider="oura", key="oura", shard=Shard("oura"), day=DAY,
                      scope=None, now=NOW, horizon=APP.resync_horizon)  # fmt: skip
    resources = list(output.listed_resources(partition_dir(DAY, "oura")))
    series = [r for r in resources if "valueSampledData" in r]
    values = [float(v) for r in series for v in r["valueSampledData"]["data"].split()]
    assert sorted(values) == sorted(float(r["bpm"]) for r in oura.heart)


def test_the_connect_flow_finds_the_person_by_personal_info(api, store) -> None:
    api.on(
        "/v2/usercollection/personal_info",
        lambda call: answer(200, documented("oura", "personal_info")),
    )
    from ohx_dagster.providers.api.http import ApiClient

    client = ApiClient("oura", api.base_url, backoff_s=0.0)
    assert APP.find_user_id(client, {}, "fresh-token") == "oura-u1"
    assert api.calls[-1].bearer == "fresh-token"


def test_the_documented_notification_parses(api) -> None:
    from ohx_dagster.providers.oura.webhook import parse_notification

    [event] = parse_notification(
        orjson.dumps(documented("oura", "notification")), delivery_timestamp="1"
    )
    assert (event.user_id, event.data_type, event.ignored_reason) == ("user123", None, None)
    assert event.occurred_at == datetime(2023, 1, 1, 8, 0, tzinfo=UTC)
