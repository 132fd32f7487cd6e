"""The Withings source, receiver and runs against a local server answering only Withings'
documented shapes (ohx_dagster/providers/withings/fixtures, SOURCE.md): measure getmeas (pages,
attrib, lastupdate), Heart v2 list + get (ECG), intraday activity (24 h a call), sleep summaries
and workouts (captured answers), the status codes inside HTTP 200, and notifications through the
real receiver into real sync and publish runs, with the values that land in FHIR."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
from provider_api_server import Call, FakeApi, answer, documented

from ohx_dagster.config.receiver import ReceiverLimits, WebhookSecrets
from ohx_dagster.core.errors import ProviderError, RateLimited
from ohx_dagster.core.models import AggregationLevel, DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.validation import validate_resources
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, TokenStore, connect_user
from ohx_dagster.providers.base import Event, HealthSource
from ohx_dagster.providers.withings import APP, HEART, MEASURE, MEASURE_V2, WithingsSource
from ohx_dagster.providers.withings.codes import UNLINKED, attrib_method
from ohx_dagster.providers.withings.source import SLEEP_V2, measure_value, notified_window
from ohx_dagster.publish.partitions import partition_dir, publish_partition
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import DISCONNECTED, RecordStore
from ohx_dagster.sync.fetch import SyncFailed, fetch_person, sync_partition
from ohx_dagster.sync.inbox import Inbox
from ohx_dagster.sync.shards import Shard

NAME = "withings"
HR, STEPS, ECG = HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.ECG
WEIGHT, BP = HealthDataType.WEIGHT, HealthDataType.BLOOD_PRESSURE
SLEEP, WORKOUT = HealthDataType.SLEEP, HealthDataType.WORKOUT
NOTIFICATION = documented(NAME, "notification")  # Withings' own example: 34 h of appli 1
USER_ID = NOTIFICATION["userid"]
OTHER_ID = "67890"
NOW = datetime(2018, 7, 4, 12, 0, tzinfo=UTC)  # after the notification's range
DAY = date(2018, 7, 3)
TOKEN = "withings-callback-token"
FORM = {"content-type": "application/x-www-form-urlencoded"}
DEVICE = documented(NAME, "getmeas")["body"]["measuregrps"][0]["deviceid"]


def config(user_id: str = USER_ID) -> HealthSyncConfig:
    # Individual measurements: every weight is its own Observation.
    return HealthSyncConfig(
        user_id=user_id,
        provider=NAME,
        timezone="Europe/Paris",
        aggregation=AggregationLevel.INDIVIDUAL,
    )


def seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def group(
    grpid: int,
    when: datetime,
    measures: list[tuple[int, int, int]],
    *,
    template: str = "device",
    attrib: int | None = 0,
    modified: int | None = None,
) -> dict[str, Any]:
    """A measuregrp: the spec's example group (device) or the captured manual entry, with a
    test's grpid, date and measures (meastype, value, unit)."""
    if template == "device":
        base = documented(NAME, "getmeas")["body"]["measuregrps"][0]
    else:
        base = documented(NAME, f"measuregrp_{template}")
    measure = base["measures"][0]
    built = {
        **base,
        "grpid": grpid,
        "date": seconds(when),
        "created": seconds(when) + 60,
        "modified": seconds(when) + 60 if modified is None else modified,
        "measures": [{**measure, "type": t, "value": v, "unit": u} for t, v, u in measures],
    }
    if attrib is not None:
        built["attrib"] = attrib
    return built


