"""This product's own rules, read from the one table of codes (ohx_dagster.fhir.codes):

- an Observation of a known code (heart rate, steps, RR, blood pressure, weight, temperature,
  SpO2, daily steps, the ECG waveform) states its values - valueQuantity, valueSampledData.origin,
  the systolic / diastolic components and the statistics components (all but count) - in a UCUM
  unit of the same dimension as the code's unit in codes.py (a heart rate in "kg" is wrong, in
  "/s" merely unusual);
- an ECG waveform is in a UCUM voltage (uV, mV, V ...): "microvolt" or "µV" are not UCUM;
- every SampledData.origin is a UCUM quantity (system and code: the unit of the whole series;
  R5 itself allows an origin without a unit, as HL7's example Observation-ekg has);
- an ECG DiagnosticReport (the EKG study code) is in the Electrocardiac section of v2-0074 (EC);
- a sleep session (93832-4 with an effectivePeriod) sleeps no longer than it lasts, and its
  stages and time awake add up to no more than it (each rounded to 0.01 min, the whole to a second
  more: dates are whole seconds); a workout's exercise duration (55411-3) likewise;
- a workout's energy, distance and heart rates are in units of their kind (kcal, m, /min).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from ohx_dagster.core.models import HealthDataType
from ohx_dagster.core.sessions import DATES_SLACK_S, WORKOUT_MEASURES
from ohx_dagster.fhir.codes import (
    DAILY_STEPS,
    DIASTOLIC,
    ECG_SECTION,
    ECG_WAVEFORM,
    SLEEP_COMPONENTS,
    STATISTICS,
    SYSTOLIC,
    TYPE_CODES,
    WORKOUT_MEMBERS,
    Code,
)
from ohx_dagster.fhir.timefmt import parse_us
from ohx_dagster.fhir.validation import ucum
from ohx_dagster.fhir.validation.problems import Problem, identity
from ohx_dagster.fhir.validation.sampled import sampled_data


def _units() -> dict[tuple[str, str], tuple[str, str]]:
    """(system, code) -> (UCUM unit, what it measures) of every code the product publishes."""
    units: dict[tuple[str, str], tuple[str, str]] = {}
    for codes in TYPE_CODES.values():
        for code in (codes.code, *codes.also):
            units[(code.system, code.code)] = (codes.unit, f"{code.code} {code.display}")
    bp = TYPE_CODES[HealthDataType.BLOOD_PRESSURE].unit
    steps = TYPE_CODES[HealthDataType.STEPS].unit
    pairs: tuple[tuple[Code, str], ...] = ((SYSTOLIC, bp), (DIASTOLIC, bp), (DAILY_STEPS, steps))
    for code, unit in pairs:
        units[(code.system, code.code)] = (unit, f"{code.code} {code.display}")
    units[(ECG_WAVEFORM.system, ECG_WAVEFORM.code)] = (ucum.VOLT, "an ECG waveform")
    sleep = TYPE_CODES[HealthDataType.SLEEP].unit
    for field, stage_codes in SLEEP_COMPONENTS.items():
        if field != "awakenings":  # a count (valueInteger)
            for code in stage_codes:
                units[(code.system, code.code)] = (sleep, f"{code.code} {code.display}")
    for name, code in WORKOUT_MEMBERS.items():
        units[(code.system, code.code)] = (WORKOUT_MEASURES[name][0], f"{code.code} {code.display}")
    return units


UNITS: Final = _units()
_ECG_WAVEFORM: Final = (ECG_WAVEFORM.system, ECG_WAVEFORM.code)
_ECG_STUDY: Final = TYPE_CODES[HealthDataType.ECG].code
_UNCOUNTED: Final = "count"  # the count statistic is a valueInteger, no unit
_SLEEP: Final = TYPE_CODES[HealthDataType.SLEEP].code
_EXERCISE: Final = TYPE_CODES[HealthDataType.WORKOUT].code
# What a sleep session's components that are parts of its time add up to (awakenings count).
_SLEEP_PARTS: Final = frozenset(
    (code.system, code.code)
    for field, codes in SLEEP_COMPONENTS.items()
    if field != "awakenings"
    for code in codes
)
_ROUNDING_MIN: Final = 0.01


def _expected(concept: Any) -> tuple[str, str] | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding", []):
        key = (coding.get("system"), coding.get("code"))
        if key in UNITS:
            return key
    return None


def _is_statistic(concept: Any) -> bool:
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    return any(c.get("system") == STATISTICS and c.get("code") != _UNCOUNTED for c in codings)


def _quantities(element: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(element.get("valueQuantity"), dict):
        yield f"{path}.valueQuantity", element["valueQuantity"]
    sampled = element.get("valueSampledData")
    if isinstance(sampled, dict) and isinstance(sampled.get("origin"), dict):
        yield f"{path}.valueSampledData.origin", sampled["origin"]


def _unit_problem(quantity: dict[str, Any], path: str, key: tuple[str, str]) -> str | None:
    unit, label = UNITS[key]
    system, code = quantity.get("system"), quantity.get("code")
    if system != ucum.SYSTEM:  # an origin's system: _origins says it
        if path.endswith(".origin"):
            return None
        return f"{path}.system: {system!r} found; expected {ucum.SYSTEM} (a UCUM unit of {label})"
    if not isinstance(code, str) or not ucum.is_valid(code):
        return None  # terminology.py names the invalid or missing UCUM code
    if key == _ECG_WAVEFORM:
        if ucum.commensurable(code, unit) is False or "B[" in code:
            return (
                f"{path}.code: {code!r} is not a UCUM voltage; expected uV, mV or V "
                "(an ECG waveform is an electric potential)"
            )
        return None
    if ucum.commensurable(code, unit) is False:
        return (
            f"{path}.code: {code!r} ({ucum.dimension(code)}) is not a unit of {label}; expected "
            f"a unit of the dimension of {unit!r} ({ucum.dimension(unit)})"
        )
    return None


def _observation(resource: dict[str, Any]) -> Iterator[str]:
    own = _expected(resource.get("code"))
    if own is not None:
        for path, quantity in _quantities(resource, "Observation"):
            yield from filter(None, [_unit_problem(quantity, path, own)])
    for index, component in enumerate(resource.get("component", [])):
        if not isinstance(component, dict):
            continue
        key = _expected(component.get("code"))
        if key is None and own is not None and _is_statistic(component.get("code")):
            key = own
        if key is not None:
            for path, quantity in _quantities(component, f"Observation.component[{index}]"):
                yield from filter(None, [_unit_problem(quantity, path, key)])
    yield from _session(resource)


def _has(concept: Any, code: Code) -> bool:
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    return any((c.get("system"), c.get("code")) == (code.system, code.code) for c in codings)


def _minutes(quantity: Any) -> float | None:
    if not isinstance(quantity, dict) or not isinstance(quantity.get("code"), str):
        return None
    factor = ucum.seconds(quantity["code"])
    value = quantity.get("value")
    if factor is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value * factor / 60.0


def _session(resource: dict[str, Any]) -> Iterator[str]:
    """A night's sleep or a workout's exercise: no longer than its period, a night's stages
    within it."""
    period = resource.get("effectivePeriod")
    sleep = _has(resource.get("code"), _SLEEP)
    if not (sleep or _has(resource.get("code"), _EXERCISE)) or not isinstance(period, dict):
        return
    try:
        lasted = (parse_us(period["end"]) - parse_us(period["start"])) / 60e6
    except (KeyError, TypeError, ValueError):
        return  # the structure check names a period without both ends
    spent = _minutes(resource.get("valueQuantity"))
    if spent is not None and spent > lasted + _ROUNDING_MIN + DATES_SLACK_S / 60.0:
        doing = "asleep" if sleep else "exercising"
        yield (
            f"Observation.valueQuantity: {spent:g} min {doing} in a session of {lasted:g} min "
            "(effectivePeriod); expected at most the session"
        )
    if sleep:
        yield from _stages(resource, lasted)


def _stages(resource: dict[str, Any], lasted: float) -> Iterator[str]:
    parts = [
        (index, _minutes(component.get("valueQuantity")))
        for index, component in enumerate(resource.get("component", []))
        if isinstance(component, dict)
        and any(
            (c.get("system"), c.get("code")) in _SLEEP_PARTS
            for c in component.get("code", {}).get("coding", [])
        )
    ]
    known = [(index, minutes) for index, minutes in parts if minutes is not None]
    total = sum(minutes for _, minutes in known)
    if total > lasted + _ROUNDING_MIN * len(known):
        indexes = ", ".join(str(index) for index, _ in known)
        yield (
            f"Observation.component: stages and time awake (components {indexes}) add up to "
            f"{total:g} min in a session of {lasted:g} min (effectivePeriod); expected at most "
            "the session"
        )


def _report(resource: dict[str, Any]) -> Iterator[str]:
    codings = resource.get("code", {}).get("coding", [])
    if not any(
        (c.get("system"), c.get("code")) == (_ECG_STUDY.system, _ECG_STUDY.code) for c in codings
    ):
        return
    categories = [c for concept in resource.get("category", []) for c in concept.get("coding", [])]
    if not any(
        (c.get("system"), c.get("code")) == (ECG_SECTION.system, ECG_SECTION.code)
        for c in categories
    ):
        found = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in categories) or "none"
        yield (
            f"DiagnosticReport.category: {found} found; expected {ECG_SECTION.system}#"
            f"{ECG_SECTION.code} ({ECG_SECTION.display}) for an ECG report ({_ECG_STUDY.code})"
        )


def _origins(resource: dict[str, Any], resource_type: str) -> Iterator[str]:
    for path, sampled in sampled_data(resource, resource_type):
        origin = sampled.get("origin")
        if not isinstance(origin, dict):
            continue
        if origin.get("system") != ucum.SYSTEM:
            yield f"{path}.origin.system: {origin.get('system')!r} found; expected {ucum.SYSTEM}"
        if not isinstance(origin.get("code"), str):
            yield f"{path}.origin.code: missing; expected the UCUM code of the data's unit"


def product_problems(resource: dict[str, Any]) -> list[Problem]:
    resource_type, resource_id = identity(resource)
    checks = {"Observation": _observation, "DiagnosticReport": _report}
    messages = list(_origins(resource, resource_type))
    check = checks.get(resource_type)
    if check is not None:
        messages += check(resource)
    return [Problem(resource_type, resource_id, m, "product") for m in messages]
