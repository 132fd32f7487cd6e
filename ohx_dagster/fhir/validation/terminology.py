"""Codes against the terminology of the HL7 packages (never re-typed here).

- CodeSystems of hl7.fhir.r5.core and hl7.terminology.r5 with `content: complete` (observation-
  status, observation-statistics, observation-category, v2-0074 ...): a Coding of such a system
  must name one of its codes, and its display, when given, one of the code's displays.
- ValueSets are expanded from their `compose` (whole systems, concept lists, is-a / descendent-of /
  = filters, imported value sets, excludes); a binding's verdict on a code is yes, no, or "cannot
  tell" when the value set includes a system that is not in the packages (LOINC, SNOMED CT,
  BCP-47 ...): then no membership is claimed.
- UCUM (the system of the ucum-units value set) is checked by grammar and unit tables (ucum.py):
  every Coding or Quantity whose system is UCUM must carry a valid UCUM code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from ohx_dagster.fhir.validation import ucum
from ohx_dagster.fhir.validation.packages import conformance
from ohx_dagster.fhir.validation.problems import Problem, identity

# Quantity and its specializations (the binding of a Quantity element applies to system + code).
QUANTITY_TYPES: Final = frozenset(
    {"Quantity", "SimpleQuantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity"}
)
_SHOWN: Final = 12  # codes listed in a message before "..."


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class CodeSystem:
    url: str
    case_sensitive: bool
    displays: dict[str, frozenset[str]]  # code (casefolded when case-insensitive) -> displays
    parents: dict[str, frozenset[str]]  # code -> its ancestors (is-a hierarchy)
    properties: dict[str, dict[str, frozenset[str]]]  # code -> property -> values

    def key(self, code: str) -> str:
        return code if self.case_sensitive else code.casefold()

    def __contains__(self, code: str) -> bool:
        return self.key(code) in self.displays


def _flatten(
    concepts: list[dict[str, Any]], ancestors: tuple[str, ...] = ()
) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    for concept in concepts:
        yield concept, ancestors
        yield from _flatten(concept.get("concept", []), (*ancestors, concept["code"]))


@cache
def code_system(url: str) -> CodeSystem | None:
    """The complete CodeSystem with this URL from the packages, or None (absent, or only a
    fragment / example / supplement: then membership cannot be decided)."""
    resource = conformance("CodeSystem", url)
    if resource is None or resource.get("content") != "complete":
        return None
    sensitive = bool(resource.get("caseSensitive", True))
    displays: dict[str, frozenset[str]] = {}
    parents: dict[str, frozenset[str]] = {}
    properties: dict[str, dict[str, frozenset[str]]] = {}
    for concept, ancestors in _flatten(resource.get("concept", [])):
        code = concept["code"] if sensitive else concept["code"].casefold()
        names = [concept.get("display", ""), *(d["value"] for d in concept.get("designation", []))]
        displays[code] = frozenset(_normal(n) for n in names if n)
        parents[code] = frozenset(ancestors)
        values: dict[str, set[str]] = {}
        for prop in concept.get("property", []):
            value = next((v for k, v in prop.items() if k.startswith("value")), None)
            values.setdefault(prop["code"], set()).add(str(value))
            if prop["code"] in ("parent", "subsumedBy"):
                parents[code] = parents[code] | {str(value)}
        properties[code] = {k: frozenset(v) for k, v in values.items()}
    changed = True
    while changed:  # ancestors named by `parent` properties have ancestors of their own
        changed = False
        for code, above in parents.items():
            wider = above.union(*(parents.get(a, frozenset()) for a in above))
            if wider != above:
                parents[code], changed = wider, True
    return CodeSystem(url, sensitive, displays, parents, properties)


@dataclass(frozen=True, slots=True)
class ValueSet:
    """An expansion: enumerated (system, code) pairs, whether every valid UCUM code is in it, and
    the systems included here that cannot be enumerated (membership not decided for those)."""

    url: str
    codes: frozenset[tuple[str, str]]
    ucum: bool = False
    open_systems: frozenset[str] = frozenset()

    def contains(self, system: str | None, code: str) -> bool | None:
        """True / False, or None when the packages cannot tell."""
        if system is None:  # a bare `code` element: any of the value set's systems
            if any(c == code for _, c in self.codes) or (self.ucum and ucum.is_valid(code)):
                return True
            return None if self.open_systems else False
        if (system, code) in self.codes:
            return True
        if system == ucum.SYSTEM and self.ucum:
            return ucum.is_valid(code)
        if system in self.open_systems:
            return None
        return False

    def expected(self) -> str:
        codes = sorted({c for _, c in self.codes})
        shown = ", ".join(codes[:_SHOWN]) + (" ..." if len(codes) > _SHOWN else "")
        parts = [f"one of {shown}"] if codes else []
        if self.ucum:
            parts.append("a valid UCUM code")
        return " or ".join(parts) or "a code of the value set"


def _enumerable(system: str) -> CodeSystem | None:
    """The code system, when a value set's codes of it can be listed and compared as written
    (five case-insensitive ones, color-names ..., are left undecided)."""
    found = code_system(system)
    return found if found is not None and found.case_sensitive else None


def _whole_system(system: str) -> ValueSet:
    if system == ucum.SYSTEM:
        return ValueSet(system, frozenset(), ucum=True)
    found = _enumerable(system)
    if found is None:
        return ValueSet(system, frozenset(), open_systems=frozenset({system}))
    return ValueSet(system, frozenset((system, c) for c in found.displays))


def _filtered(system: str, filters: list[dict[str, str]]) -> ValueSet:
    found = _enumerable(system)
    if found is None:
        return ValueSet(system, frozenset(), open_systems=frozenset({system}))
    codes = set(found.displays)
    for rule in filters:
        prop, op, value = rule.get("property"), rule.get("op"), rule.get("value", "")
        if prop == "concept" and op in ("is-a", "descendent-of", "is-not-a"):
            below = {c for c, up in found.parents.items() if value in up}
            if op == "is-a":
                codes &= below | {value}
            elif op == "descendent-of":
                codes &= below
            else:
                codes -= below | {value}
        elif op == "=" and prop:
            codes &= {c for c in codes if value in found.properties.get(c, {}).get(prop, ())}
        elif op == "in" and prop:
            wanted = set(value.split(","))
            codes &= {c for c in codes if wanted & found.properties.get(c, {}).get(prop, set())}
        else:  # regex, exists, generalizes ...: not decided here
            return ValueSet(system, frozenset(), open_systems=frozenset({system}))
    return ValueSet(system, frozenset((system, c) for c in codes))


def _part(rule: dict[str, Any], stack: tuple[str, ...]) -> ValueSet:
    """The codes one compose.include / exclude rule selects."""
    system = rule.get("system")
    pieces: list[ValueSet] = []
    if system and "concept" in rule:
        pieces.append(ValueSet(system, frozenset((system, c["code"]) for c in rule["concept"])))
    elif system and "filter" in rule:
        pieces.append(_filtered(system, rule["filter"]))
    elif system:
        pieces.append(_whole_system(system))
    for imported in rule.get("valueSet", []):
        pieces.append(_expand(imported.split("|", 1)[0], stack))
    if not pieces:
        return ValueSet("", frozenset())
    result = pieces[0]
    for other in pieces[1:]:  # several in one rule: their intersection
        result = ValueSet(
            result.url,
            result.codes & other.codes
            | {p for p in result.codes if p[0] in other.open_systems}
            | {p for p in other.codes if p[0] in result.open_systems},
            result.ucum and other.ucum,
            result.open_systems & other.open_systems,
        )
    return result


def _expand(url: str, stack: tuple[str, ...]) -> ValueSet:
    if url in stack:
        return ValueSet(url, frozenset())
    resource = conformance("ValueSet", url)
    if resource is None:  # not in the packages: nothing can be decided
        return ValueSet(url, frozenset(), open_systems=frozenset({"*"}))
    compose = resource.get("compose", {})
    codes: set[tuple[str, str]] = set()
    is_ucum = False
    open_systems: set[str] = set()
    for rule in compose.get("include", []):
        part = _part(rule, (*stack, url))
        codes |= part.codes
        is_ucum |= part.ucum
        open_systems |= part.open_systems
    for rule in compose.get("exclude", []):
        part = _part(rule, (*stack, url))
        codes -= part.codes
    if not compose and "expansion" in resource:
        codes = {(c["system"], c["code"]) for c in resource["expansion"].get("contains", [])}
    return ValueSet(url, frozenset(codes), is_ucum, frozenset(open_systems))


@cache
def value_set(url: str) -> ValueSet:
    """The expansion of a ValueSet of the packages by canonical URL ('|version' ignored)."""
    return _expand(url.split("|", 1)[0], ())


def binding_problem(url: str, type_code: str | None, value: Any, path: str) -> str | None:
    """Why `value` (of FHIR type `type_code`) breaks the required binding to `url`, or None."""
    expansion = value_set(url)
    where = f"the value set {url.split('|', 1)[0]} (required binding)"
    if isinstance(value, str):  # code, string, uri
        if expansion.contains(None, value) is False:
            return f"{path}: {value!r} is not in {where}; expected {expansion.expected()}"
        return None
    if not isinstance(value, dict):
        return None
    if type_code == "CodeableReference":
        value = value.get("concept")
        type_code = "CodeableConcept"
        if not isinstance(value, dict):
            return None
    if type_code == "CodeableConcept":
        codings = [c for c in value.get("coding", []) if isinstance(c, dict) and "code" in c]
        verdicts = [expansion.contains(c.get("system"), str(c["code"])) for c in codings]
        if any(v is not False for v in verdicts) and codings:
            return None
        found = ", ".join(f"{c.get('system')}#{c['code']}" for c in codings) or "no coding"
        return f"{path}: {found} is not in {where}; expected a coding with {expansion.expected()}"
    if type_code == "Coding" or type_code in QUANTITY_TYPES:
        code = value.get("code")
        if not isinstance(code, str):
            return None
        system = value.get("system")
        if expansion.contains(system if isinstance(system, str) else "", code) is False:
            return f"{path}: {system}#{code} is not in {where}; expected {expansion.expected()}"
    return None


# -- codings of known systems, UCUM codes: anywhere in a resource -------------------------------


def _is_quantity(element: dict[str, Any]) -> bool:
    """A numeric value or a unit: a Quantity (an Identifier's or ContactPoint's value is text)."""
    number = element.get("value")
    return "unit" in element or (isinstance(number, int | float) and not isinstance(number, bool))


def _codings(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, element) of every object with a `system` and a `code`, or a Quantity's: the
    Codings and Quantities of a resource."""
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and (
            isinstance(value.get("code"), str) or _is_quantity(value)
        ):
            yield path, value
        for key, item in value.items():
            if isinstance(item, dict | list):
                yield from _codings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _codings(item, f"{path}[{index}]")