class FakeWithings:
    """Withings' API answering documented shapes from what a test says the person has."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.groups: list[dict] = []
        self.recordings: list[tuple[dict, list[int], int]] = []  # list item, signal, rate
        self.intraday: dict[int, dict[str, int]] = {}  # epoch s -> fields
        self.nights: list[dict] = []  # getsummary items
        self.workouts: list[dict] = []  # getworkouts items
        self.server_time = seconds(NOW)
        self.page_size = 100
        self.tokens = {"at-1"}
        self.errors: dict[str, dict] = {}  # endpoint path -> a documented error body
        api.on(MEASURE, self._getmeas)
        api.on(HEART, self._heart)
        api.on(MEASURE_V2, self._measure_v2)
        api.on(SLEEP_V2, self._sleep)

    def _refused(self, call: Call) -> tuple | None:
        if call.bearer not in self.tokens:
            return answer(200, documented(NAME, "invalid_token"))
        if call.path in self.errors:
            return answer(200, self.errors[call.path])
        return None

    def _getmeas(self, call: Call) -> tuple:
        refused = self._refused(call)
        if refused:
            return refused
        form = call.form
        assert (form["action"], form["category"]) == ("getmeas", "1")
        types = {int(t) for t in form["meastypes"].split(",")}
        if "lastupdate" in form:
            assert "startdate" not in form and "enddate" not in form
            chosen = [g for g in self.groups if g["modified"] > int(form["lastupdate"])]
        else:
            start, end = int(form["startdate"]), int(form["enddate"])
            chosen = [g for g in self.groups if start <= g["date"] <= end]
        chosen = [
            {**g, "measures": [m for m in g["measures"] if m["type"] in types]} for g in chosen
        ]
        chosen = [g for g in chosen if g["measures"]]
        offset = int(form.get("offset", 0))
        page = chosen[offset : offset + self.page_size]
        more = offset + self.page_size < len(chosen)
        body = documented(NAME, "getmeas")
        body["body"].update(
            updatetime=self.server_time,
            measuregrps=page,
            more=int(more),
            offset=offset + len(page) if more else 0,
        )
        return answer(200, body)

    def record_ecg(self, when: datetime, signal: list[int], rate: int, signalid: int) -> None:
        item = documented(NAME, "heart_list")["body"]["series"][0]
        item.update(
            timestamp=seconds(when), modified=seconds(when), ecg={"signalid": signalid, "afib": 0}
        )
        self.recordings.append((item, signal, rate))

    def _heart(self, call: Call) -> tuple:
        refused = self._refused(call)
        if refused:
            return refused
        form = call.form
        if form["action"] == "list":
            start, end = int(form["startdate"]), int(form["enddate"])
            body = documented(NAME, "heart_list")
            series = [item for item, _, _ in self.recordings if start <= item["timestamp"] <= end]
            body["body"].update(series=series, more=False, offset=0)
            return answer(200, body)
        assert form["action"] == "get"
        for item, signal, rate in self.recordings:
            if str(item["ecg"]["signalid"]) == form["signalid"]:
                body = documented(NAME, "heart_get")
                body["body"].update(signal=signal, sampling_frequency=rate)
                return answer(200, body)
        return answer(200, {"status": 503, "body": {}, "error": "Invalid Params: signalid"})

    def _by_dates(self, call: Call, items: list[dict], fixture: str) -> tuple:
        """The items whose `date` is in startdateymd..enddateymd, paged (`more` a boolean),
        with the fields asked for."""
        form = call.form
        first, last = (
            date.fromisoformat(form["startdateymd"]),
            date.fromisoformat(form["enddateymd"]),
        )
        fields = set(form["data_fields"].split(","))
        chosen = [
            {**item, "data": {k: v for k, v in item["data"].items() if k in fields}}
            for item in items
            if first <= date.fromisoformat(item["date"]) <= last
        ]
        offset = int(form.get("offset", 0))
        page = chosen[offset : offset + self.page_size]
        more = offset + self.page_size < len(chosen)
        body = documented(NAME, fixture)
        body["body"].update(series=page, more=more, offset=offset + len(page) if more else 0)
        return answer(200, body)

    def _sleep(self, call: Call) -> tuple:
        refused = self._refused(call)
        if refused:
            return refused
        assert call.form["action"] == "getsummary" and "lastupdate" not in call.form
        return self._by_dates(call, self.nights, "sleep_summary")

    def _measure_v2(self, call: Call) -> tuple:
        refused = self._refused(call)
        if refused:
            return refused
        if call.form["action"] == "getworkouts":
            return self._by_dates(call, self.workouts, "workouts")
        return self._intraday(call)

    def _intraday(self, call: Call) -> tuple:
        form = call.form
        assert form["action"] == "getintradayactivity"
        start, end = int(form["startdate"]), int(form["enddate"])
        end = min(end, start + 86_400)  # "only the first 24h after startdate will be returned"
        fields = set(form["data_fields"].split(","))
        template = documented(NAME, "intraday")
        (item,) = template["body"]["series"].values()
        series = {}
        for stamp, values in sorted(self.intraday.items()):
            chosen = {k: v for k, v in values.items() if k in fields}
            if start <= stamp <= end and chosen:
                series[str(stamp)] = {
                    k: item[k] for k in ("deviceid", "model", "model_id")
                } | chosen
        template["body"]["series"] = series
        return answer(200, template)


@pytest.fixture
def withings(api: FakeApi) -> FakeWithings:
    return FakeWithings(api)


def connect(store: RecordStore, user_id: str = USER_ID) -> None:
    grant = OAuthTokens("at-1", "rt-1", NOW + timedelta(hours=3), "user.metrics,user.activity")
    connect_user(store, NAME, user_id, grant, config(user_id))


@pytest.fixture
def people(store: RecordStore, token_key: str) -> RecordStore:
    """The store (SQLite and PostgreSQL) with the notification's person connected."""
    connect(store)
    return store


@pytest.fixture
def person(sqlite_store: RecordStore, token_key: str) -> RecordStore:
    connect(sqlite_store)
    return sqlite_store


def source_for(api: FakeApi, store: RecordStore) -> WithingsSource:
    oauth = OAuthClient(
        NAME, f"{api.base_url}/v2/oauth2", "cid", "cs", {"action": "requesttoken"}, True
    )
    return WithingsSource(
        store, ApiSettings(NAME, api.base_url, oauth), backoff_s=0.0, clock=lambda: NOW
    )


@pytest.fixture
def receiver(store: RecordStore) -> Iterator[str]:
    """The real receiver with /webhooks/withings mounted."""
    app = create_app(
        store, WebhookSecrets(withings_token=TOKEN), limits=ReceiverLimits(rate_per_minute=0)
    )
    with serve_in_thread(app) as url:
        yield url


def notify(url: str, form: dict[str, str]) -> httpx.Response:
    body = urlencode(form).encode()
    return httpx.post(
        f"{url}/webhooks/withings?token={TOKEN}", content=body, headers=FORM, timeout=10
    )


def pending_events(store: RecordStore) -> dict[str, list[Event]]:
    """The inbox's pending events as the push run reads them (assets/health.py)."""
    found: dict[str, list[Event]] = {}
    for e in Inbox(store).after(0, 100):
        found.setdefault(e.user_id, []).append(
            Event(e.data_type, e.occurred_at, e.received_at, e.payload)
        )
    return found


def push(api: FakeApi, store: RecordStore, day: date):
    events = pending_events(store)
    return sync_partition(
        source_for(api, store), store, day, strategy="push", events=events, now=NOW
    )


def published(store: RecordStore, tmp_path, day: date, **options: Any) -> list[dict]:
    """The resources the day's partition publishes (NOW: inside Withings' horizon)."""
    output = FhirOutput(str(tmp_path / "fhir"))
    report = publish_partition(store, output, provider=NAME, key=NAME, shard=Shard(NAME), day=day,
                               scope=None, now=NOW, horizon=APP.resync_horizon,
                               validate=validate_resources, **options)  # fmt: skip
    assert report.invalid_buckets == {}
    return list(output.listed_resources(partition_dir(day, NAME)))


