"""One canonical UCUM unit per health data type, and conversion from the units providers send.

Every provider value passes through `to_canonical` on ingest; a unit that is not in the table is an
error, never a silent pass-through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np

from ohx_dagster.errors import ValidationError

# Canonical UCUM unit of each data type (DESIGN.md: data model and invariants).
CANONICAL_UNITS: Final[dict[str, str]] = {
    "heart_rate": "/min",
    "steps": "1",
    "rr_intervals": "ms",
    "ecg": "uV",
    "blood_pressure": "mm[Hg]",
    "weight": "kg",
    "temperature": "Cel",
    "spo2": "%",
}


def _scale(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: values * factor


def _identity(values: np.ndarray) -> np.ndarray:
    return values


# Per data type: the spellings providers use (UCUM, HealthKit, vendor APIs) -> to canonical.
_CONVERSIONS: Final[dict[str, dict[str, Callable[[np.ndarray], np.ndarray]]]] = {
    "heart_rate": {
        "/min": _identity,
        "{beats}/min": _identity,
        "bpm": _identity,
        "count/min": _identity,
        "beats/min": _identity,
    },
    "steps": {"1": _identity, "{steps}": _identity, "count": _identity, "steps": _identity},
    "rr_intervals": {"ms": _identity, "s": _scale(1000.0)},
    "ecg": {"uV": _identity, "mV": _scale(1000.0), "V": _scale(1_000_000.0)},
    "blood_pressure": {
        "mm[Hg]": _identity,
        "mmHg": _identity,
        "kPa": _scale(7.500615758456563),
    },
    "weight": {
        "kg": _identity,
        "g": _scale(0.001),
        "[lb_av]": _scale(0.45359237),
        "lb": _scale(0.45359237),
        "lbs": _scale(0.45359237),
        "[st_av]": _scale(6.35029318),
    },
    "temperature": {
        "Cel": _identity,
        "degC": _identity,
        "[degF]": lambda v: (v - 32.0) * 5.0 / 9.0,
        "degF": lambda v: (v - 32.0) * 5.0 / 9.0,
        "K": lambda v: v - 273.15,
    },
    "spo2": {"%": _identity, "1": _scale(100.0)},
}


def to_canonical(data_type: str, values: np.ndarray | float, unit: str) -> np.ndarray:
    """Convert `values` given in `unit` to the canonical unit of `data_type`."""
    try:
        table = _CONVERSIONS[data_type]
    except KeyError:
        raise ValidationError("data_type", data_type, f"one of {sorted(_CONVERSIONS)}") from None
    try:
        convert = table[unit]
    except KeyError:
        raise ValidationError(
            "unit", unit, f"a unit for {data_type}: one of {sorted(table)}"
        ) from None
    return convert(np.asarray(values, dtype="float64"))


def accepted_units(data_type: str) -> list[str]:
    return sorted(_CONVERSIONS[data_type])
