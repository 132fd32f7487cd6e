"""SampledData arithmetic the StructureDefinition states in prose only (R5 SampledData):

- data: decimals (the grammar of the decimal type, hence at most 17 digits after the point) or the
  codes E, U, L (others only with a codeMap), separated by single spaces;
- data points = dimensions x samples: a multiple of dimensions, and with `offsets` exactly
  dimensions x the number of offsets (one offset per sample);
- offsets: decimals, non-decreasing, none before the start (0);
- interval > 0; factor != 0; lowerLimit <= upperLimit; an origin with a value;
- time-based sampling (intervalUnit a UCUM unit of time) fits the resource's effectivePeriod: the
  last sample, (samples - 1) x interval or the last offset after the start, is not after its end.

sdd-1 (exactly one of interval and offsets) and per-1 (a period's end not before its start) are
FHIRPath invariants of the StructureDefinitions, checked by profile.py. Linear in the size of data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Final

from ohx_dagster.fhir.validation import ucum
from ohx_dagster.fhir.validation.problems import Problem, identity
from ohx_dagster.fhir.validation.structure import primitive_regex

_ANY_TOKEN: Final = re.compile(r"[^\s]+")  # with a codeMap: any codes
# Sample times are written to the microsecond: a last sample up to half of one after
# effectivePeriod.end is rounding, not a longer series.
_TOLERANCE_S: Final = 5e-7


@dataclass(frozen=True, slots=True)
class _Grammar:
    """A data value and an offset, from the decimal type's regex in the core package."""

    data_token: re.Pattern[str]
    decimal: re.Pattern[str]


@cache
def _grammar() -> _Grammar:
    decimal = primitive_regex("decimal")
    return _Grammar(data_token=re.compile(f"(?:{decimal})|[EUL]"), decimal=re.compile(decimal))


