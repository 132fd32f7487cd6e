"""One canonical UCUM unit per health data type, and conversion from the units providers send.

Every provider value passes through `to_canonical` on ingest; a unit that is not in the table is an
error, never a silent pass-through.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from ohx_dagster.core.datatypes import DATA_TYPES
from ohx_dagster.core.errors import ValidationError

# Canonical UCUM unit of each data type, and the spellings providers use (UCUM, HealthKit, vendor
# APIs) with their conversion: the table of data types (ohx_dagster/core/datatypes.py).
CANONICAL_UNITS: Final[dict[str, str]] = {k.value: f.unit for k, f in DATA_TYPES.items()}
_CONVERSIONS: Final = {k.value: dict(f.spellings) for k, f in DATA_TYPES.items()}


def to_canonical(data_type: str, values: ArrayLike, unit: str) -> np.ndarray:
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
