"""The Dexcom source against a local server answering only Dexcom's documented shapes
(ohx_dagster/providers/dexcom/fixtures, SOURCE.md): estimated glucose values with their times
and units exactly as the fixture says, mmol/L converted with 18.0156, readings Dexcom gives no
number for, windows longer than one request may ask, and the provider's refusals: 401 (the token
refreshed once), 403, 429 (its Retry-After honoured), 5xx, an empty answer and malformed ones."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest
from provider_api_server import Call, FakeApi, answer, documented

from ohx_dagster.core.errors import ConfigError, ProviderError, RateLimited
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.providers.api.http import ApiClient
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, TokenStore, connect_user
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.providers.dexcom import APP, DATA_RANGE, EGVS, MAX_SPAN, NAME, DexcomSource
from ohx_dagster.providers.registry import API_PROVIDERS, RESYNC_HORIZON, SUPPORTED_TYPES, describe
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import SyncFailed, sync_partition

CGM = HealthDataType.INTERSTITIAL_GLUCOSE
FIXTURE = documented(NAME, "egvs")
MOBILE, RECEIVER = FIXTURE["records"]  # an app's record (times with offsets), a receiver's
USER = HealthSyncConfig(
    user_id=FIXTURE["userId"],
    provider=NAME,
    timezone="America/Los_Angeles",
    enabled_types=frozenset({CGM}),
)
NOW = datetime(2022, 6, 20, 12, 0, tzinfo=UTC)
DAY = date(2022, 6, 16)  # the fixture's evening in Los Angeles (03:59Z on the 17th)
TOKEN_PATH = "/v2/oauth2/token"
PDT = timezone(timedelta(hours=-7))
DEVICE = f"dexcom-g6-{MOBILE['transmitterId']}"


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def egv(moment: datetime, value: Any, unit: str = "mg/dL", *, mobile: bool = True, **changes):
    """A record in the fixture's shape at `moment` (UTC): an app's, its times written with their
    offsets (displayTime Pacific daylight time), or a receiver's, written without."""
    if mobile:
        times = {
            "systemTime": moment.isoformat(),
            "displayTime": moment.astimezone(PDT).isoformat(),
        }
        template = MOBILE
    else:
        naive = moment.astimezone(PDT).replace(tzinfo=None)
        times = {"systemTime": moment.replace(tzinfo=None).isoformat(),
                 "displayTime": naive.isoformat()}  # fmt: skip
        template = RECEIVER
    record_id = f"egv-{to_us(moment)}"
    return {**template, **times, "recordId": record_id, "value": value, "unit": unit, **changes}


def naive_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is None, f"Dexcom's examples write the window without an offset: {text}"
    return moment.replace(tzinfo=UTC)


