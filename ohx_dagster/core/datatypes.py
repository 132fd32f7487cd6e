"""The one table of data types: every fact the product knows about a type, in one entry.

Adding a type is one entry here plus each provider's mapping (docs/extending.md). The rest of the
code reads its facts from this table, never spells them again:

- the canonical UCUM unit, and the unit spellings providers send with their conversion
  (ohx_dagster/core/units.py);
- the hard limits (rejected on ingest) and the plausible range (the quality check looks) in the
  canonical unit (ohx_dagster/core/models.py);
- its shape: a series of many samples (stored as hourly chunks, published as SampledData), a spot
  reading (one Observation each), a waveform (ECG: a recording, never aggregated) or a session (a
  night's sleep, a workout: a period with its parts, published as its own, never aggregated);
- how it aggregates: the statistic an aggregate leads with (a sum of steps, a mean of the rest)
  and the decimals it is published with; for readings, the difference under which two apps'
  readings a minute apart are one reading (ohx_dagster/publish/aggregate.py);
- its FHIR face: its code (LOINC, or a code system of this project where LOINC has none), UCUM
  display, observation category and the R5 profile it conforms to (ohx_dagster/fhir/codes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np

Convert = Callable[[np.ndarray], np.ndarray]

LOINC_SYSTEM: Final = "http://loinc.org"
# This project's code system for a measure LOINC has no code for (RMSSD).
HRV_SYSTEM: Final = "urn:ohx:fhir:heart-rate-variability"


class HealthDataType(StrEnum):
    HEART_RATE = "heart_rate"
    STEPS = "steps"
    RR_INTERVALS = "rr_intervals"
    ECG = "ecg"
    BLOOD_PRESSURE = "blood_pressure"
    WEIGHT = "weight"
    TEMPERATURE = "temperature"
    SPO2 = "spo2"
    RESPIRATORY_RATE = "respiratory_rate"
    HRV_SDNN = "hrv_sdnn"
    HRV_RMSSD = "hrv_rmssd"
    INTERSTITIAL_GLUCOSE = "interstitial_glucose"
    BLOOD_GLUCOSE = "blood_glucose"
    SLEEP = "sleep"
    WORKOUT = "workout"

    @property
    def canonical_unit(self) -> str:
        return DATA_TYPES[self].unit


class Shape(StrEnum):
    SERIES = "series"  # many samples: hourly chunks, SampledData series
    READING = "reading"  # a spot reading: one Observation each
    WAVEFORM = "waveform"  # a recording (ECG): its own Observation and report, no statistics
    # A period with parts (a night's sleep and its stages): stamped at its end, the moment it is
    # known whole, so it belongs to the local day it ends on (ohx_dagster/core/sessions.py).
    SESSION = "session"


@dataclass(frozen=True, slots=True)
class DataType:
    unit: str  # canonical UCUM code
    unit_display: str
    spellings: Mapping[str, Convert]  # units providers send -> the canonical unit
    hard_limits: tuple[float, float]  # outside: cannot come from a working device
    plausible: tuple[float, float]  # outside: possible, rare enough that a person should look
    shape: Shape
    code: tuple[str, str]  # (code, display) in `system`
    category: str  # observation-category code
    profile: str | None = None  # the R5 StructureDefinition it conforms to, by its last segment
    also_loinc: tuple[tuple[str, str], ...] = ()  # further codings the profile asks for
    decimals: int | None = None  # of a published statistic (None: never aggregated)
    headline: str = "mean"  # the statistic an aggregate leads with
    duplicate_tolerance: float | None = None  # readings: two apps' readings within are one
    system: str = LOINC_SYSTEM  # of `code`

    @property
    def aggregated(self) -> bool:
        return self.shape in (Shape.SERIES, Shape.READING)


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _times(factor: float) -> Convert:
    return lambda values: values * factor


def _fahrenheit(values: np.ndarray) -> np.ndarray:
    return (values - 32.0) * 5.0 / 9.0


def _kelvin(values: np.ndarray) -> np.ndarray:
    return values - 273.15


_POUND: Final = 0.45359237
# mg/dL per mmol/L of glucose: its molar mass, 180.156 g/mol, in mg/dL per mmol/L. The exact factor,
# not the 18 meters round to: mmol/L readings land within 0.001 mg/dL of their mg/dL twins.
GLUCOSE_MG_DL_PER_MMOL_L: Final = 18.0156
_GLUCOSE_SPELLINGS: Final[dict[str, Convert]] = {
    "mg/dL": _same,
    "mg/dl": _same,
    "mmol/L": _times(GLUCOSE_MG_DL_PER_MMOL_L),
    "mmol/l": _times(GLUCOSE_MG_DL_PER_MMOL_L),
}

# A session's time (asleep, exercising): minutes, as the IGs state durations.
_DURATION_SPELLINGS: Final[dict[str, Convert]] = {
    "min": _same,
    "s": _times(1.0 / 60.0),
    "h": _times(60.0),
}

T = HealthDataType
DATA_TYPES: Final[dict[HealthDataType, DataType]] = {
    T.HEART_RATE: DataType(
        unit="/min",
        unit_display="beats/minute",
        spellings={s: _same for s in ("/min", "{beats}/min", "bpm", "count/min", "beats/min")},
        hard_limits=(20.0, 300.0),
        plausible=(25.0, 230.0),
        shape=Shape.SERIES,
        code=("8867-4", "Heart rate"),
        category="vital-signs",
        profile="heartrate",
        decimals=1,
    ),
    T.STEPS: DataType(
        unit="1",
        unit_display="steps",
        spellings={s: _same for s in ("1", "{steps}", "count", "steps")},
        hard_limits=(0.0, 100_000.0),
        plausible=(0.0, 60_000.0),
        shape=Shape.SERIES,
        code=("55423-8", "Number of steps in unspecified time Pedometer"),
        category="activity",
        decimals=1,
        headline="sum",  # a sum of counts; a mean of steps means little
    ),
    # No vital-signs profile: that profile binds every quantity to ucum-vitals-common, which has
    # no unit of time, so an RR interval in ms cannot conform to it.
    T.RR_INTERVALS: DataType(
        unit="ms",
        unit_display="ms",
        spellings={"ms": _same, "s": _times(1000.0)},
        hard_limits=(150.0, 3_000.0),
        plausible=(250.0, 2_400.0),
        shape=Shape.SERIES,
        code=("8637-1", "R-R interval by EKG"),
        category="vital-signs",
        decimals=1,
    ),
    T.ECG: DataType(
        unit="uV",
        unit_display="microvolt",
        spellings={"uV": _same, "mV": _times(1000.0), "V": _times(1_000_000.0)},
        hard_limits=(-100_000.0, 100_000.0),
        plausible=(-20_000.0, 20_000.0),
        shape=Shape.WAVEFORM,
        code=("11524-6", "EKG study"),
        category="procedure",
    ),
    T.BLOOD_PRESSURE: DataType(
        unit="mm[Hg]",
        unit_display="mmHg",
        spellings={"mm[Hg]": _same, "mmHg": _same, "kPa": _times(7.500615758456563)},
        hard_limits=(20.0, 300.0),
        plausible=(30.0, 260.0),
        shape=Shape.READING,
        code=("85354-9", "Blood pressure panel with all children optional"),
        category="vital-signs",
        profile="bp",
        decimals=1,
        duplicate_tolerance=1.0,  # a cuff's resolution
    ),
    T.WEIGHT: DataType(
        unit="kg",
        unit_display="kg",
        spellings={
            "kg": _same,
            "g": _times(0.001),
            "[lb_av]": _times(_POUND),
            "lb": _times(_POUND),
            "lbs": _times(_POUND),
            "[st_av]": _times(6.35029318),
        },
        hard_limits=(0.5, 650.0),
        plausible=(1.0, 400.0),
        shape=Shape.READING,
        code=("29463-7", "Body weight"),
        category="vital-signs",
        profile="bodyweight",
        decimals=2,
        duplicate_tolerance=0.1,  # a home scale's resolution
    ),
    T.TEMPERATURE: DataType(
        unit="Cel",
        unit_display="C",
        spellings={
            "Cel": _same,
            "degC": _same,
            "[degF]": _fahrenheit,
            "degF": _fahrenheit,
            "K": _kelvin,
        },
        hard_limits=(25.0, 45.0),
        plausible=(30.0, 43.0),
        shape=Shape.READING,
        code=("8310-5", "Body temperature"),
        category="vital-signs",
        profile="bodytemp",
        decimals=2,
        duplicate_tolerance=0.1,  # a thermometer's resolution
    ),
    T.SPO2: DataType(
        unit="%",
        unit_display="%",
        spellings={"%": _same, "1": _times(100.0)},
        hard_limits=(50.0, 100.0),
        plausible=(70.0, 100.0),
        shape=Shape.READING,
        code=("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        category="vital-signs",
        profile="oxygensat",
        also_loinc=(("2708-6", "Oxygen saturation in Arterial blood"),),
        decimals=1,
        duplicate_tolerance=1.0,  # a pulse oximeter's resolution
    ),
    # Breaths a minute, as watches and rings estimate it during sleep: the R5 vital-signs profile
    # resprate (9279-1, /min).
    T.RESPIRATORY_RATE: DataType(
        unit="/min",
        unit_display="breaths/minute",
        spellings={s: _same for s in ("/min", "{breaths}/min", "count/min", "breaths/min")},
        hard_limits=(1.0, 150.0),
        plausible=(4.0, 60.0),
        shape=Shape.SERIES,
        code=("9279-1", "Respiratory rate"),
        category="vital-signs",
        profile="resprate",
        decimals=1,
    ),
    # Heart-rate variability as the standard deviation of the beat intervals (SDNN), one value
    # a measurement (Apple Watch: a minute's beats). Only SDNN is this code: RMSSD, which other
    # providers report, is another statistic and never published under it. No R5 profile.
    T.HRV_SDNN: DataType(
        unit="ms",
        unit_display="ms",
        spellings={"ms": _same, "s": _times(1000.0)},
        hard_limits=(0.0, 1_000.0),
        plausible=(3.0, 300.0),
        shape=Shape.READING,
        code=("80404-7", "R-R interval.standard deviation (Heart rate variability)"),
        category="vital-signs",
        decimals=1,
        duplicate_tolerance=0.5,  # two apps' copies of one reading, rounded differently
    ),
    # The root mean square of successive beat-interval differences, which Oura and Fitbit report
    # as HRV. LOINC has no code for it: this project's own code, never 80404-7 (that is SDNN).
    T.HRV_RMSSD: DataType(
        unit="ms",
        unit_display="ms",
        spellings={"ms": _same, "s": _times(1000.0)},
        hard_limits=(0.0, 1_000.0),
        plausible=(3.0, 300.0),
        shape=Shape.READING,
        code=("rmssd", "Heart rate variability, root mean square of successive RR differences"),
        system=HRV_SYSTEM,
        category="vital-signs",
        decimals=1,
        duplicate_tolerance=0.5,
    ),
    # Glucose from a continuous monitor: a reading of interstitial fluid every 5 minutes, as the
    # CGM IG (hl7.fhir.uv.cgm 1.0.0) codes its sensor readings (99504-3, mg/dL; category
    # laboratory). CGMs report 40..400 mg/dL; beyond, "low" or "high", not a number.
    T.INTERSTITIAL_GLUCOSE: DataType(
        unit="mg/dL",
        unit_display="mg/dL",
        spellings=_GLUCOSE_SPELLINGS,
        hard_limits=(10.0, 1_000.0),
        plausible=(40.0, 400.0),
        shape=Shape.SERIES,
        code=("99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
        category="laboratory",
        decimals=0,
    ),
    # Glucose in blood from a meter (a finger stick) or typed in: one reading each. 2339-0 is
    # blood glucose whatever the method (US Core's example codes a meter's reading with it).
    # Meters read up to 600 mg/dL; a hyperglycaemic crisis can exceed that.
    T.BLOOD_GLUCOSE: DataType(
        unit="mg/dL",
        unit_display="mg/dL",
        spellings=_GLUCOSE_SPELLINGS,
        hard_limits=(10.0, 2_000.0),
        plausible=(20.0, 600.0),
        shape=Shape.READING,
        code=("2339-0", "Glucose [Mass/volume] in Blood"),
        category="laboratory",
        decimals=0,
        duplicate_tolerance=0.5,
    ),
    # A sleep session: its value the time asleep (every stage but awake), in minutes, as the
    # Personal Health Records IG (hl7.fhir.uv.phr) states sleep durations; its stages as
    # intervals (ohx_dagster/core/sessions.py); published as one Observation, 93832-4 "Sleep
    # duration", category social-history as the IG's sleep examples, on the night it ends.
    T.SLEEP: DataType(
        unit="min",
        unit_display="min",
        spellings=_DURATION_SPELLINGS,
        hard_limits=(0.0, 1_440.0),
        plausible=(0.0, 960.0),
        shape=Shape.SESSION,
        code=("93832-4", "Sleep duration"),
        category="social-history",
        decimals=2,  # of a minute: 0.6 s, finer than any provider's stages
    ),
    # A workout: its value the time exercising in minutes (Physical Activity IG's 55411-3
    # "Exercise duration"), the activity as the provider names it in its context, its energy,
    # distance and heart rate as its parts (ohx_dagster/core/sessions.py); published as the IG's
    # activity group, a panel of one Observation per measure (ohx_dagster/fhir/workouts.py).
    T.WORKOUT: DataType(
        unit="min",
        unit_display="min",
        spellings=_DURATION_SPELLINGS,
        hard_limits=(0.0, 1_440.0),
        plausible=(0.0, 600.0),
        shape=Shape.SESSION,
        code=("55411-3", "Exercise duration"),
        category="activity",
        decimals=2,
    ),
}


def of_shape(shape: Shape) -> tuple[HealthDataType, ...]:
    """The types of one shape, in the table's order."""
    return tuple(kind for kind, facts in DATA_TYPES.items() if facts.shape is shape)