def _values(text: str, token: re.Pattern[str]) -> list[str] | None:
    """The space-separated values of a series, or None when one breaks the grammar. Each
    distinct value is matched once (a day of heart rate repeats a few hundred values)."""
    values = text.split(" ")
    if all(token.fullmatch(value) for value in set(values)):
        return values
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _moment(text: Any) -> datetime | None:
    """A dateTime with a time and an offset, or None (a date alone has no exact start)."""
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def sampled_data(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, SampledData) of every value[x] of type SampledData in a resource."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("SampledData") and isinstance(item, dict):
                yield f"{path}.{key}", item
            elif isinstance(item, dict | list):
                yield from sampled_data(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from sampled_data(item, f"{path}[{index}]")


def _bad_token(text: str, token: re.Pattern[str]) -> str:
    """Where a space-separated series first breaks its format, for the message."""
    if text != text.strip(" ") or "  " in text or any(c.isspace() and c != " " for c in text):
        return "values must be separated by single spaces (U+0020), none at the start or end"
    for index, item in enumerate(text.split(" ")):
        if not token.fullmatch(item):
            return f"value {index + 1} is {item!r}"
    return "malformed"


def _origin(sampled: dict[str, Any], path: str) -> Iterator[str]:
    origin = sampled.get("origin")
    if isinstance(origin, dict) and _number(origin.get("value")) is None:
        yield f"{path}.origin.value: missing; expected the value a data point of 0 stands for"


def _series(sampled: dict[str, Any], path: str) -> tuple[list[str], int | None, list[float]]:
    """(problems, number of samples, offsets) from data, dimensions and offsets."""
    problems: list[str] = []
    dimensions = sampled.get("dimensions")
    dimensions = dimensions if isinstance(dimensions, int) and dimensions > 0 else None
    data, offsets_text = sampled.get("data"), sampled.get("offsets")
    points: int | None = None
    grammar = _grammar()
    if isinstance(data, str) and data:
        token = _ANY_TOKEN if "codeMap" in sampled else grammar.data_token
        values = _values(data, token)
        if values is not None:
            points = len(values)
        else:
            where = _bad_token(data, token)
            problems.append(f"{path}.data: {where}; expected decimals or E, U, L")
    offsets: list[float] = []
    if isinstance(offsets_text, str) and offsets_text:
        values = _values(offsets_text, grammar.decimal)
        if values is not None:
            offsets = [float(v) for v in values]
        else:
            where = _bad_token(offsets_text, grammar.decimal)
            problems.append(f"{path}.offsets: {where}; expected decimals")
    for index in range(1, len(offsets)):
        if offsets[index] < offsets[index - 1]:
            problems.append(
                f"{path}.offsets: value {index + 1} ({offsets[index]:g}) is less than value "
                f"{index} ({offsets[index - 1]:g}); expected non-decreasing offsets"
            )
            break
    if offsets and offsets[0] < 0:
        problems.append(
            f"{path}.offsets: value 1 ({offsets[0]:g}) is negative; expected offsets from the "
            "start (0 or more)"
        )
    samples: int | None = None
    if points is not None and dimensions is not None:
        if offsets:
            if points != dimensions * len(offsets):
                problems.append(
                    f"{path}.data: {points} data points for {len(offsets)} offsets x {dimensions} "
                    f"dimension(s); expected dimensions x samples = {dimensions * len(offsets)}"
                )
            else:
                samples = len(offsets)
        elif points % dimensions:
            problems.append(
                f"{path}.data: {points} data points is not a multiple of dimensions "
                f"({dimensions}); expected dimensions x samples"
            )
        else:
            samples = points // dimensions
    return problems, samples, offsets


def _span(
    sampled: dict[str, Any], path: str, samples: int | None, offsets: list[float], period: Any
) -> Iterator[str]:
    """The last sample within effectivePeriod (time-based sampling only)."""
    if not isinstance(period, dict) or samples is None:
        return
    start, end = _moment(period.get("start")), _moment(period.get("end"))
    unit = sampled.get("intervalUnit")
    scale = ucum.seconds(unit) if isinstance(unit, str) else None
    if start is None or end is None or end < start or scale is None:
        return
    interval = _number(sampled.get("interval"))
    if offsets:
        last, how = offsets[-1] * scale, f"offset {offsets[-1]:g} {unit}"
    elif interval is not None and interval > 0:
        last = (samples - 1) * interval * scale
        how = f"{samples} samples every {interval:g} {unit}"
    else:
        return
    available = (end - start).total_seconds()
    if last > available + _TOLERANCE_S:
        yield (
            f"{path}: the last sample is {last:g} s after effectivePeriod.start ({how}), past "
            f"effectivePeriod.end at {available:g} s; expected every sample within effectivePeriod"
        )


def _check(sampled: dict[str, Any], path: str, period: Any) -> list[str]:
    problems = list(_origin(sampled, path))
    interval = sampled.get("interval")
    number = _number(interval)
    if "interval" in sampled and (number is None or number <= 0):
        problems.append(f"{path}.interval: {interval!r} found; expected a number greater than 0")
    if "factor" in sampled and _number(sampled["factor"]) == 0:
        problems.append(
            f"{path}.factor: 0 found; expected a non-zero factor (value = data x factor)"
        )
    low, high = _number(sampled.get("lowerLimit")), _number(sampled.get("upperLimit"))
    if low is not None and high is not None and low > high:
        problems.append(
            f"{path}.lowerLimit: {low:g} is above upperLimit ({high:g}); expected lowerLimit <= "
            "upperLimit"
        )
    found, samples, offsets = _series(sampled, path)
    problems += found
    problems += _span(sampled, path, samples, offsets, period)
    return problems


def sampled_data_problems(resource: dict[str, Any]) -> list[Problem]:
    resource_type, resource_id = identity(resource)
    period = resource.get("effectivePeriod")
    return [
        Problem(resource_type, resource_id, message, "sampled-data")
        for path, sampled in sampled_data(resource, resource_type)
        for message in _check(sampled, path, period)
    ]
