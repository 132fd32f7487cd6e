"""Google Health sleep and exercise as sessions (ohx_dagster/core/sessions.py): one record each,
stamped at its `interval.endTime` with the end's offset (`interval.endUtcOffset`), lasting back to
`interval.startTime`. Every field and its description in the discovery document: SOURCE.md
("Sleep", "Exercise").

| our type | dataType | value | parts | context |
|---|---|---|---|---|
| sleep | sleep | summary.minutesAsleep (else the asleep stages), s | stages | "nap" |
| workout | exercise | activeDuration (else less pauses), min | metricsSummary | displayName |

- A night's stages (`Sleep.stages`, "non-overlapping contiguous sleep stage segments that cover
  the sleep period") become (start, end, stage) seconds after the night's start, ordered and cut
  where they overlap (`merge_intervals`): AWAKE, LIGHT, DEEP, REM and ASLEEP ("classic" sleep,
  stage not told) as ours. RESTLESS is neither asleep nor awake in Google's own sums
  (`minutesAsleep` "excluding AWAKE and RESTLESS", `minutesAwake` "a sum of all AWAKE stages"):
  it is left out, as is an unset type. A stage outside the night is an error naming it.
- A workout's measures (`Exercise.metricsSummary`): `caloriesKcal` (kcal), `distanceMillimeters`
  (mm -> m; the codelab's real response spells it `distanceMillimiters`, read too),
  `averageHeartRateBeatsPerMinute` (/min); Google gives no highest heart rate. An omitted measure
  (proto3 leaves zeros out) is not reported; a mean heart rate of 0 is no reading.
- Malformed values are a one-line ProviderError naming the point and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.core.records import CONTEXT_CHARS
from ohx_dagster.core.sessions import (
    DATES_SLACK_S,
    MAX_SESSION_S,
    Stage,
    check_session,
    merge_intervals,
    stage_intervals,
    stage_totals,
    workout_measures,
    workout_parts,
)
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.source import Sample

# "For `exercise` and `sleep` the default page size is 25. The maximum page size for `exercise`
# and `sleep` is 25." (users.dataTypes.dataPoints.list and .reconcile, pageSize)
MAX_PAGE_SIZE: Final = 25

# SleepStage.type -> our stage; None: not told asleep or awake, left out of the stages.
STAGES: Final[dict[str, Stage | None]] = {
    "SLEEP_STAGE_TYPE_UNSPECIFIED": None,  # "The default unset value."
    "AWAKE": Stage.AWAKE,  # "Sleep stage AWAKE."
    "LIGHT": Stage.LIGHT,  # "Sleep stage LIGHT."
    "DEEP": Stage.DEEP,  # "Sleep stage DEEP."
    "REM": Stage.REM,  # "Sleep stage REM."
    "ASLEEP": Stage.ASLEEP,  # "Sleep stage ASLEEP." (classic sleep: asleep, stage not told)
    "RESTLESS": None,  # "Sleep stage RESTLESS.": neither asleep nor awake in Google's sums
}

# Exercise.exerciseType (all but unspecified): the activity when an exercise has no displayName.
EXERCISE_TYPES: Final = frozenset({
    "RUNNING", "WALKING", "BIKING", "SWIMMING", "HIKING", "YOGA", "PILATES", "WORKOUT", "HIIT",
    "WEIGHTLIFTING", "STRENGTH_TRAINING", "OTHER",
})  # fmt: skip
# ExerciseEvent.exerciseEventType: what starts a pause, and what ends one.
PAUSES: Final = frozenset({"PAUSE", "AUTO_PAUSE"})
PAUSE_ENDS: Final = frozenset({"RESUME", "AUTO_RESUME", "STOP"})
# Our measure -> the MetricsSummary field it is read from (named in errors).
MEASURE_FIELDS: Final = {
    "energy": "metricsSummary.caloriesKcal",
    "distance": "metricsSummary.distanceMillimeters",
    "mean_heart_rate": "metricsSummary.averageHeartRateBeatsPerMinute",
    "max_heart_rate": "metricsSummary",
}


def _node(member: Any, path: str) -> Any:
    node = member
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _member(point: Any, field: str, where: str) -> tuple[dict[str, Any], str]:
    """The DataPoint's (or ReconciledDataPoint's) union member and the place to name in errors."""
    if not isinstance(point, dict):
        raise payload.bad_field(where, "(point)", point, "a DataPoint object")
    member = payload.get(point, field, where, f"a {field} object")
    if not isinstance(member, dict):
        raise payload.bad_field(where, field, member, f"a {field} object")
    return member, f"{where}.{field}"


def _interval(member: dict[str, Any], where: str) -> tuple[datetime, datetime, int]:
    """A SessionTimeInterval: its start, its end and the end's UTC offset in minutes (omitted:
    0, as proto3 JSON leaves a zero Duration out). A session lasts at most a day."""
    start = payload.instant(member, "interval.startTime", where)
    end = payload.instant(member, "interval.endTime", where)
    length = (end - start).total_seconds()
    if not 0 <= length <= MAX_SESSION_S:
        raise payload.bad_field(
            where,
            "interval.endTime",
            member["interval"]["endTime"],
            f"an instant not before interval.startTime and at most {MAX_SESSION_S:g} s after it",
        )
    offset = 0.0
    if _node(member, "interval.endUtcOffset") is not None:
        offset = payload.duration_s(member, "interval.endUtcOffset", where)
    return start, end, int(offset // 60)


def _checked(where: str, field: str, check: Callable[..., Any], *args: Any) -> None:
    """A session's check, its failure one line naming the answer's field."""
    try:
        check(*args)
    except ValidationError as exc:
        raise payload.bad_field(where, field, exc.value, exc.expected) from None


# -- sleep -------------------------------------------------------------------------------------


def _stages(
    member: dict[str, Any], start: datetime, end: datetime, where: str
) -> np.ndarray | None:
    """A night's stages as checked (start s, end s, stage) rows; None when it lists none told."""
    listed = member.get("stages")
    if listed is None:
        return None
    if not isinstance(listed, list):
        raise payload.bad_field(where, "stages", listed, "a JSON array")
    rows: list[tuple[float, float, int]] = []
    span = f"inside the night, {start.isoformat()} .. {end.isoformat()}"
    for index, stage in enumerate(listed):
        at = f"{where}.stages[{index}]"
        first = payload.instant(stage, "startTime", at)
        last = payload.instant(stage, "endTime", at)
        if not start <= first <= end:
            raise payload.bad_field(at, "startTime", stage["startTime"], f"an instant {span}")
        if not first <= last <= end:
            expected = f"an instant not before startTime, {span}"
            raise payload.bad_field(at, "endTime", stage["endTime"], expected)
        label = stage.get("type", "SLEEP_STAGE_TYPE_UNSPECIFIED")  # proto3 omits the default
        if not isinstance(label, str) or label not in STAGES:
            raise payload.bad_field(at, "type", label, f"one of {', '.join(STAGES)}")
        kind = STAGES[label]
        if kind is not None:
            rows.append(((first - start).total_seconds(), (last - start).total_seconds(), kind))
    if not rows:
        return None
    table = np.array(rows, dtype="float64")
    flat = merge_intervals(table[:, 0], table[:, 1], table[:, 2])
    if not flat.size:
        return None
    try:
        return stage_intervals(flat, (end - start).total_seconds())
    except ValidationError as exc:  # not expected once merged: still one line, never a crash
        raise payload.bad_field(where, "stages", exc.value, exc.expected) from None