def weights(resources: list[dict]) -> dict[str, tuple]:
    """effectiveDateTime -> (kg, status[, method text]) of the weight Observations."""
    return {
        r["effectiveDateTime"]: (r["valueQuantity"]["value"], r["status"])
        + ((r["method"]["text"],) if "method" in r else ())
        for r in resources
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "29463-7"
    }


def stored(store: RecordStore, kind: HealthDataType, start: datetime, end: datetime):
    rows = store.read_records(NAME, DateRange(start, end), data_types=[kind.value])
    return rows.sort_values("ts").reset_index(drop=True)


# -- documented values -----------------------------------------------------------------------------


def test_value_times_ten_to_the_unit() -> None:
    assert measure_value({"value": 65750, "unit": -3}, "w") == 65.75
    assert measure_value({"value": 3685, "unit": -2}, "w") == 36.85
    assert measure_value({"value": 12, "unit": 1}, "w") == 120.0
    with pytest.raises(
        ProviderError, match=r"field 'unit' is 0\.5: expected an integer power of ten"
    ):
        measure_value({"value": 12, "unit": 0.5}, "w")


def test_every_documented_attrib_has_a_method() -> None:
    documented_attribs = {0: "device", 1: "ambiguous", 2: "manual", 4: "manual", 5: "device",
                          7: "device", 8: "device", 15: "device"}  # fmt: skip
    for attrib, method in documented_attribs.items():
        assert attrib_method({"attrib": attrib, "deviceid": DEVICE}, "w") == method
    # The shapes as published: the spec's example group is a shared scale's (attrib 1); the
    # captured manual entry has no device; attrib 17 is undocumented but seen on a BPM Connect.
    assert attrib_method(documented(NAME, "getmeas")["body"]["measuregrps"][0], "w") == "ambiguous"
    assert attrib_method(documented(NAME, "measuregrp_manual"), "w") == "manual"
    assert attrib_method(documented(NAME, "measuregrp_attrib17"), "w") == "device"
    assert attrib_method({**documented(NAME, "measuregrp_manual"), "attrib": 99}, "w") == "manual"
    with pytest.raises(ProviderError, match="field 'attrib' is 'x': expected an integer"):
        attrib_method({"attrib": "x"}, "w")


def test_the_app_asks_for_the_scopes_its_endpoints_need() -> None:
    assert APP.authorize.scopes == ("user.metrics", "user.activity")
    assert APP.authorize.scope_separator == ","
    assert {HR, STEPS, ECG, WEIGHT, BP} <= APP.supported_types


# -- one run: every endpoint once, values as documented --------------------------------------------


@pytest.fixture
def full_day(withings: FakeWithings) -> FakeWithings:
    """One person's day at Withings: a scale, a shared scale, a manual entry, a cuff (also in
    the BPM Core's ECG list item), an oximeter, a thermometer, a watch."""
    withings.page_size = 3  # the seven groups come in three pages
    withings.groups = [
        group(1, at(DAY, 6, 30), [(1, 80150, -3)]),  # the person's own weigh-in
        group(2, at(DAY, 6, 40), [(1, 65750, -3)], attrib=None),  # the spec's shared-scale group
        group(3, at(DAY, 7), [(1, 80000, -3)], template="manual", attrib=None),  # typed in
        group(4, at(DAY, 8), [(9, 80, 0), (10, 120, 0), (11, 64, 0)]),
        group(5, at(DAY, 9), [(54, 97, 0)]),
        group(6, at(DAY, 10), [(71, 3685, -2)]),
        group(7, at(DAY + timedelta(days=1), 0), [(1, 79000, -3)]),  # the window's end: not in it
    ]
    ecg_at = at(DAY, 12)
    withings.record_ecg(ecg_at, [(i * 37) % 400 - 200 for i in range(1000)], 500, 48)
    for minute in range(-30, 31):  # a watch's heart rate and steps each minute around the ECG
        moment = ecg_at + timedelta(minutes=minute)
        fields = {"heart_rate": 70 + minute % 5, "steps": 10 + minute % 3, "duration": 60}
        withings.intraday[seconds(moment)] = fields
    return withings


def test_a_run_asks_each_endpoint_once_and_stores_the_documented_values(
    api: FakeApi, full_day: FakeWithings, person: RecordStore
) -> None:
    source = source_for(api, person)
    assert isinstance(source, HealthSource) and source.discover_users() == []
    report = sync_partition(source, person, DAY, strategy="partition", now=NOW)
    assert report.users_synced == [USER_ID] and report.failures == {}
    assert report.records_by_type == {"weight": 3, "blood_pressure": 1, "heart_rate": 62, "spo2": 1,
                                      "temperature": 1, "ecg": 1, "steps": 61}  # fmt: skip
    day_start, day_end = at(DAY, 0), at(DAY, 0) + timedelta(days=1)
    # The partition's goal: the UTC day and the person's local day (Europe/Paris, UTC+2 in July,
    # from 22:00Z the day before), which the partition publishes.
    local_start = day_start - timedelta(hours=2)
    getmeas = api.calls_to(MEASURE)
    assert [c.form.get("offset") for c in getmeas] == [None, "3", "6"]  # one call, three pages
    assert getmeas[0].form == {
        "action": "getmeas",
        "meastypes": "1,9,10,11,54,71",
        "category": "1",
        "startdate": str(seconds(local_start)),
        "enddate": str(seconds(day_end)),
    }
    assert getmeas[0].bearer == "at-1"
    heart = api.calls_to(HEART)
    assert [c.form["action"] for c in heart] == ["list", "get"] and heart[1].form[
        "signalid"
    ] == "48"
    # 26 h in Withings' 24 h pieces.
    intraday = [c for c in api.calls_to(MEASURE_V2) if c.form["action"] == "getintradayactivity"]
    assert {c.form["data_fields"] for c in intraday} == {"steps,duration,heart_rate"}
    spans = [(int(c.form["startdate"]), int(c.form["enddate"])) for c in intraday]
    assert all(end - start <= 86_400 for start, end in spans)
    assert spans[0][0] == seconds(local_start) and spans[-1][1] == seconds(day_end)
    assert person.cursor(NAME, USER_ID, "lastupdate") == str(full_day.server_time)

    weight = stored(person, WEIGHT, day_start, day_end)
    assert weight[["value", "method", "device_id"]].values.tolist() == [
        [80.15, "device", DEVICE],
        [65.75, "ambiguous", DEVICE],
        [80.0, "manual", ""],
    ]
    assert weight["utc_offset_min"].tolist() == [120, 120, 120]  # the body's Europe/Paris
    pressure = stored(person, BP, day_start, day_end)
    assert pressure[["value", "diastolic"]].values.tolist() == [
        [120.0, 80.0]
    ]  # not the ECG's 101/100
    steps = stored(person, STEPS, day_start, day_end)
    assert (
        steps["duration_s"].unique().tolist() == [60.0] and steps["value"].iloc[0] == 10 + (-30) % 3
    )
    pulses = stored(person, HR, at(DAY, 8), at(DAY, 8, 1))
    assert pulses["value"].tolist() == [64.0]  # the cuff's heart pulse beside the watch's
    (ecg,) = stored(person, ECG, day_start, day_end).to_dict("records")
    assert (ecg["sampling_rate_hz"], ecg["duration_s"], ecg["unit"]) == (500.0, 2.0, "uV")
    assert list(ecg["samples"])[:3] == [-200.0, -163.0, -126.0]