def coding_problems(resource: dict[str, Any]) -> list[Problem]:
    """Codes of CodeSystems in the packages must exist (with a matching display); UCUM codes must
    be valid UCUM; a Quantity whose system is UCUM must have a code."""
    resource_type, resource_id = identity(resource)
    found: list[Problem] = []

    def report(message: str) -> None:
        found.append(Problem(resource_type, resource_id, message, "terminology"))

    for path, element in _codings(resource, resource_type):
        system, code = element["system"], element.get("code")
        if system == ucum.SYSTEM:
            if not isinstance(code, str):
                report(f"{path}.code: missing; expected a UCUM code (the system is {system})")
                continue
            why = ucum.problem(code)
            if why is not None:
                report(
                    f"{path}.code: {code!r} is not a valid UCUM code ({why}); expected a UCUM unit"
                )
            continue
        if not isinstance(code, str):
            continue
        known = code_system(system)
        if known is None:
            continue
        if code not in known:
            codes = sorted(known.displays)
            shown = ", ".join(codes[:_SHOWN]) + (" ..." if len(codes) > _SHOWN else "")
            report(f"{path}.code: {code!r} is not a code of {system}; expected one of {shown}")
            continue
        display = element.get("display")
        allowed = known.displays[known.key(code)]
        if isinstance(display, str) and allowed and _normal(display) not in allowed:
            report(
                f"{path}.display: {display!r} is not a display of {system}#{code}; "
                f"expected {' or '.join(repr(d) for d in sorted(allowed))} (any case)"
            )
    return found
