"""The Withings public API (https://wbsapi.withings.net), per connected person. Sources of every
shape and rule: SOURCE.md beside this module.

Five endpoints, each asked once per person and run for all the types it serves:

| endpoint (POST) | types | asked |
|---|---|---|
| /measure getmeas | weight, blood_pressure, heart_rate, spo2, temperature | once + lastupdate |
| /v2/heart list, then get | ecg | list once (paged), get per signalid |
| /v2/measure getintradayactivity | steps, heart_rate | per 24 h (Withings' limit) |
| /v2/sleep getsummary | sleep (a night a summary: sessions.py) | once (paged) |
| /v2/measure getworkouts | workout (sessions.py) | once (paged) |

getmeas: a measure's value is `value * 10^unit`; the types read (category 1, real measures):

| meastype | our type | unit |
|---|---|---|
| 1 | weight | kg |
| 10 / 9 | blood_pressure systolic / diastolic (both from the same group) | mmHg |
| 11 | heart_rate (heart pulse) | bpm |
| 54 | spo2 | % |
| 71 | temperature (body) | Cel |

Each group's `attrib` says how the measure was attributed to the person; it becomes the record's
`method` (ATTRIB_METHOD): captured by a device and known to be theirs -> device, entered by hand
-> manual, captured by a device that cannot tell who used it (a shared scale) -> ambiguous. An
attrib Withings does not document (17 is seen in real data) is device when the group names a
device, else manual. Records keep the local offset of the answer's `timezone` (only the body
carries one; else the person's zone); the device is the group's `deviceid` ("" when entered by
hand).

Incremental sync: after a successful getmeas the answer's `updatetime` (Withings' server time)
is stored as the cursor "lastupdate" (with the records: FetchResult.cursors). When a cursor
exists, the run also asks getmeas with lastupdate=<cursor> once: groups created or modified
since, for any date (a late upload, an edit). Those records are stored but claim no coverage: only
the windows getmeas answered in full are authoritative. So at most two getmeas calls per person
and run.

ECG: Heart v2 list gives the recordings (`timestamp`, `deviceid`, `ecg.signalid`); Heart v2 get
gives each one's `signal` in micro-volts and `sampling_frequency`: one ecg record (samples uV,
sampling rate, duration = samples / rate) stamped with the recording's start.

Intraday activity (data_fields steps,duration,heart_rate): `series` is keyed by the epoch second
of each sample; steps with their `duration`, heart rate as measured. Heart v2 and intraday carry
no time zone: their records keep the person's zone's offset.

A type is covered when every endpoint that serves it answered for its windows; an endpoint that
refuses (a scope the person did not grant) counts as answered with nothing, so heart rate stays
covered by getmeas's pulses when intraday activity is refused, and a type is refused only when all
of its endpoints refuse it. An endpoint that fails fails its types (the others go on); a rate limit
or a refused grant stops the person's fetch.

Notifications (`event_windows`): each event names a range (startdate..enddate, Unix seconds) or a
day (`date`); its types (codes.APPLI) are read again over [startdate, enddate + 1 s) -- the whole
range Withings names, so a deletion inside it disappears (covered windows are authoritative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from ohx_dagster.core import coverage as cov
from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.errors import NeedsReauthorization, ProviderError, RateLimited
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import concat, dedupe, make_batch
from ohx_dagster.core.times import DAY_US, to_us
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.budget import RequestBudget
from ohx_dagster.providers.api.http import Refused, TokenSource, paginate
from ohx_dagster.providers.api.source import ApiSource, Sample, offset_min, samples_batch
from ohx_dagster.providers.base import Event, FetchResult, Windows
from ohx_dagster.providers.withings import sessions
from ohx_dagster.providers.withings.codes import APPLI, NAME, attrib_method, status_check
from ohx_dagster.providers.withings.sessions import SessionParse

MEASURE: Final = "/measure"
HEART: Final = "/v2/heart"
MEASURE_V2: Final = "/v2/measure"
SLEEP_V2: Final = "/v2/sleep"
CURSOR: Final = "lastupdate"

WEIGHT, DIASTOLIC, SYSTOLIC, PULSE, SPO2, BODY_TEMPERATURE = 1, 9, 10, 11, 54, 71
SINGLE: Final[dict[int, tuple[HealthDataType, str]]] = {
    WEIGHT: (HealthDataType.WEIGHT, "kg"),
    PULSE: (HealthDataType.HEART_RATE, "bpm"),
    SPO2: (HealthDataType.SPO2, "%"),
    BODY_TEMPERATURE: (HealthDataType.TEMPERATURE, "Cel"),
}
MEASTYPES: Final = (WEIGHT, DIASTOLIC, SYSTOLIC, PULSE, SPO2, BODY_TEMPERATURE)
HR, STEPS, ECG = HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.ECG
SLEEP, WORKOUT = HealthDataType.SLEEP, HealthDataType.WORKOUT

# Each endpoint and the types it serves.
GETMEAS: Final = "getmeas"
HEART_LIST: Final = "heart"
INTRADAY: Final = "intraday"
NIGHTS: Final = "getsummary"
WORKOUTS: Final = "getworkouts"
SERVES: Final[dict[str, frozenset[HealthDataType]]] = {
    GETMEAS: frozenset({*(kind for kind, _ in SINGLE.values()), HealthDataType.BLOOD_PRESSURE}),
    HEART_LIST: frozenset({ECG}),
    INTRADAY: frozenset({STEPS, HR}),
    NIGHTS: frozenset({SLEEP}),
    WORKOUTS: frozenset({WORKOUT}),
}
READS: Final = frozenset().union(*SERVES.values())
# Each session type's call: endpoint, action, data fields, the item's parse, the value's unit.
SESSION_CALLS: Final[dict[HealthDataType, tuple[str, str, tuple[str, ...], SessionParse, str]]] = {
    SLEEP: (SLEEP_V2, "getsummary", sessions.NIGHT_FIELDS, sessions.night, "s"),
    WORKOUT: (MEASURE_V2, "getworkouts", sessions.WORKOUT_FIELDS, sessions.workout, "min"),
}
# Withings answers at most the first 24 h after startdate.
INTRADAY_SPAN_US: Final = DAY_US


def measure_value(measure: Any, where: str) -> float:
    """value * 10^unit, exact for the decimal values Withings encodes this way."""
    value = payload.number(measure, "value", where)
    unit = payload.number(measure, "unit", where)
    if not unit.is_integer():
        raise payload.bad_field(where, "unit", unit, "an integer power of ten")
    return value / 10 ** -int(unit) if unit < 0 else value * 10 ** int(unit)


def _epoch(obj: Any, path: str, where: str) -> datetime:
    return datetime.fromtimestamp(payload.number(obj, path, where), tz=UTC)


def _inside(moment: datetime, windows: Iterable[Interval]) -> bool:
    stamp = to_us(moment)
    return any(s <= stamp < e for s, e in windows)


def _seconds(start_us: int, end_us: int) -> dict[str, str]:
    return {
        "startdate": str(math.floor(start_us / 1_000_000)),
        "enddate": str(math.ceil(end_us / 1_000_000)),
    }


def _more(body: Any, where: str) -> str | None:
    """The next page's offset: getmeas documents `more` as 0/1, Heart v2 list as a boolean."""
    if not body.get("more"):
        return None
    return str(int(payload.number(body, "offset", where)))