def test_what_the_run_stores_lands_in_fhir(
    api: FakeApi, full_day: FakeWithings, person: RecordStore, tmp_path
) -> None:
    sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    resources = published(person, tmp_path, DAY)
    # The shared scale's weigh-in is left out unless asked for (publish_ambiguous).
    assert weights(resources) == {
        "2018-07-03T08:30:00+02:00": (80.15, "final"),
        "2018-07-03T09:00:00+02:00": (80.0, "final", "entered by hand"),
    }
    everything = published(person, tmp_path / "all", DAY, publish_ambiguous=True, force=True)
    assert weights(everything)["2018-07-03T08:40:00+02:00"] == (
        65.75, "final", "measured by a shared device; may belong to another person",
    )  # fmt: skip
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    (report,) = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    # No more final than the heart rate it links to: the day is inside Withings' 48 h horizon.
    assert report["code"]["coding"][0]["code"] == "11524-6" and report["status"] == "preliminary"
    waveform = by_ref[report["result"][0]["reference"]]["valueSampledData"]
    assert waveform["interval"] == 2 and waveform["intervalUnit"] == "ms"
    assert waveform["data"].split()[:3] == ["-200", "-163", "-126"]
    linked = [by_ref[ref["reference"]] for ref in report["result"][1:]]
    assert linked and all(r["code"]["coding"][0]["code"] == "8867-4" for r in linked)
    assert {r["status"] for r in linked} == {"preliminary"}
    assert validate_resources(resources) == []


# -- notifications through the receiver into push runs --------------------------------------------


def test_a_34_hour_notification_stores_both_weights_with_one_getmeas(
    api: FakeApi, withings: FakeWithings, people: RecordStore, receiver: str, tmp_path
) -> None:
    start, end = int(NOTIFICATION["startdate"]), int(NOTIFICATION["enddate"])
    first = datetime.fromtimestamp(start + 4_000, UTC)  # 2018-07-03
    last = datetime.fromtimestamp(end, UTC)  # exactly the range's end, 2018-07-04
    withings.groups = [group(1, first, [(1, 72100, -3)]), group(2, last, [(1, 72400, -3)])]
    answered = notify(receiver, NOTIFICATION)
    assert answered.status_code == 200 and answered.json() == {"accepted": 2, "duplicates": 0}
    report = push(api, people, last.date())
    assert report.records_by_type == {"weight": 2}
    (call,) = api.calls_to(MEASURE)  # weight and temperature (appli 1) in one getmeas
    assert call.form["meastypes"] == "1,9,10,11,54,71"
    assert (call.form["startdate"], call.form["enddate"]) == (str(start), str(end + 1))
    assert api.calls_to(MEASURE_V2) == [] and api.calls_to(HEART) == []
    assert weights(published(people, tmp_path, first.date())) == {
        "2018-07-03T03:06:40+02:00": (72.1, "final")
    }
    assert weights(published(people, tmp_path, last.date())) == {
        "2018-07-04T12:05:53+02:00": (72.4, "final")
    }


def test_a_deletion_notification_removes_the_weight(
    api: FakeApi, withings: FakeWithings, people: RecordStore, receiver: str, tmp_path
) -> None:
    end = int(NOTIFICATION["enddate"])
    kept = datetime.fromtimestamp(end - 7_200, UTC)  # 08:05:53Z, the same day
    gone = datetime.fromtimestamp(end - 60, UTC)
    withings.groups = [group(1, kept, [(1, 72100, -3)]), group(2, gone, [(1, 72400, -3)])]
    notify(receiver, NOTIFICATION)
    push(api, people, gone.date())
    assert weights(published(people, tmp_path, gone.date())) == {
        "2018-07-04T10:05:53+02:00": (72.1, "final"),
        "2018-07-04T12:04:53+02:00": (72.4, "final"),
    }
    Inbox(people).mark_dispatched([e.id for e in Inbox(people).after(0, 100)], "run-1")

    withings.groups = withings.groups[:1]  # the person deleted the second weigh-in
    deleted = notify(receiver, {**NOTIFICATION, "action": "delete"})
    assert deleted.json() == {"accepted": 2, "duplicates": 0}  # not a retry of the first
    report = push(api, people, gone.date())
    assert gone.date() in report.days_changed
    assert stored(people, WEIGHT, kept, NOW)["value"].tolist() == [72.1]
    assert weights(published(people, tmp_path, gone.date())) == {
        "2018-07-04T10:05:53+02:00": (72.1, "final"),
        "2018-07-04T12:04:53+02:00": (72.4, "entered-in-error"),
    }


