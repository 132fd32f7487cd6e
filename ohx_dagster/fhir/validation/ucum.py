"""UCUM (http://unitsofmeasure.org) codes: valid syntax and known units, and their dimensions.

Uses ucumvert (PyPI, pinned): a parser for the full UCUM grammar whose atoms and prefixes come from
the official ucum-essence.xml (UCUM 2.2) shipped in the package, and its pint registry of the UCUM
units for dimensions ("uV" is a voltage, "/min" a frequency). Case matters, prefixes apply to
metric units only, annotations ({beats}) carry no meaning: exactly UCUM's rules. Results are
cached per code, so a partition's few distinct units are parsed once.

Building ucumvert's parser and pint registry costs about a CPU-second in every process that
validates (each Dagster run is a process). The units this product writes are answered from
KNOWN instead, computed once from ucumvert (tests/fhir/test_ucum.py checks each answer against
the library, and that validating the product's resources never builds it); any other code, as in
a resource from elsewhere, asks the library.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any, Final

SYSTEM: Final = "http://unitsofmeasure.org"
VOLT: Final = "V"
SECOND: Final = "s"


# code -> (problem, dimension, seconds): ucumvert's answers for the units the product writes (the
# table of data types' canonical units, the ECG's and the SampledData periods' units, a workout's
# measures).
KNOWN: Final[dict[str, tuple[str | None, str | None, float | None]]] = {
    "%": (None, "1", None),
    "1": (None, "1", None),
    "/min": (None, "1 / [time]", None),
    "Cel": (None, "[temperature]", None),
    "kg": (None, "[mass]", None),
    "mg/dL": (None, "[mass] / [length] ** 3", None),
    "mm[Hg]": (None, "[mass] / [length] / [time] ** 2", None),
    "V": (None, "[mass] * [length] ** 2 / [time] ** 3 / [current]", None),
    "mV": (None, "[mass] * [length] ** 2 / [time] ** 3 / [current]", None),
    "uV": (None, "[mass] * [length] ** 2 / [time] ** 3 / [current]", None),
    "s": (None, "[time]", 1.0),
    "ms": (None, "[time]", 0.001),
    "min": (None, "[time]", 60.0),
    "h": (None, "[time]", 3600.0),
    "d": (None, "[time]", 86400.0),
    "kcal": (None, "[mass] * [length] ** 2 / [time] ** 2", None),
    "m": (None, "[length]", None),
}


@cache
def _parser() -> Any:
    from ucumvert import get_ucum_parser

    return get_ucum_parser()


@cache
def _registry() -> Any:
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=4096)
def problem(code: str) -> str | None:
    """Why `code` is not a valid UCUM unit code, or None when it is one."""
    if code in KNOWN:
        return KNOWN[code][0]
    return _library_problem(code)


def _library_problem(code: str) -> str | None:
    from ucumvert import InvalidUcumError, parse_ucum

    if not code:
        return "an empty code is not a UCUM unit"
    try:
        parse_ucum(code, _parser())
    except InvalidUcumError as exc:
        first = str(exc).splitlines()[0].rstrip(".")
        return first.split(": ", 1)[1] if ": " in first else first
    return None


def is_valid(code: str) -> bool:
    return problem(code) is None


@lru_cache(maxsize=4096)
def _quantity(code: str) -> Any:
    """The pint quantity of one `code` (None: invalid, or a unit pint cannot express)."""
    if problem(code) is not None:
        return None
    try:
        quantity = _registry().from_ucum(code)
    except Exception:  # a valid UCUM unit without a pint equivalent: dimension unknown
        return None
    # An annotation alone ({steps}) comes back as a parse token, not a quantity: unknown too.
    return quantity if hasattr(quantity, "dimensionality") else None


def _library_dimension(code: str) -> str | None:
    quantity = _quantity(code)
    if quantity is None:
        return None
    text = str(quantity.dimensionality)
    return text if text != "dimensionless" else "1"


def dimension(code: str) -> str | None:
    """The dimension of a valid code as text ("[length] ** 2 / [time]"; "1" for none), or None."""
    if code in KNOWN:
        return KNOWN[code][1]
    return _library_dimension(code)


def commensurable(code: str, other: str) -> bool | None:
    """Whether two codes measure the same kind of quantity (uV and mV: yes; uV and mm[Hg]: no);
    None when either is not a valid UCUM code or has no known dimension."""
    if code in KNOWN and other in KNOWN:
        known, other_known = KNOWN[code][1], KNOWN[other][1]
        return None if known is None or other_known is None else known == other_known
    first, second = _quantity(code), _quantity(other)
    if first is None or second is None:
        return None
    return bool(first.dimensionality == second.dimensionality)


@lru_cache(maxsize=256)
def seconds(code: str) -> float | None:
    """How many seconds one `code` is ("ms": 0.001), or None when it is not a unit of time."""
    if code in KNOWN:
        return KNOWN[code][2]
    return _library_seconds(code)


def _library_seconds(code: str) -> float | None:
    if not commensurable(code, SECOND):
        return None
    quantity = _quantity(code)
    return float(quantity.to("second").magnitude)
