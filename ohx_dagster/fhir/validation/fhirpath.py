"""FHIRPath for the StructureDefinitions' invariants: fhirpathpy, plus the functions it lacks."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any, Final


def _has_value(inputs: list[Any]) -> list[bool]:
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict)]


def _boundary(high: bool) -> Callable[[list[Any]], list[float]]:
    """lowBoundary() / highBoundary() of a FHIR date or dateTime as epoch seconds (FHIRPath 3.0
    functions fhirpathpy lacks; per-1 compares a Period's start and end with them)."""

    def boundary(inputs: list[Any]) -> list[float]:
        if len(inputs) != 1 or not isinstance(inputs[0], str):
            return []
        text = inputs[0]
        date_part, _, rest = text.partition("T")
        pieces = date_part.split("-")
        year, month, day = int(pieces[0]), 1, 1
        if len(pieces) > 1:
            month = int(pieces[1])
        if len(pieces) > 2:
            day = int(pieces[2])
        if len(pieces) < 3 and high:  # the last day of the year / month
            month = 12 if len(pieces) == 1 else month
            day = calendar.monthrange(year, month)[1]
        clock, zone = rest, None
        for sign in ("Z", "+", "-"):
            if sign in rest:
                clock, _, tail = rest.partition(sign)
                zone = "+00:00" if sign == "Z" else sign + tail
                break
        if not clock:
            clock = "23:59:59.999999" if high else "00:00:00"
        if zone is None:  # a time without an offset could be anywhere from +14:00 to -12:00
            zone = "-12:00" if high else "+14:00"
        moment = datetime.fromisoformat(f"{year:04d}-{month:02d}-{day:02d}T{clock}{zone}")
        return [moment.timestamp()]

    return boundary


def _html_checks(inputs: list[Any]) -> list[bool]:
    """htmlChecks() of txt-1/txt-2: well-formed XHTML in a div, no scripts or event handlers."""
    from xml.etree import ElementTree

    if len(inputs) != 1 or not isinstance(inputs[0], str):
        return [False]
    try:
        root = ElementTree.fromstring(inputs[0])
    except ElementTree.ParseError:
        return [False]
    xhtml = "{http://www.w3.org/1999/xhtml}"
    if root.tag != f"{xhtml}div":
        return [False]
    for node in root.iter():
        if node.tag in (f"{xhtml}script", f"{xhtml}object", f"{xhtml}applet"):
            return [False]
        if any(name.lower().startswith("on") for name in node.attrib):
            return [False]
    return [True]


FUNCTIONS: Final = {
    "htmlChecks": {"fn": _html_checks, "arity": {0: []}},
    "hasValue": {"fn": _has_value, "arity": {0: []}},
    "lowBoundary": {"fn": _boundary(high=False), "arity": {0: []}},
    "highBoundary": {"fn": _boundary(high=True), "arity": {0: []}},
}


@cache
def compiled(expression: str) -> Callable[..., list]:
    import fhirpathpy
    from fhirpathpy.models import models

    options = {"userInvocationTable": FUNCTIONS, "traceFn": lambda *_: None}
    return fhirpathpy.compile(expression, model=models["r5"], options=options)