def night(point: Any, where: str) -> Sample | None:
    """One sleep DataPoint as a night: its time asleep in seconds (`summary.minutesAsleep`, else
    its asleep stages), its stages, "nap" as context for a nap. None when it tells neither."""
    member, at = _member(point, "sleep", where)
    start, end, offset_min = _interval(member, at)
    length = (end - start).total_seconds()
    stages = _stages(member, start, end, at)
    if _node(member, "summary.minutesAsleep") is not None:
        asleep = payload.number(member, "summary.minutesAsleep", at) * 60.0
        if asleep < 0:
            raise payload.bad_field(at, "summary.minutesAsleep", asleep / 60, "at least 0")
    elif stages is not None:
        asleep = stage_totals(stages).asleep
    else:
        return None  # neither a time asleep nor stages: nothing said of the night
    _checked(at, "summary.minutesAsleep", check_session, length, asleep / 60.0)
    nap = _node(member, "metadata.nap") is True
    parts = None if stages is None else stages.ravel().tolist()
    return Sample(end, asleep, offset_min, length, context="nap" if nap else "", parts=parts)


# -- exercise ----------------------------------------------------------------------------------


def _activity(member: dict[str, Any], where: str) -> str:
    """`displayName` ("Required. Exercise display name."), cut to a record's context; without
    one, the `exerciseType` lower-cased."""
    name = member.get("displayName")
    if isinstance(name, str) and name.strip():
        return name.strip()[:CONTEXT_CHARS]
    kind = member.get("exerciseType")
    if isinstance(kind, str) and kind in EXERCISE_TYPES:
        return kind.lower().replace("_", " ")
    raise payload.bad_field(where, "displayName", name, "the exercise's name (or exerciseType)")