def test_unlink_disconnects_the_person_and_no_run_calls_withings(
    api: FakeApi, withings: FakeWithings, people: RecordStore, receiver: str
) -> None:
    answered = notify(receiver, documented(NAME, "notification_unlink"))
    assert answered.status_code == 200 and answered.json() == {"accepted": 1, "duplicates": 0}
    person = people.person(NAME, USER_ID)
    assert person is not None and not person.connected
    assert (person.state, person.state_reason) == (DISCONNECTED, UNLINKED["unlink"])
    assert Inbox(people).counts() == {"pending": 0, "dispatched": 0, "ignored": 1}
    report = sync_partition(source_for(api, people), people, DAY, strategy="partition", now=NOW)
    assert report.users_skipped == {USER_ID: "disconnected"} and api.calls == []


# -- lastupdate ------------------------------------------------------------------------------------


def test_lastupdate_picks_up_a_late_upload_for_another_day(
    api: FakeApi, withings: FakeWithings, people: RecordStore, tmp_path
) -> None:
    withings.groups = [group(1, at(DAY, 7), [(1, 80150, -3)])]
    first_time = withings.server_time
    sync_partition(source_for(api, people), people, DAY, strategy="partition", now=NOW)
    assert len(api.calls_to(MEASURE)) == 1  # no cursor yet: no lastupdate call
    assert people.cursor(NAME, USER_ID, "lastupdate") == str(first_time)

    earlier = DAY - timedelta(days=3)
    withings.groups.append(group(2, at(earlier, 18), [(1, 79900, -3)], modified=first_time + 600))
    withings.groups.append(group(3, at(earlier, 19), [(1, 79800, -3)], modified=first_time - 600))
    withings.server_time = first_time + 3_600
    report = sync_partition(source_for(api, people), people, DAY, strategy="partition", now=NOW)

    window, since = api.calls_to(MEASURE)[1:]
    assert "startdate" in window.form and since.form["lastupdate"] == str(first_time)
    assert "startdate" not in since.form and since.form["meastypes"] == window.form["meastypes"]
    assert earlier in report.days_changed
    assert USER_ID in people.unpublished_days(NAME)[earlier]
    # Only the group modified after the cursor; the day claims no coverage.
    assert stored(people, WEIGHT, at(earlier, 0), at(DAY, 0))["value"].tolist() == [79.9]
    covered = people.coverage(NAME, [USER_ID])[(USER_ID, "weight")]
    assert not any(s <= to_us(at(earlier, 18)) < e for s, e in covered)
    assert people.cursor(NAME, USER_ID, "lastupdate") == str(first_time + 3_600)
    assert weights(published(people, tmp_path, earlier)) == {
        "2018-06-30T20:00:00+02:00": (79.9, "final")
    }