class WithingsSource(ApiSource):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (person, cursor) whose lastupdate getmeas this source has asked: a second fetch in the
        # same run (the heart rate around an ECG) neither asks it again nor moves the cursor.
        self._since_asked: set[tuple[str, str | None]] = set()

    def _call(
        self, endpoint: str, form: Mapping[str, str], auth: TokenSource, budget: RequestBudget
    ) -> Any:
        """The `body` of one answer (the status checked)."""
        action = form["action"]
        answer = self.connection.api.json(
            "POST",
            endpoint,
            auth=auth,
            data=form,
            check=status_check(endpoint, action, budget),
            budget=budget,
        )
        body = payload.get(answer, "body", f"{NAME} {endpoint} {action}", "an object")
        if not isinstance(body, dict):
            raise payload.bad_field(f"{NAME} {endpoint} {action}", "body", body, "an object")
        return body

    def _pages(
        self, endpoint: str, form: dict[str, str], auth: TokenSource, budget: RequestBudget
    ) -> list[Any]:
        """The body of every page (`more` / `offset`)."""

        def page(offset: str | None) -> tuple[list[Any], str | None]:
            asked = form if offset is None else {**form, "offset": offset}
            body = self._call(endpoint, asked, auth, budget)
            return [body], _more(body, f"{NAME} {endpoint} {form['action']}")

        return list(paginate(NAME, endpoint, page))

    # -- the run ---------------------------------------------------------------------------------

    def fetch_windows(self, user: HealthSyncConfig, windows: Windows) -> FetchResult:
        """Each endpoint once for all the types it serves (see the module doc)."""
        auth = self.connection.auth(user)
        budget = self.connection.budget(user)
        readers: dict[str, Callable[..., tuple[pd.DataFrame, dict[str, str]]]] = {
            GETMEAS: self._measures,
            HEART_LIST: self._ecgs,
            INTRADAY: self._intraday,
            NIGHTS: partial(self._sessions, SLEEP),
            WORKOUTS: partial(self._sessions, WORKOUT),
        }
        result = FetchResult()
        refused: dict[str, str] = {}
        failed: dict[str, str] = {}
        batches = []
        for endpoint, read in readers.items():
            asked = {HealthDataType(k): list(w) for k, w in windows.items() if w}
            asked = {k: w for k, w in asked.items() if k in SERVES[endpoint]}
            if not asked:
                continue
            try:
                batch, cursors = read(user, asked, auth, budget)
            except Refused as refusal:
                refused[endpoint] = str(refusal)
            except (RateLimited, NeedsReauthorization):
                raise
            except (ProviderError, OSError) as failure:
                failed[endpoint] = f"{type(failure).__name__}: {failure}"
            else:
                batches.append(batch)
                result.cursors |= cursors
        for kind, intervals in windows.items():
            kind = HealthDataType(kind)
            endpoints = [e for e in readers if kind in SERVES[e]]
            if not endpoints or not intervals:
                continue
            if any(e in failed for e in endpoints):
                result.failed[kind.value] = "; ".join(failed[e] for e in endpoints if e in failed)
            elif all(e in refused for e in endpoints):
                result.refused[kind.value] = "; ".join(refused[e] for e in endpoints)
            else:
                result.covered[kind.value] = list(intervals)
        result.batch = dedupe(concat(batches))
        return result

    # -- measure getmeas -------------------------------------------------------------------------

    def _measures(
        self,
        user: HealthSyncConfig,
        asked: dict[HealthDataType, list[Interval]],
        auth: TokenSource,
        budget: RequestBudget,
    ) -> tuple[pd.DataFrame, dict[str, str]]:
        """The windows' groups (one getmeas, paged), and those changed since the cursor."""
        base = {
            "action": "getmeas",
            "meastypes": ",".join(str(t) for t in MEASTYPES),
            "category": "1",
        }
        start = min(s for w in asked.values() for s, _ in w)
        end = max(e for w in asked.values() for _, e in w)
        pages = self._pages(MEASURE, {**base, **_seconds(start, end)}, auth, budget)
        batch = self._measure_records(user, pages, asked, within=True)
        since = self.connection.store.cursor(NAME, user.user_id, CURSOR)
        if (user.user_id, since) in self._since_asked:
            return batch, {}
        changed = []
        if since is not None:
            changed = self._pages(MEASURE, {**base, "lastupdate": since}, auth, budget)
            batch = concat([batch, self._measure_records(user, changed, asked, within=False)])
        where = f"{NAME} {MEASURE} getmeas"
        updated = min(int(payload.number(body, "updatetime", where)) for body in pages + changed)
        self._since_asked.add((user.user_id, since))
        return batch, {CURSOR: str(updated)}

    def _measure_records(
        self,
        user: HealthSyncConfig,
        pages: list[Any],
        asked: dict[HealthDataType, list[Interval]],
        *,
        within: bool,
    ) -> pd.DataFrame:
        """Records of the asked types; `within`: only those inside their type's windows."""
        samples: dict[HealthDataType, list[Sample]] = {kind: [] for kind in asked}

        def add(kind: HealthDataType, sample: Sample) -> None:
            if kind in asked and (not within or _inside(sample.at, asked[kind])):
                samples[kind].append(sample)

        index = 0
        for body in pages:
            zone = self._zone(body, user)
            for group in payload.items(body, "measuregrps", f"{NAME} {MEASURE} getmeas"):
                where = f"{NAME} {MEASURE} measuregrps[{index}]"
                index += 1
                moment = _epoch(group, "date", where)
                offset = offset_min(moment.astimezone(zone))
                device = str(group.get("deviceid") or "")
                method = attrib_method(group, where)
                by_type: dict[int, float] = {}
                for m, measure in enumerate(payload.items(group, "measures", where)):
                    code = payload.number(measure, "type", f"{where}.measures[{m}]")
                    by_type[int(code)] = measure_value(measure, f"{where}.measures[{m}]")
                for meastype, (kind, _unit) in SINGLE.items():
                    if meastype in by_type:
                        add(
                            kind,
                            Sample(moment, by_type[meastype], offset, None, device, method=method),
                        )
                if {SYSTOLIC, DIASTOLIC} & set(by_type) and HealthDataType.BLOOD_PRESSURE in asked:
                    for meastype in (SYSTOLIC, DIASTOLIC):
                        if meastype not in by_type:
                            expected = "systolic (10) with diastolic (9)"
                            path = f"measures[type={meastype}]"
                            raise payload.bad_field(where, path, sorted(by_type), expected)
                    pressure = Sample(moment, by_type[SYSTOLIC], offset, None, device,
                                      diastolic=by_type[DIASTOLIC], method=method)  # fmt: skip
                    add(HealthDataType.BLOOD_PRESSURE, pressure)
        units = {kind: unit for kind, unit in SINGLE.values()}
        units[HealthDataType.BLOOD_PRESSURE] = "mmHg"
        return concat(
            samples_batch(NAME, user.user_id, kind, units[kind], samples[kind])
            for kind in sorted(asked)
        )

    @staticmethod
    def _zone(body: Any, user: HealthSyncConfig) -> ZoneInfo:
        """The answer's `timezone` (only the body carries one), else the person's zone."""
        name = body.get("timezone")
        if not name:
            return user.zone
        try:
            return ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            where = f"{NAME} {MEASURE} getmeas"
            raise payload.bad_field(where, "timezone", name, "an IANA time zone") from None

    # -- heart v2: ECG ---------------------------------------------------------------------------

    def _ecgs(
        self,
        user: HealthSyncConfig,
        asked: dict[HealthDataType, list[Interval]],
        auth: TokenSource,
        budget: RequestBudget,
    ) -> tuple[pd.DataFrame, dict[str, str]]:
        windows = asked[ECG]
        start, end = min(s for s, _ in windows), max(e for _, e in windows)
        form = {"action": "list", **_seconds(start, end)}
        batches = []
        index = 0
        for body in self._pages(HEART, form, auth, budget):
            for item in payload.items(body, "series", f"{NAME} {HEART} list"):
                where = f"{NAME} {HEART} list series[{index}]"
                index += 1
                ecg = item.get("ecg") if isinstance(item, dict) else None
                if not isinstance(ecg, dict) or ecg.get("signalid") is None:
                    continue  # a recording without an ECG signal (a stethoscope's)
                moment = _epoch(item, "timestamp", where)
                if not _inside(moment, windows):
                    continue
                signalid = int(payload.number(ecg, "signalid", f"{where}.ecg"))
                device = str(item.get("deviceid") or "")
                batches.append(self._ecg(user, signalid, moment, device, auth, budget))
        return concat(batches), {}

    def _ecg(
        self,
        user: HealthSyncConfig,
        signalid: int,
        moment: datetime,
        device: str,
        auth: TokenSource,
        budget: RequestBudget,
    ) -> pd.DataFrame:
        where = f"{NAME} {HEART} get signalid={signalid}"
        body = self._call(HEART, {"action": "get", "signalid": str(signalid)}, auth, budget)
        signal = payload.items(body, "signal", where)
        if not signal or any(isinstance(v, bool) or not isinstance(v, int | float) for v in signal):
            raise payload.bad_field(where, "signal", signal[:5], "a non-empty array of micro-volts")
        rate = payload.number(body, "sampling_frequency", where)
        if not rate > 0:
            raise payload.bad_field(where, "sampling_frequency", rate, "a rate in Hz above 0")
        return make_batch(
            provider=NAME,
            user_id=user.user_id,
            data_type=ECG,
            timestamps=[moment],
            values=None,
            unit="uV",
            device_id=device,
            utc_offset_min=offset_min(moment.astimezone(user.zone)),
            samples=[signal],
            sampling_rate_hz=rate,
            duration_s=len(signal) / rate,
        )

    # -- measure v2 getintradayactivity ----------------------------------------------------------

    def _intraday(
        self,
        user: HealthSyncConfig,
        asked: dict[HealthDataType, list[Interval]],
        auth: TokenSource,
        budget: RequestBudget,
    ) -> tuple[pd.DataFrame, dict[str, str]]:
        fields = ["steps", "duration"] if STEPS in asked else []
        if HR in asked:
            fields.append("heart_rate")
        samples: dict[HealthDataType, list[Sample]] = {kind: [] for kind in asked}
        spans = cov.normalize([w for windows in asked.values() for w in windows])
        for span_start, span_end in spans:
            for start in range(span_start, span_end, INTRADAY_SPAN_US):
                end = min(start + INTRADAY_SPAN_US, span_end)
                form = {
                    "action": "getintradayactivity",
                    **_seconds(start, end),
                    "data_fields": ",".join(fields),
                }
                body = self._call(MEASURE_V2, form, auth, budget)
                for moment, item, where in self._series(body):
                    offset = offset_min(moment.astimezone(user.zone))
                    device = str(item.get("deviceid") or "")
                    if STEPS in asked and item.get("steps") is not None:
                        steps = payload.number(item, "steps", where)
                        duration = item.get("duration")
                        seconds = (
                            None if duration is None else payload.number(item, "duration", where)
                        )
                        samples[STEPS].append(Sample(moment, steps, offset, seconds, device))
                    if HR in asked and item.get("heart_rate") is not None:
                        bpm = payload.number(item, "heart_rate", where)
                        samples[HR].append(Sample(moment, bpm, offset, None, device))
        units = {STEPS: "steps", HR: "bpm"}
        batches = []
        for kind in sorted(asked):
            inside = [s for s in samples[kind] if _inside(s.at, asked[kind])]
            batches.append(samples_batch(NAME, user.user_id, kind, units[kind], inside))
        return concat(batches), {}

    @staticmethod
    def _series(body: Any) -> Iterable[tuple[datetime, Any, str]]:
        """(instant, item, where) of `series`, an object keyed by epoch seconds (an empty answer
        may come as [], PHP's empty array)."""
        where = f"{NAME} {MEASURE_V2} getintradayactivity"
        series = body.get("series")
        if series is None or series == []:
            return
        if not isinstance(series, dict):
            raise payload.bad_field(where, "series", series, "an object keyed by epoch seconds")
        for key, item in series.items():
            at = f"{where} series[{key!r}]"
            try:
                moment = datetime.fromtimestamp(int(key), tz=UTC)
            except (ValueError, OverflowError, OSError):
                raise payload.bad_field(where, "series key", key, "epoch seconds") from None
            if not isinstance(item, dict):
                raise payload.bad_field(at, "(item)", item, "an object")
            yield moment, item, at

    # -- sleep v2 getsummary and measure v2 getworkouts: sessions ----------------------------------

    def _sessions(
        self,
        kind: HealthDataType,
        user: HealthSyncConfig,
        asked: dict[HealthDataType, list[Interval]],
        auth: TokenSource,
        budget: RequestBudget,
    ) -> tuple[pd.DataFrame, dict[str, str]]:
        """The sessions of `kind` (SESSION_CALLS) that end inside its windows, from one call
        over the windows' local dates, paged. The dates are the person's, a day wider each side:
        Withings does not document in which zone `startdateymd` and `enddateymd` are read, and a
        session is kept by its end."""
        endpoint, action, fields, parse, unit = SESSION_CALLS[kind]
        windows = asked[kind]
        start, end = min(s for s, _ in windows), max(e for _, e in windows)
        first = datetime.fromtimestamp(start / 1e6, tz=UTC).astimezone(user.zone).date()
        last = datetime.fromtimestamp(end / 1e6, tz=UTC).astimezone(user.zone).date()
        form = {
            "action": action,
            "startdateymd": (first - timedelta(days=1)).isoformat(),
            "enddateymd": (last + timedelta(days=1)).isoformat(),
            "data_fields": ",".join(fields),
        }
        found = []
        index = 0
        for body in self._pages(endpoint, form, auth, budget):
            for item in payload.items(body, "series", f"{NAME} {endpoint} {action}"):
                sample = parse(item, user.zone, f"{NAME} {endpoint} {action} series[{index}]")
                index += 1
                if sample is not None and _inside(sample.at, windows):
                    found.append(sample)
        return samples_batch(NAME, user.user_id, kind, unit, found), {}

    # -- notifications ---------------------------------------------------------------------------

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        wanted = self.supported_types & user.enabled_types
        found: dict[HealthDataType, list[Interval]] = {}
        for event in events:
            window = notified_window(event.payload, user)
            if window is None:
                continue
            if event.data_type is not None:
                kinds: Iterable[HealthDataType] = (HealthDataType(event.data_type),)
            else:
                kinds = APPLI.get(_int(event.payload.get("appli")), ())
            for kind in kinds:
                if kind in wanted:
                    found.setdefault(kind, []).append(window)
        return found


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def notified_window(form: Mapping[str, Any], user: HealthSyncConfig) -> Interval | None:
    """What a notification names: [startdate, enddate + 1 s) (Withings' range, whole), or the
    person's local day of `date` (YYYY-MM-DD, or Unix seconds); None when it names neither."""
    stamps = [int(form[n]) for n in ("startdate", "enddate") if str(form.get(n) or "").strip()]
    if stamps:
        return min(stamps) * 1_000_000, (max(stamps) + 1) * 1_000_000
    text = str(form.get("date") or "").strip()
    if not text:
        return None
    if text.isdigit():
        day = datetime.fromtimestamp(int(text), tz=UTC).astimezone(user.zone).date()
    else:
        day = date.fromisoformat(text)
    start = datetime.combine(day, time(0), tzinfo=user.zone)
    return to_us(start), to_us(start + timedelta(days=1))
