"""Google Health API v4 (the successor of the Fitbit Web API), per connected person. Every shape
and rule: SOURCE.md beside this module.

| our type | dataType | DataPoint field | value | time |
|---|---|---|---|---|
| heart_rate | heart-rate | heartRate | beatsPerMinute (bpm); context: motionContext | sampleTime |
| steps | steps | steps | count over the interval (its duration kept) | interval.startTime |
| weight | weight | weight | weightGrams (g -> kg) | sampleTime |
| spo2 | oxygen-saturation | oxygenSaturation | percentage (%) | sampleTime |
| sleep | sleep | sleep | time asleep (s), stages (sessions.py) | interval.endTime |
| workout | exercise | exercise | time exercising (min), measures (sessions.py) | interval.endTime |

- blood_glucose <- blood-glucose: `bloodGlucose.bloodGlucoseMilligramsPerDeciliter` (mg/dL) at
  sampleTime; context: measurementTiming.
- hrv_rmssd <- daily-heart-rate-variability (a daily type):
  `dailyHeartRateVariability.averageHeartRateVariabilityMilliseconds` (ms; RMSSD) of its date.
- respiratory_rate <- daily-respiratory-rate (a daily type): `dailyRespiratoryRate.breathsPerMinute`
  (/min) of its date.

Sleep and exercise are sessions (sessions.py): one record each, stamped at its end with the
end's offset, kept when its end is inside the window read. Sleep is asked by its end
(`sleep.interval.end_time`, the filter S1 gives sleep); exercise by its civil start
(`exercise.interval.civil_start_time`, the only session filter S1 gives it), from a day and
CIVIL_REACH before the window to CIVIL_REACH after it, so every exercise ending inside is asked.
Pages hold at most 25 (S1: "The maximum page size for `exercise` and `sleep` is 25").

A daily point carries a `date` ("in the user's timezone") and no time or offset: it is stored at
the start of that local day in the person's zone history (core/localdays.py, the day the product
files it under), with that zone's offset, as an instant (no duration). A blood-glucose point whose
`specimen` is interstitial fluid or tears, or whose `measurementSource` is a continuous glucose
monitor, is not glucose in blood: it is skipped.

One reading (or session) per person and moment: the values come from the reconciled stream,
GET .../dataPoints:reconcile?dataSourceFamily=users/me/dataSourceFamilies/all-sources ("Reconcile
data points from multiple data sources into a single data stream"), so the steps a phone and a
watch both counted are counted once. A ReconciledDataPoint carries no `dataSource`: the source
also reads the raw points (GET .../dataPoints, one per data source) of the same window and gives a
reconciled reading the provenance of the raw point it equals (same time, same value) when exactly
one source's points match: the device's displayName (else its manufacturer and form factor, else
the uploading application) becomes the record's device_id, and recordingMethod MANUAL its method
"manual". A reading no raw point or several sources match keeps device_id "".

Proto3 JSON omits fields holding their default: a sample without `sampleTime.utcOffset` (or an
interval without `startUtcOffset`) was taken at UTC+0, a steps point without `count` counted 0
steps. A point of any other type without its value is skipped (zero is no reading). int64
values arrive as JSON strings. A value that is present but malformed is a ProviderError naming the
endpoint, the point, the field and the value: that type fails for the run, the others go on.

Notifications (`event_windows`) name a data type and its changed intervals: those windows are read
again, UPSERT and DELETE alike (the answer for a window is authoritative, so what Google no longer
holds goes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import pandas as pd

from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.sessions import MAX_SESSION_S
from ohx_dagster.core.times import from_us, to_us
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.http import TokenSource, paginate
from ohx_dagster.providers.api.source import ApiSource, Sample, samples_batch
from ohx_dagster.providers.base import Event
from ohx_dagster.providers.google_health import sessions
from ohx_dagster.providers.google_health.sessions import SESSIONS, DataPoints, SessionType

NAME: Final = "google_health"
MAX_PAGE_SIZE: Final = 10_000
ALL_SOURCES: Final = "users/me/dataSourceFamilies/all-sources"
# A civil (local) time is within 14 hours of UTC: a notification interval known only in civil
# time is read this much wider on each side.
CIVIL_REACH: Final = timedelta(hours=14)


@dataclass(frozen=True, slots=True)
class GoogleType(DataPoints):
    data_type: str  # in the URL and in notifications (kebab-case)
    field: str  # the DataPoint's union member
    filter_name: str  # in filter expressions (snake_case)
    value: str  # the value's field in the member
    unit: str
    interval: bool = False  # an interval type (ObservationTimeInterval)
    daily: bool = False  # a daily type (a `date`, filtered by `{filter_name}.date`)
    # Whether an omitted value (proto3's default 0) is a reading: 0 steps are, 0 bpm is not.
    zero_is_reading: bool = False
    # The member's enum field (dotted path) kept, lower-cased, as the record's context.
    context: str = ""
    # (field, values): a point whose field holds one of these values is not this type: skipped.
    excluded: tuple[tuple[str, frozenset[str]], ...] = ()


# Glucose a CGM measured, or of a fluid other than blood (BloodGlucose.Specimen and
# .MeasurementSource): not glucose in blood.
NOT_BLOOD: Final = (
    ("specimen", frozenset({"INTERSTITIAL_FLUID", "TEARS"})),
    ("measurementSource", frozenset({"CONTINUOUS_GLUCOSE_MONITORING"})),
)

TYPES: Final[dict[HealthDataType, GoogleType]] = {
    HealthDataType.HEART_RATE: GoogleType("heart-rate", "heartRate", "heart_rate",
                                          "beatsPerMinute", "bpm",
                                          context="metadata.motionContext"),
    HealthDataType.STEPS: GoogleType("steps", "steps", "steps", "count", "steps", interval=True,
                                     zero_is_reading=True),
    HealthDataType.WEIGHT: GoogleType("weight", "weight", "weight", "weightGrams", "g"),
    HealthDataType.SPO2: GoogleType("oxygen-saturation", "oxygenSaturation", "oxygen_saturation",
                                    "percentage", "%"),
    HealthDataType.BLOOD_GLUCOSE: GoogleType("blood-glucose", "bloodGlucose", "blood_glucose",
                                             "bloodGlucoseMilligramsPerDeciliter", "mg/dL",
                                             context="measurementTiming", excluded=NOT_BLOOD),
    # "A user's average heart rate variability calculated using the root mean square of
    # successive differences (RMSSD)": RMSSD, never SDNN.
    HealthDataType.HRV_RMSSD: GoogleType("daily-heart-rate-variability",
                                         "dailyHeartRateVariability",
                                         "daily_heart_rate_variability",
                                         "averageHeartRateVariabilityMilliseconds", "ms",
                                         daily=True),
    HealthDataType.RESPIRATORY_RATE: GoogleType("daily-respiratory-rate", "dailyRespiratoryRate",
                                                "daily_respiratory_rate", "breathsPerMinute",
                                                "breaths/min", daily=True),
}  # fmt: skip
# Notification dataType -> our type.
BY_DATA_TYPE: Final[dict[str, HealthDataType]] = {
    **{g.data_type: k for k, g in TYPES.items()},
    **{s.data_type: k for k, s in SESSIONS.items()},
}
# A session ends at most this long after any moment of it (a notification's interval).
SESSION_REACH_US: Final = int(MAX_SESSION_S * 1_000_000)

# (time µs, duration s or None, value) of a sample: how a reconciled one finds its raw point.
Key = tuple[int, float | None, float]
# (device_id, method) of a raw point.
Provenance = tuple[str, str]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def civil_literal(moment: datetime) -> str:
    """A civil date-time literal (S1: "ISO 8601 `YYYY-MM-DD[THH:mm:ss]`") of UTC's wall clock."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def session_filter(kind: SessionType, window: DateRange) -> str:
    """Sleep by its end, in the window; exercise by its civil start, from MAX_SESSION_S and
    CIVIL_REACH before the window (a session lasts at most a day, a civil time is within
    CIVIL_REACH of UTC) to CIVIL_REACH (and a second, the literal's precision) after it."""
    if kind.by_end:
        field = f"{kind.field}.interval.end_time"
        return f'{field} >= "{rfc3339(window.start)}" AND {field} < "{rfc3339(window.end)}"'
    field = f"{kind.field}.interval.civil_start_time"
    first = civil_literal(window.start - timedelta(seconds=MAX_SESSION_S) - CIVIL_REACH)
    after = civil_literal(window.end + CIVIL_REACH + timedelta(seconds=1))
    return f'{field} >= "{first}" AND {field} < "{after}"'