def _paused_s(member: dict[str, Any], start: datetime, end: datetime, where: str) -> float:
    """Seconds paused by `exerciseEvents`: from a pause to the next resume or stop (to the end
    when none follows), each moment held inside the interval."""
    events = member.get("exerciseEvents") or []  # proto3 omits an empty list
    if not isinstance(events, list):
        raise payload.bad_field(where, "exerciseEvents", events, "a JSON array")
    timed = []
    for index, event in enumerate(events):
        moment = payload.instant(event, "eventTime", f"{where}.exerciseEvents[{index}]")
        timed.append((min(max(moment, start), end), event.get("exerciseEventType")))
    timed.sort(key=lambda item: item[0])
    paused, since = 0.0, None
    for moment, kind in timed:
        if kind in PAUSES and since is None:
            since = moment
        elif kind in PAUSE_ENDS and since is not None:
            paused += (moment - since).total_seconds()
            since = None
    if since is not None:
        paused += (end - since).total_seconds()
    return paused


def _measure(summary: dict[str, Any], name: str, where: str) -> float:
    """A MetricsSummary number, NaN when not reported (absent)."""
    return np.nan if summary.get(name) is None else payload.number(summary, name, where)


def workout(point: Any, where: str) -> Sample:
    """One exercise DataPoint as a workout: the time exercising in minutes, its activity, its
    energy, distance and mean heart rate."""
    member, at = _member(point, "exercise", where)
    start, end, offset_min = _interval(member, at)
    length = (end - start).total_seconds()
    activity = _activity(member, at)
    if member.get("activeDuration") is not None:
        active = payload.duration_s(member, "activeDuration", at)
        if not 0 <= active <= length + DATES_SLACK_S:
            raise payload.bad_field(
                at, "activeDuration", member["activeDuration"], f"0 .. the interval's {length:g}s"
            )
    else:
        active = length - _paused_s(member, start, end, at)
    summary = member.get("metricsSummary") or {}
    if not isinstance(summary, dict):
        raise payload.bad_field(at, "metricsSummary", summary, "a MetricsSummary object")
    told = f"{at}.metricsSummary"
    distance_mm = _measure(summary, "distanceMillimeters", told)
    if np.isnan(distance_mm):  # the codelab's real response: `distanceMillimiters`
        distance_mm = _measure(summary, "distanceMillimiters", told)
    heart_rate = _measure(summary, "averageHeartRateBeatsPerMinute", told)
    parts = workout_parts(
        energy=_measure(summary, "caloriesKcal", told),
        distance=distance_mm / 1000.0,
        mean_heart_rate=np.nan if heart_rate == 0 else heart_rate,
    )
    try:
        workout_measures(parts)
    except ValidationError as exc:
        field = MEASURE_FIELDS.get(exc.field, "metricsSummary")
        raise payload.bad_field(at, field, exc.value, exc.expected) from None
    minutes = max(active, 0.0) / 60.0
    _checked(at, "activeDuration", check_session, length, minutes)
    return Sample(end, minutes, offset_min, length, context=activity, parts=parts)


class DataPoints:
    """The paths of a data type's points: listed (`users.dataTypes.dataPoints.list`) and
    reconciled across sources (`.reconcile`)."""

    __slots__ = ()
    data_type: str  # in the URL and in notifications (kebab-case)

    @property
    def endpoint(self) -> str:
        return f"/v4/users/me/dataTypes/{self.data_type}/dataPoints"

    @property
    def reconcile(self) -> str:
        return f"{self.endpoint}:reconcile"


@dataclass(frozen=True, slots=True)
class SessionType(DataPoints):
    data_type: str
    field: str  # the DataPoint's union member, and the name in filter expressions
    unit: str  # of the Sample's value
    parse: Callable[[Any, str], Sample | None]
    # The filter S1 gives the type: its end ("Session end time (**Sleep specific**)"), else its
    # civil start ("Session civil start time (**Excluding Sleep and ECG**)").
    by_end: bool = False


SESSIONS: Final[dict[HealthDataType, SessionType]] = {
    HealthDataType.SLEEP: SessionType("sleep", "sleep", "s", night, by_end=True),
    HealthDataType.WORKOUT: SessionType("exercise", "exercise", "min", workout),
}