class FakeDexcom:
    """Dexcom's egvs answering the documented shape from what a test says the person has. The
    window is taken as [startDate, endDate] on systemTime, both ends included (the source must
    not count a record at a request boundary twice, whichever way Dexcom reads endDate)."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.records: list[dict[str, Any]] = []
        self.tokens = {"at-1"}
        self.spans: list[tuple[datetime, datetime]] = []
        api.on(EGVS, self._egvs)

    def _egvs(self, call: Call):
        if call.bearer not in self.tokens:
            return answer(401, None)
        start, end = naive_utc(call.query["startDate"]), naive_utc(call.query["endDate"])
        assert start < end <= start + MAX_SPAN, (start, end)
        self.spans.append((start, end))

        def system_time(record: dict[str, Any]) -> datetime:
            moment = datetime.fromisoformat(record["systemTime"])
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

        body = documented(NAME, "egvs")
        body["records"] = [r for r in self.records if start <= system_time(r) <= end]
        return answer(200, body)


@pytest.fixture
def dexcom(api: FakeApi) -> FakeDexcom:
    return FakeDexcom(api)


@pytest.fixture
def person(tmp_path, token_key):
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    tokens = OAuthTokens("at-1", "rt-1", NOW + timedelta(days=1))
    connect_user(record_store, NAME, USER.user_id, tokens, USER)
    yield record_store
    record_store.dispose()


def source_for(api: FakeApi, store: RecordStore) -> DexcomSource:
    oauth = OAuthClient(NAME, f"{api.base_url}{TOKEN_PATH}", "dexcom-cid", "dexcom-cs")
    settings = ApiSettings(NAME, api.base_url, oauth)
    return DexcomSource(store, settings, backoff_s=0.0, clock=lambda: NOW)


def window_of(start: datetime, end: datetime) -> tuple[int, int]:
    return to_us(start), to_us(end)


FIXTURE_WINDOW = window_of(at(date(2022, 6, 17), 3), at(date(2022, 6, 17), 5))


# -- the provider in the product ---------------------------------------------------------------


def test_the_provider_is_registered_polled_and_configured_from_the_environment() -> None:
    assert API_PROVIDERS[NAME] is APP and SUPPORTED_TYPES[NAME] == frozenset({CGM})
    assert RESYNC_HORIZON[NAME] == timedelta(hours=48) and APP.webhook is None
    assert (APP.request_limit.requests, APP.request_limit.per_s) == (60_000, 3_600.0)
    assert not APP.request_limit.per_person
    assert APP.authorize.authorize_url == "https://api.dexcom.com/v2/oauth2/login"
    assert APP.authorize.scopes == ("offline_access",)
    assert APP.token_url == "https://api.dexcom.com/v2/oauth2/token"
    assert describe(NAME, USER) == "Dexcom API v3"
    with pytest.raises(ConfigError, match="OHX_DEXCOM_CLIENT_ID and OHX_DEXCOM_CLIENT_SECRET"):
        ApiSettings.from_env(APP, {})
    sandbox = "https://sandbox-api.dexcom.com"
    settings = ApiSettings.from_env(APP, {
        "OHX_DEXCOM_CLIENT_ID": "cid", "OHX_DEXCOM_CLIENT_SECRET": "cs",
        "OHX_DEXCOM_API_URL": sandbox, "OHX_DEXCOM_TOKEN_URL": f"{sandbox}{TOKEN_PATH}",
    })  # fmt: skip
    assert (settings.base_url, settings.oauth.token_url) == (sandbox, f"{sandbox}{TOKEN_PATH}")
    assert settings.oauth.token_auth == "form" and "cs" not in repr(settings)


def test_a_source_by_the_protocol_that_enumerates_nobody(api, person) -> None:
    source = source_for(api, person)
    assert isinstance(source, HealthSource)
    assert source.discover_users() == [] and source.supported_types == frozenset({CGM})


def test_the_connect_flow_finds_the_person_by_data_range(api) -> None:
    api.on(DATA_RANGE, lambda call: answer(200, documented(NAME, "data_range")))
    client = ApiClient(NAME, api.base_url, backoff_s=0.0)
    assert APP.find_user_id(client, documented(NAME, "token"), "fresh-token") == USER.user_id
    assert api.calls[-1].bearer == "fresh-token" and api.calls[-1].query == {}
    api.on(DATA_RANGE, lambda call: answer(200, {"recordType": "dataRange"}))
    with pytest.raises(ProviderError, match=r"dexcom /v3/users/self/dataRange: field 'userId'"):
        APP.find_user_id(client, {}, "fresh-token")


# -- values, units and times -------------------------------------------------------------------


def test_the_documented_records_become_exact_readings(api, dexcom, person) -> None:
    dexcom.records = [MOBILE, RECEIVER]
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.covered == {CGM.value: [FIXTURE_WINDOW]} and not result.failed
    batch = result.batch.sort_values("ts")
    assert batch["ts"].tolist() == [
        at(date(2022, 6, 17), 3, 59, 11),
        at(date(2022, 6, 17), 4, 4, 11),
    ]
    assert batch["value"].tolist() == [124.0, 126.0] and set(batch["unit"]) == {"mg/dL"}
    assert set(batch["data_type"]) == {"interstitial_glucose"} and set(batch["provider"]) == {NAME}
    # The app's record keeps displayTime's offset (-07:00); the receiver's has none.
    offsets = batch["utc_offset_min"].tolist()
    assert offsets[0] == -420 and pd.isna(offsets[1])
    assert set(batch["device_id"]) == {DEVICE} and set(batch["method"]) == {"device"}
    ((start, end),) = dexcom.spans
    assert (start, end) == (at(date(2022, 6, 17), 3), at(date(2022, 6, 17), 5))
    (call,) = api.calls_to(EGVS)
    assert call.query == {"startDate": "2022-06-17T03:00:00", "endDate": "2022-06-17T05:00:00"}
    assert call.bearer == "at-1"


def test_mg_dl_and_mmol_l_convert_exactly_with_the_molar_mass(api, dexcom, person) -> None:
    base = at(date(2022, 6, 17), 3)
    dexcom.records = [
        egv(base + timedelta(minutes=5), 6, "mmol/L"),
        egv(base + timedelta(minutes=10), 10, "mmol/L", mobile=False),
        egv(base + timedelta(minutes=15), 99, "mg/dL"),
        egv(base + timedelta(minutes=20), 5.5, "mmol/L"),  # documented int32; a decimal is read too
    ]
    batch = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]}).batch
    values = batch.sort_values("ts")["value"].tolist()
    assert values == [6 * 18.0156, 10 * 18.0156, 99.0, 5.5 * 18.0156]
    assert values[0] == 108.0936 and set(batch["unit"]) == {"mg/dL"}


def test_readings_without_a_number_store_nothing(api, dexcom, person) -> None:
    """`value` is "integer or null": null is no reading. Outside the sensor's range (`status`
    high or low) the number Dexcom sends is not a measurement: nothing is stored for it either,
    and the window is still answered."""
    base = at(date(2022, 6, 17), 3)
    dexcom.records = [
        egv(base + timedelta(minutes=5), None, status=None),
        egv(base + timedelta(minutes=10), 401, status="high", trend="rateOutOfRange"),
        egv(base + timedelta(minutes=15), 39, status="low"),
        egv(base + timedelta(minutes=20), None, "unknown", status="high"),
        egv(base + timedelta(minutes=25), 40, status="ok"),
        egv(base + timedelta(minutes=30), 400, status=None, trend=None, trendRate=None),
    ]
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.batch.sort_values("ts")["value"].tolist() == [40.0, 400.0]
    assert result.covered == {CGM.value: [FIXTURE_WINDOW]}


def test_an_unknown_unit_fails_the_type_in_one_line_naming_the_record(api, dexcom, person) -> None:
    base = at(date(2022, 6, 17), 3)
    dexcom.records = [
        egv(base + timedelta(minutes=5), 120),
        egv(base + timedelta(minutes=10), 7, "unknown"),
    ]
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.covered == {} and result.batch.empty
    message = result.failed[CGM.value]
    assert "\n" not in message
    record_id = dexcom.records[1]["recordId"]
    assert message == (
        f"ProviderError: dexcom /v3/users/self/egvs records[1] (recordId {record_id}): "
        "field 'unit' is 'unknown': expected mg/dL or mmol/L"
    )


def test_a_run_stores_the_readings_in_the_persons_local_day(api, dexcom, person) -> None:
    dexcom.records = [MOBILE, RECEIVER]
    report = sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    assert report.records_by_type == {"interstitial_glucose": 2}
    assert DAY in report.days_changed
    stored = person.read_records(NAME, utc_day(date(2022, 6, 17)))
    assert sorted(stored["value"].tolist()) == [124.0, 126.0]


# -- windows ---------------------------------------------------------------------------------------


def test_a_window_longer_than_thirty_days_is_asked_thirty_days_at_a_time(
    api, dexcom, person
) -> None:
    start = at(date(2022, 3, 1), 6, 0, 0) + timedelta(microseconds=250_000)
    end = start + timedelta(days=75, hours=1)
    # Readings on each request's boundaries, the window's first and last, and one outside.
    moments = [start, start + timedelta(days=30) - timedelta(microseconds=250_000),
               start + timedelta(days=30, minutes=5), start + timedelta(days=60, seconds=-1),
               end - timedelta(minutes=1), end + timedelta(minutes=5)]  # fmt: skip
    dexcom.records = [egv(m.replace(microsecond=0), 100 + i) for i, m in enumerate(moments)]
    window = window_of(start, end)
    result = source_for(api, person).fetch_windows(USER, {CGM: [window]})
    whole = at(date(2022, 3, 1), 6)  # whole seconds around the window
    assert dexcom.spans == [
        (whole, whole + MAX_SPAN),
        (whole + MAX_SPAN, whole + 2 * MAX_SPAN),
        (whole + 2 * MAX_SPAN, whole + timedelta(days=75, hours=1, seconds=1)),
    ]
    # The first reading (at the whole second before the window) is outside it; each other
    # one inside is stored once, the boundary readings too.
    assert sorted(result.batch["value"].tolist()) == [101.0, 102.0, 103.0, 104.0]
    assert result.covered == {CGM.value: [window]}


def test_an_empty_answer_covers_the_window(api, dexcom, person) -> None:
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.batch.empty and result.covered == {CGM.value: [FIXTURE_WINDOW]}
    assert len(api.calls_to(EGVS)) == 1


# -- the provider's refusals -------------------------------------------------------------------


def test_a_401_refreshes_the_token_once_and_repeats_the_request(api, dexcom, person) -> None:
    issued = documented(NAME, "token")
    dexcom.tokens = {issued["access_token"]}
    dexcom.records = [MOBILE]
    api.queue(TOKEN_PATH, answer(200, issued))
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.batch["value"].tolist() == [124.0]
    assert [c.bearer for c in api.calls_to(EGVS)] == ["at-1", issued["access_token"]]
    (refresh,) = api.calls_to(TOKEN_PATH)
    assert refresh.form == {"grant_type": "refresh_token", "refresh_token": "rt-1",
                            "client_id": "dexcom-cid", "client_secret": "dexcom-cs"}  # fmt: skip
    saved = TokenStore(person).load(NAME, USER.user_id)
    assert saved is not None and saved.refresh_token == issued["refresh_token"]
    assert saved.expires_at == NOW + timedelta(seconds=issued["expires_in"])


def test_a_401_after_the_refresh_fails_the_type(api, dexcom, person) -> None:
    dexcom.tokens = set()  # Dexcom rejects the refreshed token too
    api.queue(TOKEN_PATH, answer(200, documented(NAME, "token")))
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert (
        result.covered == {}
        and "HTTP 401: the refreshed token was rejected too" in (result.failed[CGM.value])
    )
    assert len(api.calls_to(TOKEN_PATH)) == 1 and len(api.calls_to(EGVS)) == 2


def test_a_403_refuses_the_type_and_the_run_records_it(api, person) -> None:
    api.on(EGVS, lambda call: answer(403, "Forbidden"))
    report = sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    reason = report.refused[USER.user_id][CGM.value]
    assert "dexcom /v3/users/self/egvs: HTTP 403: Forbidden" in reason
    assert person.refused_types(USER) == {CGM.value: reason}
    assert person.coverage(NAME) == {}


def test_a_429_defers_the_person_for_its_retry_after(api, person) -> None:
    api.on(EGVS, lambda call: answer(429, None, Retry_After="30"))
    with pytest.raises(SyncFailed) as failed:
        sync_partition(source_for(api, person), person, DAY, strategy="partition", now=NOW)
    assert failed.value.report.deferred == [USER.user_id]
    assert failed.value.report.retry_after_s == 30.0
    assert person.coverage(NAME) == {}
    # The application's budget waits: the next request is not even sent.
    calls = len(api.calls)
    with pytest.raises(RateLimited):
        source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert len(api.calls) == calls


def test_a_5xx_is_retried_and_a_lasting_one_fails_the_type(api, dexcom, person) -> None:
    dexcom.records = [MOBILE]
    ok = dexcom._egvs
    answers = iter([answer(503, "Service Unavailable"), answer(500, None)])
    api.on(EGVS, lambda call: next(answers, None) or ok(call))
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.batch["value"].tolist() == [124.0] and len(api.calls_to(EGVS)) == 3
    api.on(EGVS, lambda call: answer(500, "Internal Server Error"))
    before = len(api.calls_to(EGVS))
    result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
    assert result.covered == {} and len(api.calls_to(EGVS)) - before == 4  # the client's attempts
    assert result.failed[CGM.value] == (
        "HttpStatusError: dexcom /v3/users/self/egvs: HTTP 500: Internal Server Error"
    )


def test_malformed_answers_name_the_field_in_one_line(api, dexcom, person) -> None:
    base = at(date(2022, 6, 17), 3, 30)
    cases: list[tuple[Any, str]] = [
        ({"recordType": "egv", "recordVersion": "3.0"},
         r"^ProviderError: dexcom /v3/users/self/egvs: field 'records' is missing: "
         r"expected a JSON array$"),
        ([], r"dexcom /v3/users/self/egvs: field '\(body\)' is \[\]: expected a JSON object"),
        ({**FIXTURE, "records": [egv(base, 120, systemTime="soon")]},
         r"records\[0\] \(recordId egv-\d+\): field 'systemTime' is 'soon': expected an ISO 8601"),
        ({**FIXTURE, "records": [{k: v for k, v in egv(base, 120).items() if k != "displayTime"}]},
         r"records\[0\] \(recordId egv-\d+\): field 'displayTime' is missing"),
        ({**FIXTURE, "records": [egv(base, "one twenty")]},
         r"field 'value' is 'one twenty': expected a number"),
        ({**FIXTURE, "records": [egv(base, 5000)]},
         r"field 'value' is 5000: expected 10\.\.1000 mg/dL once converted from mg/dL"),
        ({**FIXTURE, "records": [egv(base, 120, "mmol/L")]},  # 2162 mg/dL: a mislabelled unit
         r"field 'value' is 120: expected 10\.\.1000 mg/dL once converted from mmol/L"),
        ({**FIXTURE, "records": ["an egv"]}, r"records\[0\]: field '\(record\)' is 'an egv'"),
        (b"<html>gateway</html>", r"dexcom /v3/users/self/egvs: malformed JSON"),
    ]  # fmt: skip
    for body, message in cases:
        api.queue(EGVS, answer(200, body))
        result = source_for(api, person).fetch_windows(USER, {CGM: [FIXTURE_WINDOW]})
        assert result.covered == {} and result.batch.empty, body
        failure = result.failed[CGM.value]
        assert "\n" not in failure and re.search(message, failure), failure