def sample_key(sample: Sample) -> Key:
    return to_us(sample.at), sample.duration_s, sample.value


def time_filter(kind: GoogleType, window: DateRange) -> str:
    if kind.daily:
        # A local day starts within a day of its UTC date (offsets are -12 h .. +14 h): every
        # date whose start can fall inside the window, a day more on each side.
        first = window.start.astimezone(UTC).date() - timedelta(days=1)
        after = window.end.astimezone(UTC).date() + timedelta(days=2)
        field = f"{kind.filter_name}.date"
        return f'{field} >= "{first.isoformat()}" AND {field} < "{after.isoformat()}"'
    path = "interval.start_time" if kind.interval else "sample_time.physical_time"
    field = f"{kind.filter_name}.{path}"
    return f'{field} >= "{rfc3339(window.start)}" AND {field} < "{rfc3339(window.end)}"'


def _offset_s(member: Any, path: str, where: str) -> float:
    """A protobuf Duration offset; omitted means 0 (proto3 JSON leaves a zero Duration out)."""
    node = member
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return 0.0
    return payload.duration_s(member, path, where)


@dataclass(frozen=True, slots=True)
class Reading:
    at: datetime
    end: datetime | None
    offset_s: float
    value: float
    context: str

    def sample(self) -> Sample:
        duration = None if self.end is None else (self.end - self.at).total_seconds()
        offset = int(self.offset_s // 60)
        return Sample(self.at, self.value, offset, duration, context=self.context)


def _field(member: Mapping[str, Any], path: str) -> Any:
    node: Any = member
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _date(member: Any, path: str, where: str) -> date:
    """A google.type.Date holding a full date (year, month and day)."""
    node = payload.get(member, path, where, "a Date {year, month, day}")
    parts = [node.get(k) for k in ("year", "month", "day")] if isinstance(node, dict) else []
    whole = [p for p in parts if isinstance(p, int) and not isinstance(p, bool)]
    if len(whole) == 3:
        try:
            return date(whole[0], whole[1], whole[2])
        except ValueError:  # a partial date (a zero field) or no such day
            pass
    raise payload.bad_field(where, path, node, "a full Date {year, month, day}")


def read_point(
    point: Any, spec: GoogleType, where: str, calendar: Calendar | None = None
) -> Reading | None:
    """One DataPoint or ReconciledDataPoint; None for a value proto3 left out that is no reading,
    or a point that is not this type (`excluded`). A daily point is dated at the start of its
    local day in `calendar` (the person's zone history), which daily types need."""
    if not isinstance(point, dict):
        raise payload.bad_field(where, "(point)", point, "a DataPoint object")
    member = payload.get(point, spec.field, where, f"a {spec.field} object")
    if not isinstance(member, dict):
        raise payload.bad_field(where, spec.field, member, f"a {spec.field} object")
    at = f"{where}.{spec.field}"
    for name, values in spec.excluded:
        label = member.get(name)
        if isinstance(label, str) and label in values:
            return None
    if spec.value in member:
        value = payload.number(member, spec.value, at)
    elif spec.zero_is_reading:
        value = 0.0
    else:
        return None
    label = _field(member, spec.context) if spec.context else None
    context = label.lower() if isinstance(label, str) and "UNSPECIFIED" not in label else ""
    if spec.daily:
        if calendar is None:
            raise ValueError(f"{spec.data_type}: a daily type is dated by the person's calendar")
        day = _date(member, "date", at)
        start_us = calendar.day_window(day)[0]
        offset = calendar.offset_min(start_us, day) * 60.0
        return Reading(from_us(start_us), None, offset, value, context)
    if spec.interval:
        start = payload.instant(member, "interval.startTime", at)
        end = payload.instant(member, "interval.endTime", at)
        if end < start:
            raise payload.bad_field(at, "interval.endTime", member["interval"]["endTime"],
                                    "an instant not before interval.startTime")  # fmt: skip
        offset = _offset_s(member, "interval.startUtcOffset", at)
        return Reading(start, end, offset, value, context)
    start = payload.instant(member, "sampleTime.physicalTime", at)
    offset = _offset_s(member, "sampleTime.utcOffset", at)
    return Reading(start, None, offset, value, context)


def provenance(point: Mapping[str, Any]) -> Provenance:
    """(device_id, method) from a raw point's DataSource: the device's name, else its make and
    form factor, else the application that uploaded it; MANUAL recordings are "manual"."""
    source = point.get("dataSource")
    if not isinstance(source, dict):
        return "", "device"
    method = "manual" if source.get("recordingMethod") == "MANUAL" else "device"
    device = source.get("device")
    if not isinstance(device, dict):
        device = {}
    name = device.get("displayName")
    if isinstance(name, str) and name.strip():
        return name.strip(), method
    form = device.get("formFactor")
    if isinstance(form, str) and form and "UNSPECIFIED" not in form:
        make = device.get("manufacturer")
        parts = [make.strip()] if isinstance(make, str) and make.strip() else []
        return " ".join([*parts, form.lower().replace("_", " ")]), method
    application = source.get("application")
    if not isinstance(application, dict):
        application = {}
    for field in ("packageName", "webClientId", "googleWebClientId"):
        value = application.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip(), method
    return "", method


def attribute(found: set[Provenance]) -> Provenance:
    """A reconciled reading's provenance from the raw points it equals: theirs when one source
    matches; several or none: no device, "manual" only when every match was typed in."""
    if len(found) == 1:
        return next(iter(found))
    manual = bool(found) and all(method == "manual" for _, method in found)
    return "", "manual" if manual else "device"


def interval_window(interval: Any, where: str) -> tuple[Interval, datetime | None]:
    """A notification interval as a window to read again, and its physical start (None when the
    interval is given in civil time only). Raises ValidationError naming the field."""
    if not isinstance(interval, dict):
        raise ValidationError("intervals[]", interval, "an interval object", where=where)
    physical = interval.get("physicalTimeInterval")
    if physical is not None:
        start = _notified_instant(physical, "startTime", f"{where}.physicalTimeInterval")
        end = _notified_instant(physical, "endTime", f"{where}.physicalTimeInterval")
        if end < start:
            raise ValidationError("physicalTimeInterval.endTime", physical.get("endTime"),
                                  "an instant not before startTime", where=where)  # fmt: skip
        # The end is included: a sample type's interval may start and end at its one sample.
        return (to_us(start), to_us(end) + 1), start
    civil = interval.get("civilIso8601TimeInterval")
    if civil is not None:
        start = _civil(civil, "startTime", f"{where}.civilIso8601TimeInterval")
        end = _civil(civil, "endTime", f"{where}.civilIso8601TimeInterval")
        if end < start:
            raise ValidationError("civilIso8601TimeInterval.endTime", civil.get("endTime"),
                                  "a time not before startTime", where=where)  # fmt: skip
        return (to_us(start - CIVIL_REACH), to_us(end + CIVIL_REACH) + 1), None
    raise ValidationError(
        "physicalTimeInterval",
        None,
        "physicalTimeInterval {startTime, endTime} or civilIso8601TimeInterval",
        where=where,
    )


def _notified_instant(node: Any, name: str, where: str) -> datetime:
    value = node.get(name) if isinstance(node, dict) else None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise ValidationError(name, value, "an RFC 3339 date-time with Z or an offset", where=where)
    return moment.astimezone(UTC)


def _civil(node: Any, name: str, where: str) -> datetime:
    value = node.get(name) if isinstance(node, dict) else None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is not None:
        raise ValidationError(name, value, "a civil date-time YYYY-MM-DDTHH:mm:ss", where=where)
    return moment.replace(tzinfo=UTC)


def whole_days(calendar: Calendar, window: Interval) -> Interval:
    """The local days (in `calendar`) that `window` touches, from the first one's start to the
    last one's end."""
    start, end = window
    days = calendar.days_spanned(start, max(end, start + 1))
    return calendar.day_window(days[0])[0], calendar.day_window(days[-1])[1]


def notification_windows(data: Mapping[str, Any], where: str) -> list[Interval]:
    intervals = data.get("intervals") or []
    if not isinstance(intervals, list):
        raise ValidationError("intervals", intervals, "an array of intervals", where=where)
    return [interval_window(i, f"{where}.intervals[{n}]")[0] for n, i in enumerate(intervals)]


class GoogleHealthSource(ApiSource):
    def _points(
        self, user: HealthSyncConfig, endpoint: str, params: dict[str, str], auth: TokenSource
    ) -> list[Any]:
        where = self.connection.where(endpoint)
        budget = self.connection.budget(user)

        def page(token: str | None) -> tuple[list[Any], str | None]:
            query = params if token is None else {**params, "pageToken": token}
            body = self.connection.api.json("GET", endpoint, auth=auth, params=query, budget=budget)
            if not isinstance(body, dict):
                raise payload.bad_field(where, "(body)", body, "a JSON object")
            points = body.get("dataPoints", [])  # proto3 JSON omits an empty list
            if not isinstance(points, list):
                raise payload.bad_field(where, "dataPoints", points, "a JSON array")
            following = body.get("nextPageToken")
            if following is not None and not isinstance(following, str):
                raise payload.bad_field(where, "nextPageToken", following, "a string")
            return points, following

        return list(paginate(NAME, endpoint, page))

    def read(
        self, user: HealthSyncConfig, kind: HealthDataType, window: DateRange, auth: TokenSource
    ) -> pd.DataFrame:
        parse: Callable[[Any, str], Sample | None]
        points: DataPoints
        if kind in SESSIONS:
            session = points = SESSIONS[kind]
            unit, parse = session.unit, session.parse
            params = {
                "filter": session_filter(session, window),
                "pageSize": str(sessions.MAX_PAGE_SIZE),
            }
        elif kind in TYPES:
            spec, calendar = TYPES[kind], Calendar.of(user).by_zone()
            points, unit = spec, spec.unit
            params = {"filter": time_filter(spec, window), "pageSize": str(MAX_PAGE_SIZE)}

            def parse(point: Any, where: str) -> Sample | None:
                reading = read_point(point, spec, where, calendar)
                return None if reading is None else reading.sample()

        else:
            return super().read(user, kind, window, auth)
        endpoint, reconcile = points.endpoint, points.reconcile
        reconciled = self._points(
            user, reconcile, {**params, "dataSourceFamily": ALL_SOURCES}, auth
        )
        raw = self._points(user, endpoint, params, auth)
        sources: dict[Key, set[Provenance]] = {}
        where = self.connection.where(endpoint)
        for index, point in enumerate(raw):
            sample = parse(point, f"{where} dataPoints[{index}]")
            if sample is not None:
                sources.setdefault(sample_key(sample), set()).add(provenance(point))
        samples = []
        where = self.connection.where(reconcile)
        for index, point in enumerate(reconciled):
            sample = parse(point, f"{where} dataPoints[{index}]")
            if sample is None or not window.contains(sample.at):
                continue
            device_id, method = attribute(sources.get(sample_key(sample), set()))
            samples.append(replace(sample, device_id=device_id, method=method))
        return samples_batch(NAME, user.user_id, kind, unit, samples)

    # -- notifications ---------------------------------------------------------------------------

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        """Each notification's intervals for its type; one without intervals (none documented,
        but possible) reads the re-sync horizon back from its arrival. A daily type's windows
        are widened to the whole local days they touch: its points are dated at a day's start.
        A session's reach a day further (SESSION_REACH_US): the guide does not say which part of
        a session the interval is, and a session is read by its end, at most a day after it."""
        wanted = self.supported_types & user.enabled_types
        calendar = Calendar.of(user).by_zone()
        found: dict[HealthDataType, list[Interval]] = {}
        for event in events:
            kind = BY_DATA_TYPE.get(str(event.payload.get("dataType", "")))
            if kind is None or kind not in wanted:
                continue
            windows = notification_windows(event.payload, f"{NAME} notification")
            if not windows:
                since = event.received_at - self.resync_horizon
                windows = [(to_us(since), to_us(now))]
            if kind in SESSIONS:
                windows = [(start, end + SESSION_REACH_US) for start, end in windows]
            elif TYPES[kind].daily:
                windows = [whole_days(calendar, window) for window in windows]
            found.setdefault(kind, []).extend(windows)
        return found
