"""Withings nights and workouts as sessions (ohx_dagster/core/sessions.py): each stamped at its
`enddate` with the offset of its own `timezone`. Sources of every field: SOURCE.md.

A night is a Sleep v2 getsummary item (`sleep_summary_object`): its time asleep is
`total_sleep_time` ("Sum of light, deep and rem durations"), or `asleepduration` for a night
from an external source ("Light, Deep and Rem sleep durations are null in this case"); its parts
are a summary (stage_summary), not intervals: Withings says how long each stage lasted, not
when. `waso` is the wake after sleep onset, `wakeupcount` the awakenings ("Does not include the
number of times the user got out of bed").

A workout is a Measure v2 getworkouts item (`workout_object`): its activity the name of its
`category` (WORKOUT_CATEGORIES), its time exercising the session less the pauses Withings
reports, its energy `calories` (active kcal), its distance `distance` (m), its heart rate
`hr_average` and `hr_max`. A watch that measured no heart rate reports 0 (captured: every
measure 0 on a phone's walk), so a heart rate of 0 is "not measured"; the person's own entries
(`manual_calories`, `manual_distance`, 0 when not entered) stand where the device reports none.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.records import CONTEXT_CHARS
from ohx_dagster.core.sessions import (
    check_session,
    stage_summary,
    summary_totals,
    workout_measures,
    workout_parts,
)
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.source import Sample, offset_min
from ohx_dagster.providers.withings.codes import attrib_method

# One answer's item, the person's zone and where it is -> its session (None: not one yet).
SessionParse = Callable[[Any, ZoneInfo, str], Sample | None]

# The data_fields each call asks for (Withings answers only the fields asked).
NIGHT_FIELDS: Final = (
    "total_sleep_time",
    "asleepduration",
    "deepsleepduration",
    "lightsleepduration",
    "remsleepduration",
    "waso",
    "wakeupcount",
)
WORKOUT_FIELDS: Final = (
    "calories",
    "manual_calories",
    "distance",
    "manual_distance",
    "hr_average",
    "hr_max",
    "pause_duration",
    "algo_pause_duration",
)

# `workout_object.category`, as the spec names each value; two names longer than a record's
# context (CONTEXT_CHARS) are shortened, marked "(ours)" in SOURCE.md.
WORKOUT_CATEGORIES: Final[dict[int, str]] = {
    1: "Walk", 2: "Run", 3: "Hiking", 4: "Skating", 5: "BMX", 6: "Bicycling", 7: "Swimming",
    8: "Surfing", 9: "Kitesurfing", 10: "Windsurfing", 11: "Bodyboard", 12: "Tennis",
    13: "Table tennis", 14: "Squash", 15: "Badminton", 16: "Lift weights", 17: "Fitness",
    18: "Elliptical", 19: "Pilates", 20: "Basket-ball", 21: "Soccer", 22: "Football",
    23: "Rugby", 24: "Volley-ball", 25: "Waterpolo", 26: "Horse riding", 27: "Golf", 28: "Yoga",
    29: "Dancing", 30: "Boxing", 31: "Fencing", 32: "Wrestling", 33: "Martial arts",
    34: "Skiing", 35: "Snowboarding", 36: "Other", 128: "No activity", 187: "Rowing",
    188: "Zumba", 191: "Baseball", 192: "Handball", 193: "Hockey", 194: "Ice hockey",
    195: "Climbing", 196: "Ice skating", 272: "Multi-sport", 306: "Indoor walk",
    307: "Indoor running", 308: "Indoor cycling", 455: "Standup Paddleboarding", 456: "Padel",
    457: "Gaming", 490: "Beach volleyball", 491: "Stair Stepper", 492: "Skateboarding",
    493: "Parkour", 494: "Kayaking", 495: "Canoeing", 496: "Sailing", 497: "Fishing",
    498: "Trail Running", 499: "Snowshoeing", 500: "Paintball", 501: "Archery",
    502: "Scuba Diving", 503: "Baseball Training", 504: "Biathlon", 505: "Bocce",
    506: "Pétanque", 507: "Paragliding", 508: "Frisbee", 509: "Skydiving", 510: "Pickleball",
    511: "Cornhole", 512: "Dodgeball", 513: "Ultimate", 514: "Teqball",
    515: "Wheelchair push (running pace)", 516: "Wheelchair push (walking pace)",
    517: "Athletics", 518: "Track Cycling", 519: "Pentathlon", 520: "Sport Shooting",
    521: "Triathlon", 522: "Diving", 523: "Mountain Biking", 524: "Gravel Biking",
    525: "E-Biking", 526: "E-Mountain Biking", 527: "Handcycling", 528: "Velomobile",
    529: "Backcountry Skiing", 530: "Nordic Skiing", 531: "Roller Skiing", 532: "Racquetball",
    534: "Hip Hop", 535: "Muaythai", 536: "Taekwondo", 537: "Judo", 538: "Trampoline",
    539: "Standing Frame", 540: "Seated Strenght", 541: "Seated Cardio",
    542: "Walk With Walker", 543: "Walk With Cane", 544: "Breaking", 545: "Chores",
    546: "Crossfit", 547: "Spinclass", 548: "Cricket", 549: "Flamenco Dancing", 550: "HIIT",
    551: "Meditation", 552: "Stretching", 553: "Yard Work Gardening", 554: "Cleaning",
    555: "Public Speaking", 556: "Spikeball", 557: "Lacrosse", 558: "Baby Wearing",
    559: "Dog Walking", 560: "Breathing excercises", 561: "Balance Drills",
    562: "Pushing a Stroller", 563: "Toddler Wearing", 564: "Bowling", 565: "Lasertag",
    566: "Nordic Walking", 567: "Sumo Wrestling", 568: "Cooking",
}  # fmt: skip
assert all(len(name) <= CONTEXT_CHARS for name in WORKOUT_CATEGORIES.values())


def _object(item: Any, name: str, where: str) -> dict[str, Any]:
    found = item.get(name) if isinstance(item, dict) else None
    if found is None and isinstance(item, dict):
        return {}
    if not isinstance(found, dict):
        raise payload.bad_field(where, name, found, "an object")
    return found


def _told(data: dict[str, Any], name: str, where: str) -> float:
    """A number of `data`, NaN when Withings leaves it out or null."""
    return np.nan if data.get(name) is None else payload.number(data, name, where)


def _ends(item: Any, user_zone: ZoneInfo, where: str) -> tuple[datetime, float]:
    """The session's end in its own time zone (the person's when it names none), and its
    length in seconds."""
    start = payload.number(item, "startdate", where)
    end = payload.number(item, "enddate", where)
    if end < start:
        raise payload.bad_field(where, "enddate", end, f"not before startdate {start:g}")
    zone = user_zone
    name = item.get("timezone")
    if name:
        try:
            zone = ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise payload.bad_field(where, "timezone", name, "an IANA time zone") from None
    return datetime.fromtimestamp(end, tz=UTC).astimezone(zone), end - start


def _checked(where: str, check: Any, *args: Any) -> None:
    """A session's check, its failure named as the answer's field (one line)."""
    try:
        check(*args)
    except ValidationError as exc:
        raise payload.bad_field(where, exc.field, exc.value, exc.expected) from None


def night(item: Any, user_zone: ZoneInfo, where: str) -> Sample | None:
    """One getsummary item as a night (time asleep in seconds), or None when it tells nothing
    of sleep or is not over (`completed` false)."""
    if isinstance(item, dict) and item.get("completed") is False:
        return None
    end, length = _ends(item, user_zone, where)
    data = _object(item, "data", where)
    told = {name: _told(data, name, f"{where}.data") for name in NIGHT_FIELDS}
    stages = [told["deepsleepduration"], told["lightsleepduration"], told["remsleepduration"]]
    staged = not np.isnan(stages).all()
    asleep = told["total_sleep_time"]
    if np.isnan(asleep):
        asleep = float(np.nansum(stages)) if staged else told["asleepduration"]
    if np.isnan(asleep):
        return None
    unstaged = np.nan if staged else asleep
    parts = stage_summary(
        deep=stages[0],
        light=stages[1],
        rem=stages[2],
        asleep_unstaged=unstaged,
        awake_after_onset=told["waso"],
        awakenings=told["wakeupcount"],
    )
    _checked(f"{where}.data", check_session, length, asleep / 60.0)
    _checked(f"{where}.data", summary_totals, np.array(parts), length)
    device = str(item.get("hash_deviceid") or "")
    return Sample(end, asleep, offset_min(end), length, device, parts=parts)


def _measured(data: dict[str, Any], device_field: str, manual_field: str, where: str) -> float:
    """The device's figure; the person's entry where the device gives none (0 is not
    entered)."""
    measured = _told(data, device_field, where)
    entered = _told(data, manual_field, where)
    if (np.isnan(measured) or measured == 0) and entered > 0:
        return entered
    return measured


def _heart_rate(data: dict[str, Any], name: str, where: str) -> float:
    bpm = _told(data, name, where)
    return np.nan if bpm == 0 else bpm


def workout(item: Any, user_zone: ZoneInfo, where: str) -> Sample:
    """One getworkouts item as a workout (time exercising in minutes, activity in context)."""
    code = payload.number(item, "category", where)
    activity = WORKOUT_CATEGORIES.get(int(code), f"withings category {int(code)}")
    end, length = _ends(item, user_zone, where)
    data = _object(item, "data", where)
    at = f"{where}.data"
    paused = float(
        np.nansum([_told(data, n, at) for n in ("pause_duration", "algo_pause_duration")])
    )
    if paused < 0:
        raise payload.bad_field(at, "pause_duration", paused, "at least 0 seconds")
    parts = workout_parts(
        energy=_measured(data, "calories", "manual_calories", at),
        distance=_measured(data, "distance", "manual_distance", at),
        mean_heart_rate=_heart_rate(data, "hr_average", at),
        max_heart_rate=_heart_rate(data, "hr_max", at),
    )
    exercising = max(length - paused, 0.0) / 60.0
    _checked(at, check_session, length, exercising)
    _checked(at, workout_measures, parts)
    return Sample(end, exercising, offset_min(end), length,
                  str(item.get("deviceid") or ""), method=attrib_method(item, where),
                  context=activity, parts=parts)  # fmt: skip