def test_the_heart_rate_around_an_ecg_asks_lastupdate_once(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    """An ECG at the edge of the run's window: the sync fetches the heart rate around it in a
    second fetch; that one neither repeats the lastupdate getmeas nor moves the cursor."""
    person_config = config()
    source = source_for(api, person)
    with person.write() as conn:
        person.set_cursor(conn, NAME, USER_ID, "lastupdate", "1530000000")
    ecg_at = at(DAY, 23, 59)
    withings.record_ecg(ecg_at, [5] * 600, 300, 7)
    withings.intraday[seconds(ecg_at + timedelta(seconds=30))] = {"heart_rate": 66}
    window = (to_us(at(DAY, 12)), to_us(at(DAY, 23, 59) + timedelta(seconds=10)))
    result = fetch_person(source, person_config, {ECG: [window], HR: [window], WEIGHT: [window]})
    assert sorted(result.batch["data_type"]) == ["ecg", "heart_rate"]
    forms = [c.form for c in api.calls_to(MEASURE)]
    assert [("lastupdate" in f) for f in forms] == [False, True, False]
    assert result.cursors == {"lastupdate": str(withings.server_time)}


# -- statuses inside HTTP 200 ----------------------------------------------------------------------


def test_a_rate_limit_defers_everyone_after(
    api: FakeApi, withings: FakeWithings, people: RecordStore
) -> None:
    connect(people, OTHER_ID)
    withings.errors[MEASURE] = documented(NAME, "too_many_requests")
    with pytest.raises(SyncFailed) as failed:
        sync_partition(source_for(api, people), people, DAY, strategy="partition", now=NOW)
    assert failed.value.report.deferred == [USER_ID, OTHER_ID]
    assert failed.value.report.users_synced == [] and len(api.calls) == 1
    # Withings sends no Retry-After: the shared budget waits its default before anyone calls again.
    with pytest.raises(SyncFailed) as again:
        sync_partition(source_for(api, people), people, DAY, strategy="partition", now=NOW)
    assert again.value.report.deferred == [USER_ID, OTHER_ID] and len(api.calls) == 1


def test_status_401_in_the_body_refreshes_the_token_once(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    issued = documented(NAME, "token")
    withings.tokens = {issued["body"]["access_token"]}
    withings.groups = [group(1, at(DAY, 7), [(1, 80150, -3)])]
    api.queue("/v2/oauth2", answer(200, issued))
    window = (to_us(at(DAY, 0)), to_us(at(DAY, 12)))
    result = source_for(api, person).fetch_windows(config(), {WEIGHT: [window]})
    assert result.batch["value"].tolist() == [80.15] and result.covered == {"weight": [window]}
    (refresh,) = api.calls_to("/v2/oauth2")
    assert (refresh.form["action"], refresh.form["refresh_token"]) == ("requesttoken", "rt-1")
    assert [c.bearer for c in api.calls_to(MEASURE)] == ["at-1", issued["body"]["access_token"]]
    saved = TokenStore(person).load(NAME, USER_ID)
    assert saved is not None and saved.refresh_token == issued["body"]["refresh_token"]


def test_a_scope_not_granted_refuses_only_what_needs_it(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    withings.errors[MEASURE_V2] = documented(NAME, "insufficient_scope")
    withings.groups = [group(1, at(DAY, 8), [(9, 80, 0), (10, 120, 0), (11, 64, 0)])]
    report = sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    # Intraday activity and workouts are /v2/measure's: both refused, sleep (/v2/sleep) is not.
    assert list(report.refused[USER_ID]) == ["steps", "workout"]
    assert "Insufficient_scope" in report.refused[USER_ID]["steps"]
    assert list(person.refused_types(config())) == ["steps", "workout"]
    # Heart rate stays covered by getmeas's pulses: intraday activity is not ours to read.
    assert report.records_by_type == {"blood_pressure": 1, "heart_rate": 1}
    assert person.last_synced(NAME, USER_ID, "heart_rate") is not None


def test_an_error_status_fails_its_endpoints_types_and_names_the_status(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    withings.errors[MEASURE] = {"status": 503, "body": {}, "error": "Invalid Params: meastypes"}
    withings.intraday[seconds(at(DAY, 9))] = {"steps": 12, "duration": 60}
    window = (to_us(at(DAY, 0)), to_us(at(DAY, 12)))
    result = source_for(api, person).fetch_windows(
        config(), {WEIGHT: [window], STEPS: [window], HR: [window]}
    )
    expected = "withings /measure getmeas: status 503, expected 0: Invalid Params: meastypes"
    assert result.failed == {
        "weight": f"ProviderError: {expected}",
        "heart_rate": f"ProviderError: {expected}",
    }
    assert result.covered == {"steps": [window]} and result.batch["value"].tolist() == [12.0]
    assert result.cursors == {}


def test_malformed_answers_name_the_field(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    window = (to_us(at(DAY, 0)), to_us(at(DAY, 12)))
    cases = [
        (group(1, at(DAY, 8), [(10, 120, 0)]), BP,
         r"measuregrps\[0\]: field 'measures\[type=9\]' is \[10\]"),
        ({**group(1, at(DAY, 8), [(1, 1, 0)]), "measures": [{"type": 1, "unit": -3}]}, WEIGHT,
         r"measuregrps\[0\].measures\[0\]: field 'value' is missing"),
        ({**group(1, at(DAY, 8), [(1, 1, 0)]), "date": "soon"}, WEIGHT, r"field 'date' is 'soon'"),
    ]  # fmt: skip
    for bad, kind, message in cases:
        body = documented(NAME, "getmeas")
        body["body"]["measuregrps"] = [bad]
        api.queue(MEASURE, answer(200, body))
        result = source_for(api, person).fetch_windows(config(), {kind: [window]})
        assert result.covered == {} and list(result.failed) == [kind.value]
        assert re.search(message, result.failed[kind.value]), result.failed
    api.queue(MEASURE, answer(200, {"status": 0}))
    result = source_for(api, person).fetch_windows(config(), {WEIGHT: [window]})
    assert "withings /measure getmeas: field 'body' is missing" in result.failed["weight"]
    body = documented(NAME, "getmeas")
    body["body"]["timezone"] = "Mars/Olympus"
    api.queue(MEASURE, answer(200, body))
    result = source_for(api, person).fetch_windows(config(), {WEIGHT: [window]})
    assert (
        "field 'timezone' is 'Mars/Olympus': expected an IANA time zone" in result.failed["weight"]
    )


def test_intraday_asks_at_most_24_hours_a_call(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    start = at(DAY, 6)
    for hour in range(0, 60, 6):
        withings.intraday[seconds(start + timedelta(hours=hour))] = {"steps": hour, "duration": 300}
    withings.intraday[seconds(start + timedelta(hours=61))] = {"steps": 99}  # after the window
    window = (to_us(start), to_us(start + timedelta(hours=60)))
    result = source_for(api, person).fetch_windows(config(), {STEPS: [window]})
    spans = [(int(c.form["startdate"]), int(c.form["enddate"])) for c in api.calls_to(MEASURE_V2)]
    first = seconds(start)
    assert spans == [(first, first + 86_400), (first + 86_400, first + 172_800),
                     (first + 172_800, first + 60 * 3_600)]  # fmt: skip
    assert all(c.form["data_fields"] == "steps,duration" for c in api.calls_to(MEASURE_V2))
    assert sorted(result.batch["value"]) == [float(h) for h in range(0, 60, 6)]
    assert result.covered == {"steps": [window]} and api.calls_to(MEASURE) == []


def test_an_empty_intraday_answer_and_a_list_without_ecg(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    empty = documented(NAME, "intraday")
    empty["body"]["series"] = []  # PHP's empty array
    api.queue(MEASURE_V2, answer(200, empty))
    stetho = documented(NAME, "heart_list")
    item = stetho["body"]["series"][0]
    del item["ecg"]
    item["timestamp"] = seconds(at(DAY, 9))
    api.queue(HEART, answer(200, stetho))
    window = (to_us(at(DAY, 0)), to_us(at(DAY, 12)))
    result = source_for(api, person).fetch_windows(config(), {STEPS: [window], ECG: [window]})
    assert result.batch.empty and sorted(result.covered) == ["ecg", "steps"]
    assert [c.form["action"] for c in api.calls_to(HEART)] == ["list"]


# -- event windows ---------------------------------------------------------------------------------


def test_event_windows_read_the_whole_range_again(api: FakeApi, person: RecordStore) -> None:
    source = source_for(api, person)
    start, end = int(NOTIFICATION["startdate"]), int(NOTIFICATION["enddate"])
    whole = (start * 1_000_000, (end + 1) * 1_000_000)
    events = [Event("weight", NOW, NOW, NOTIFICATION), Event("temperature", NOW, NOW, NOTIFICATION)]
    windows = source.event_windows(config(), events, NOW)
    assert windows == {WEIGHT: [whole], HealthDataType.TEMPERATURE: [whole]}
    sleep = {"userid": USER_ID, "appli": "44", "date": "2018-07-03"}
    paris_day = (
        to_us(datetime(2018, 7, 2, 22, tzinfo=UTC)),
        to_us(datetime(2018, 7, 3, 22, tzinfo=UTC)),
    )
    assert source.event_windows(config(), [Event(None, NOW, NOW, sleep)], NOW) == {
        HR: [paris_day],
        SLEEP: [paris_day],
    }
    assert notified_window({"userid": USER_ID, "appli": "46", "action": "unlink"}, config()) is None
    only_heart = HealthSyncConfig(user_id=USER_ID, provider=NAME, enabled_types=frozenset({HR}))
    assert source.event_windows(only_heart, events, NOW) == {}
    assert api.calls == []  # a notification's range is read from the notification alone


def test_rate_limit_error_is_a_rate_limit(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    withings.errors[HEART] = documented(NAME, "too_many_requests")
    window = (to_us(at(DAY, 0)), to_us(at(DAY, 12)))
    with pytest.raises(RateLimited):
        source_for(api, person).fetch_windows(config(), {ECG: [window]})


# -- nights (sleep v2 getsummary) and workouts (measure v2 getworkouts) ----------------------------


def moved(fixture: str, index: int, end: datetime) -> dict[str, Any]:
    """A captured item (sleep_summary.json, workouts.json) moved to end at `end`: its length
    and data as Withings reported them, its dates ours (`date` the local day of its end)."""
    item = documented(NAME, fixture)["body"]["series"][index]
    length = item["enddate"] - item["startdate"]
    local = end.astimezone(ZoneInfo(item["timezone"]))
    return {**item, "startdate": seconds(end) - length, "enddate": seconds(end),
            "date": local.date().isoformat()}  # fmt: skip


def observations(resources: list[dict], code: str) -> list[dict]:
    return [
        r
        for r in resources
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == code
    ]


def components(night: dict) -> dict[str, Any]:
    """LOINC or the PHR IG's code -> value of a night's components."""
    return {
        c["code"]["coding"][0]["code"]: c.get("valueQuantity", {}).get(
            "value", c.get("valueInteger")
        )
        for c in night.get("component", [])
    }


def test_a_night_is_stored_and_published_as_withings_summarised_it(
    api: FakeApi, withings: FakeWithings, person: RecordStore, tmp_path
) -> None:
    """The captured night (Sleep Analyzer, Europe/Paris): 21,720 s in bed, 18,660 s asleep, deep
    5,820, light 10,440, REM 2,400, waso 1,380, one waking. Kept by its end: the night before
    is answered (its date is asked) but ends outside the partition."""
    woke = at(DAY, 5)  # 07:00 in Paris
    withings.nights = [moved("sleep_summary", 0, woke),
                       moved("sleep_summary", 1, woke - timedelta(days=1))]  # fmt: skip
    report = sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    assert report.records_by_type.get("sleep") == 1
    (call,) = api.calls_to(SLEEP_V2)
    assert call.form["action"] == "getsummary" and call.form["data_fields"] == (
        "total_sleep_time,asleepduration,deepsleepduration,lightsleepduration,remsleepduration,"
        "waso,wakeupcount"
    )
    # The partition's local day and the UTC day, a day wider each side.
    assert (call.form["startdateymd"], call.form["enddateymd"]) == ("2018-07-02", "2018-07-05")

    (row,) = stored(person, SLEEP, at(DAY, 0) - timedelta(days=2), NOW).to_dict("records")
    captured = documented(NAME, "sleep_summary")["body"]["series"][0]
    assert row["ts"] == woke and row["duration_s"] == 21_720.0 and row["utc_offset_min"] == 120
    assert row["value"] == 18_660 / 60 and row["unit"] == "min"
    assert row["device_id"] == captured["hash_deviceid"]
    summary = list(row["samples"])
    assert summary[1:4] == [5_820.0, 10_440.0, 2_400.0] and summary[5:] == [1_380.0, 1.0]

    resources = published(person, tmp_path, DAY)
    (night,) = observations(resources, "93832-4")
    assert night["effectivePeriod"] == {
        "start": "2018-07-03T00:58:00+02:00",
        "end": "2018-07-03T07:00:00+02:00",
    }
    assert night["valueQuantity"]["value"] == 311  # 18,660 s
    assert components(night) == {"93831-6": 97, "93830-8": 174, "93829-0": 40,
                                 "wakeAfterSleepOnset": 23, "numberOfAwakenings": 1}  # fmt: skip
    assert validate_resources(resources) == []


def test_workouts_are_stored_and_published_as_withings_measured_them(
    api: FakeApi, withings: FakeWithings, person: RecordStore, tmp_path
) -> None:
    """The captured walks (a phone's tracker, Europe/Amsterdam): the first with its pause,
    energy, distance and heart rate; the second with no data; the third's heart rate 0 (not
    measured). The person's own entries stand only where the device gives nothing."""
    ended = [at(DAY, 7), at(DAY, 12), at(DAY, 17)]
    withings.workouts = [moved("workouts", i, end) for i, end in enumerate(ended)]
    withings.workouts[2]["data"] |= {"distance": 0, "manual_distance": 1_300}
    report = sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    assert report.records_by_type.get("workout") == 3
    (call,) = [c for c in api.calls_to(MEASURE_V2) if c.form["action"] == "getworkouts"]
    assert call.form["data_fields"] == (
        "calories,manual_calories,distance,manual_distance,hr_average,hr_max,pause_duration,"
        "algo_pause_duration"
    )
    rows = stored(person, WORKOUT, at(DAY, 0), NOW)
    assert rows["context"].tolist() == ["Walk"] * 3 and rows["utc_offset_min"].tolist() == [120] * 3
    assert rows["duration_s"].tolist() == [502.0, 617.0, 880.0]
    assert rows["value"].tolist() == [(502 - 80) / 60, 617 / 60, 880 / 60]  # less the pause
    measures = [[None if v != v else v for v in parts] for parts in rows["samples"]]
    assert measures == [[47.0, 680.0, 80.0, 80.0], [None] * 4, [82.0, 1_300.0, None, None]]
    assert rows["method"].tolist() == ["device"] * 3  # attrib 0

    resources = published(person, tmp_path, DAY)
    panels = observations(resources, "PAPanel")
    assert [p["effectivePeriod"]["end"] for p in panels] == [
        "2018-07-03T09:00:00+02:00", "2018-07-03T14:00:00+02:00", "2018-07-03T19:00:00+02:00",
    ]  # fmt: skip
    by_ref = {f"Observation/{r['id']}": r for r in resources}
    first = {
        by_ref[m["reference"]]["code"]["coding"][0]["code"]: by_ref[m["reference"]]
        for m in panels[0]["hasMember"]
    }
    assert first["73985-4"]["valueCodeableConcept"] == {"text": "Walk"}
    assert {code: first[code]["valueQuantity"]["value"] for code in
            ("55411-3", "55424-6", "55425-3", "55426-1")} == {
        "55411-3": 7.03, "55424-6": 47, "55425-3": 80, "55426-1": 80}  # fmt: skip
    assert len(panels[1]["hasMember"]) == 2  # the activity and its duration: nothing else told
    assert validate_resources(resources) == []


def test_a_night_from_elsewhere_an_unfinished_one_and_an_impossible_one(
    api: FakeApi, withings: FakeWithings, person: RecordStore
) -> None:
    """A night from an external source has its time asleep and no stages ("Light, Deep and Rem
    sleep durations are null in this case"); a night not `completed` is not stored yet; a
    summary with more sleep than the night fails the type in one line."""
    window = (to_us(at(DAY, 0)), to_us(at(DAY + timedelta(days=1), 0)))
    elsewhere = moved("sleep_summary", 0, at(DAY, 5))
    elsewhere["data"] = {"asleepduration": 18_000, "deepsleepduration": None}
    unfinished = {**moved("sleep_summary", 1, at(DAY, 6)), "completed": False}
    withings.nights = [elsewhere, unfinished]
    result = source_for(api, person).fetch_windows(config(), {SLEEP: [window]})
    assert result.covered == {"sleep": [window]}
    (row,) = result.batch.to_dict("records")
    assert row["value"] == 300.0
    assert [None if v != v else v for v in row["samples"]][1:] == [None, None, None, 18_000.0,
                                                                   None, None]  # fmt: skip

    impossible = moved("sleep_summary", 0, at(DAY, 5))
    impossible["data"]["deepsleepduration"] = 30_000  # the night is 21,720 s
    withings.nights = [impossible]
    result = source_for(api, person).fetch_windows(config(), {SLEEP: [window]})
    assert result.covered == {} and list(result.failed) == ["sleep"]
    message = result.failed["sleep"]
    assert "\n" not in message and "series[0].data: field 'stages'" in message
    assert "within the session's 21720 s" in message


def test_a_night_across_the_spring_change_is_one_night_on_the_day_it_ended(
    api: FakeApi, withings: FakeWithings, person: RecordStore, tmp_path
) -> None:
    """Europe/Paris, 25 March 2018: to bed at 23:00 CET, up at 07:00 CEST, 7 hours (the clock
    says 8). One night, on the 25th; the 24th has none."""
    spring = date(2018, 3, 25)
    woke = datetime(2018, 3, 25, 5, tzinfo=UTC)
    night = moved("sleep_summary", 0, woke)
    night["startdate"] = seconds(woke) - 7 * 3_600
    night["data"] |= {"wakeupduration": 7 * 3_600 - 18_660}
    withings.nights = [night]
    for day in (spring - timedelta(days=1), spring):
        sync_partition(source_for(api, person), person, day, strategy="partition", now=NOW)
    assert (
        observations(published(person, tmp_path / "24", spring - timedelta(days=1)), "93832-4")
        == []
    )
    (published_night,) = observations(published(person, tmp_path / "25", spring), "93832-4")
    assert published_night["effectivePeriod"] == {
        "start": "2018-03-25T00:00:00+02:00",  # 22:00Z, written with the offset of its end
        "end": "2018-03-25T07:00:00+02:00",
    }
    assert len(stored(person, SLEEP, datetime(2018, 3, 20, tzinfo=UTC), NOW)) == 1


def test_a_sleep_notification_brings_the_night_in_a_push_run(
    api: FakeApi, withings: FakeWithings, people: RecordStore, receiver: str
) -> None:
    woke = at(DAY, 5)
    night = moved("sleep_summary", 0, woke)
    withings.nights = [night]
    form = {"userid": USER_ID, "appli": "44", "startdate": str(night["startdate"]),
            "enddate": str(night["enddate"])}  # fmt: skip
    assert notify(receiver, form).json() == {"accepted": 2, "duplicates": 0}  # heart rate, sleep
    report = push(api, people, DAY)
    assert report.records_by_type.get("sleep") == 1
    # The night's heart rate is read too (getmeas's pulses, intraday); no workouts are asked.
    assert len(api.calls_to(SLEEP_V2)) == 1
    assert {c.form["action"] for c in api.calls_to(MEASURE_V2)} == {"getintradayactivity"}
