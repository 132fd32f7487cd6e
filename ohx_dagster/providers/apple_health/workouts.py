"""HealthKit workouts: each <Workout> of export.xml as a workout record.

The export writes a workout as one element (the real export's 61, iOS 10/11): its
`workoutActivityType` (HKWorkoutActivityTypeRunning ...), `duration` in `durationUnit`,
`totalDistance` in `totalDistanceUnit`, `totalEnergyBurned` in `totalEnergyBurnedUnit`, the app
as `sourceName`, `startDate` and `endDate`. It becomes a workout (ohx_dagster/core/sessions.py)
stamped at `endDate` with that date's offset, lasting from `startDate`, the time exercising its
`duration` (shorter than the period when the person paused), the activity the type's name
without its prefix ("Running"), the energy in kcal and the distance in metres; an attribute the
export leaves out is not reported. Where the dates span less than the `duration` (the real
export's LFconnect run of 60 minutes dated 17:10:28 to 17:10:28, a run typed into the Health app
with no times), the duration is believed: the workout began that long before its end.

Newer exports (iOS 16 on) write a workout's figures as <WorkoutStatistics> children, one per
quantity type, with `sum` or `average`, `minimum`, `maximum` in `unit` (the export's DTD:
"WorkoutStatistics type startDate endDate average minimum maximum sum unit"; a real workout of
iOS 26: NicolasReyrolle/apple-health-analyzer tests/test_export_parser.py, an Apple Watch run
with HeartRate average 140.139 minimum 75 maximum 157 count/min, ActiveEnergyBurned sum
1389.98 kcal, DistanceWalkingRunning sum 16.1244 km). Read: the heart rate's average and
maximum; the energy and the distance (every Distance* type's sum: a triathlon has three) where
the workout's own attributes leave them out. A unit other than those below is an error naming
the line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final, NamedTuple

import numpy as np
import pandas as pd

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.core.records import CONTEXT_CHARS, empty_batch, make_batch
from ohx_dagster.core.sessions import workout_parts

PREFIX: Final = "HKWorkoutActivityType"
# Each attribute's units as HealthKit writes them, and the factor to minutes, kcal and metres.
DURATION_UNITS: Final = {"min": 1.0, "s": 1.0 / 60.0, "hr": 60.0}
ENERGY_UNITS: Final = {"kcal": 1.0, "Cal": 1.0, "kJ": 1.0 / 4.184}
DISTANCE_UNITS: Final = {"km": 1000.0, "m": 1.0, "mi": 1609.344, "yd": 0.9144, "ft": 0.3048}
HEART_RATE_UNITS: Final = {"count/min": 1.0}
STATISTIC: Final = "WorkoutStatistics"
HEART_RATE: Final = "HKQuantityTypeIdentifierHeartRate"
ACTIVE_ENERGY: Final = "HKQuantityTypeIdentifierActiveEnergyBurned"
DISTANCE_PREFIX: Final = "HKQuantityTypeIdentifierDistance"


class HeldWorkout(NamedTuple):
    end_us: int  # UTC
    offset_min: int  # of endDate
    duration_s: float  # endDate - startDate
    minutes: float  # `duration`: time exercising
    activity: str
    energy_kcal: float  # NaN: not in the export
    distance_m: float
    device: int
    manual: bool = False
    mean_heart_rate: float = np.nan
    max_heart_rate: float = np.nan


def _amount(
    element: ET.Element, name: str, units: dict[str, float], where: str, unit_name: str = ""
) -> float:
    """An attribute in its unit attribute's unit (`<name>Unit`, or `unit_name`), converted; NaN
    when the export leaves it out."""
    text = element.get(name)
    if text is None:
        return np.nan
    unit_name = unit_name or (f"{name}Unit" if name != "duration" else "durationUnit")
    unit = element.get(unit_name, "")
    if unit not in units:
        raise ValidationError(unit_name, unit, f"one of {sorted(units)}", where=where)
    try:
        value = float(text)
    except ValueError:
        raise ValidationError(name, text, "a number", where=where) from None
    if not np.isfinite(value) or value < 0:
        raise ValidationError(name, text, "a number >= 0", where=where)
    return value * units[unit]


def read_workout(
    element: ET.Element, start_us: int, end_us: int, offset_min: int, device: int, where: str
) -> HeldWorkout:
    """One <Workout> (its dates read by the caller, as UTC microseconds), checked."""
    kind = element.get("workoutActivityType", "")
    activity = kind.removeprefix(PREFIX)
    if not kind.startswith(PREFIX) or not 0 < len(activity) <= CONTEXT_CHARS:
        raise ValidationError(
            "workoutActivityType", kind, f"{PREFIX} and a name of 1..{CONTEXT_CHARS}", where=where
        )
    lasted = (end_us - start_us) / 1e6
    if not 0 <= lasted <= 86_400:  # the Health app's typed-in workout may end as it starts
        raise ValidationError(
            "endDate",
            element.get("endDate"),
            "not before startDate, within a day of it",
            where=where,
        )
    minutes = _amount(element, "duration", DURATION_UNITS, where)
    if minutes * 60 > lasted:  # dates that span less than the workout (NaN: False)
        lasted = minutes * 60
    if lasted > 86_400:
        raise ValidationError("duration", element.get("duration"), "at most a day", where=where)
    energy = _amount(element, "totalEnergyBurned", ENERGY_UNITS, where)
    distance = _amount(element, "totalDistance", DISTANCE_UNITS, where)
    mean_rate = max_rate = np.nan
    distances = []
    # Its own children only: a WorkoutActivity (a segment) holds statistics of its part.
    for index, statistic in enumerate(element.findall(STATISTIC)):
        at = f"{where}, {STATISTIC} {index}"
        kind = statistic.get("type", "")
        if kind == HEART_RATE:
            mean_rate = _amount(statistic, "average", HEART_RATE_UNITS, at, "unit")
            max_rate = _amount(statistic, "maximum", HEART_RATE_UNITS, at, "unit")
        elif kind == ACTIVE_ENERGY and np.isnan(energy):
            energy = _amount(statistic, "sum", ENERGY_UNITS, at, "unit")
        elif kind.startswith(DISTANCE_PREFIX):
            distances.append(_amount(statistic, "sum", DISTANCE_UNITS, at, "unit"))
    if np.isnan(distance) and not np.isnan(distances).all():
        distance = float(np.nansum(distances))
    return HeldWorkout(
        end_us=end_us,
        offset_min=offset_min,
        duration_s=lasted,
        minutes=lasted / 60.0 if np.isnan(minutes) else minutes,
        activity=activity,
        energy_kcal=energy,
        distance_m=distance,
        device=device,
        mean_heart_rate=mean_rate,
        max_heart_rate=max_rate,
    )


def workouts_batch(
    held: list[HeldWorkout], device_names: np.ndarray, user_id: str, provider: str
) -> pd.DataFrame:
    """The workouts as a record batch (make_batch checks each against its session)."""
    if not held:
        return empty_batch()
    return make_batch(
        provider=provider,
        user_id=user_id,
        data_type=HealthDataType.WORKOUT,
        timestamps=pd.DatetimeIndex(
            np.array([w.end_us for w in held], dtype="datetime64[us]")
        ).tz_localize("UTC"),
        values=[w.minutes for w in held],
        unit="min",
        device_id=np.array([device_names[w.device] for w in held], dtype=object),
        utc_offset_min=np.array([w.offset_min for w in held], dtype="int64"),
        duration_s=[w.duration_s for w in held],
        samples=[
            workout_parts(
                energy=w.energy_kcal,
                distance=w.distance_m,
                mean_heart_rate=w.mean_heart_rate,
                max_heart_rate=w.max_heart_rate,
            )
            for w in held
        ],
        method=np.array(["manual" if w.manual else "device" for w in held], dtype=object),
        context=np.array([w.activity for w in held], dtype=object),
    )
