"""Unit conversion to the one canonical UCUM unit per type; unknown units are errors."""

from __future__ import annotations

import numpy as np
import pytest

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.core.units import CANONICAL_UNITS, accepted_units, to_canonical

MMHG_PA = 133.322387415


def test_every_type_has_one_canonical_unit_that_converts_to_itself() -> None:
    assert set(CANONICAL_UNITS) == {t.value for t in HealthDataType}
    for kind in HealthDataType:
        assert kind.canonical_unit in accepted_units(kind.value)
        values = np.array([1.5, 42.0])
        np.testing.assert_array_equal(to_canonical(kind.value, values, kind.canonical_unit), values)


@pytest.mark.parametrize(
    ("data_type", "unit", "given", "expected"),
    [
        # 1 lb is exactly 0.45359237 kg (international avoirdupois pound).
        ("weight", "lb", [1.0, 200.0], [0.45359237, 90.718474]),
        ("weight", "[lb_av]", [100.0], [45.359237]),
        ("weight", "g", [72_500.0], [72.5]),
        ("temperature", "degF", [32.0, 98.6, 212.0], [0.0, 37.0, 100.0]),
        ("temperature", "[degF]", [-40.0], [-40.0]),
        ("temperature", "K", [310.15], [37.0]),
        # 1 mmHg = 133.322387415 Pa (its definition), so 1 kPa = 1000 / 133.322387415 mmHg.
        ("blood_pressure", "kPa", [16.0, 1.0], [16_000 / MMHG_PA, 1_000 / MMHG_PA]),
        ("rr_intervals", "s", [0.8, 1.25], [800.0, 1250.0]),
        ("ecg", "mV", [1.2, -0.35], [1200.0, -350.0]),
        ("ecg", "V", [0.001], [1000.0]),
        ("spo2", "1", [0.97, 1.0], [97.0, 100.0]),
        ("heart_rate", "bpm", [60.0], [60.0]),
        ("heart_rate", "count/min", [72.0], [72.0]),
        ("steps", "{steps}", [1234.0], [1234.0]),
        # Glucose: 1 mmol/L is 18.0156 mg/dL (its molar mass, 180.156 g/mol), not a meter's 18.
        ("interstitial_glucose", "mmol/L", [5.5, 10.0], [99.0858, 180.156]),
        ("interstitial_glucose", "mg/dl", [120.0], [120.0]),
        ("blood_glucose", "mmol/l", [3.9], [70.26084]),
    ],
)
def test_provider_units_convert_to_canonical(
    data_type: str, unit: str, given: list[float], expected: list[float]
) -> None:
    np.testing.assert_allclose(to_canonical(data_type, given, unit), expected, rtol=1e-7)


def test_scalar_input_converts() -> None:
    assert float(to_canonical("weight", 2.2046226218, "lb")) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("data_type", "unit"),
    [
        ("weight", "stone"),
        ("weight", "mm[Hg]"),
        ("temperature", "F"),
        ("blood_pressure", "psi"),
        ("rr_intervals", "us"),
        ("ecg", "uv"),  # UCUM is case-sensitive
        ("spo2", "fraction"),
        ("heart_rate", "/s"),
        ("glucose", "mg/dL"),  # glucose (mmol) is not a type of this product: rejected too
    ],
)
def test_unknown_unit_is_an_error_naming_the_unit(data_type: str, unit: str) -> None:
    with pytest.raises(ValidationError) as caught:
        to_canonical(data_type, [1.0], unit)
    field = "data_type" if data_type == "glucose" else "unit"
    assert caught.value.field == field
    assert repr(unit if field == "unit" else data_type) in str(caught.value)
