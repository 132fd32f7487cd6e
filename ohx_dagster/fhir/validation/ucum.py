"""UCUM (http://unitsofmeasure.org) codes: valid syntax and known units, and their dimensions.

Uses ucumvert (PyPI, pinned): a parser for the full UCUM grammar whose atoms and prefixes come from
the official ucum-essence.xml (UCUM 2.2) shipped in the package, and its pint registry of the UCUM
units for dimensions ("uV" is a voltage, "/min" a frequency). Case matters, prefixes apply to
metric units only, annotations ({beats}) carry no meaning: exactly UCUM's rules. Results are
cached per code, so a partition's few distinct units are parsed once.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any, Final

SYSTEM: Final = "http://unitsofmeasure.org"
VOLT: Final = "V"
SECOND: Final = "s"


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
        return _registry().from_ucum(code)
    except Exception:  # a valid UCUM unit without a pint equivalent: dimension unknown
        return None


def dimension(code: str) -> str | None:
    """The dimension of a valid code as text ("[length] ** 2 / [time]"; "1" for none), or None."""
    quantity = _quantity(code)
    if quantity is None:
        return None
    text = str(quantity.dimensionality)
    return text if text != "dimensionless" else "1"


def commensurable(code: str, other: str) -> bool | None:
    """Whether two codes measure the same kind of quantity (uV and mV: yes; uV and mm[Hg]: no);
    None when either is not a valid UCUM code or has no known dimension."""
    first, second = _quantity(code), _quantity(other)
    if first is None or second is None:
        return None
    return bool(first.dimensionality == second.dimensionality)


@lru_cache(maxsize=256)
def seconds(code: str) -> float | None:
    """How many seconds one `code` is ("ms": 0.001), or None when it is not a unit of time."""
    if not commensurable(code, SECOND):
        return None
    quantity = _quantity(code)
    return float(quantity.to("second").magnitude)
