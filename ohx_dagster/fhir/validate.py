"""Validation of emitted resources against FHIR R5, in three layers:

1. model: fhir.resources (pydantic) models: cardinality, types, primitive formats;
2. schema: the official JSON schema, fhir.schema.json from HL7's npm package hl7.fhir.r5.core
   5.0.0 (structure: unknown elements such as an R4 SampledData.period, enums, regexes);
3. profile: the StructureDefinitions of that package: the resource's base definition and every
   profile it claims in meta.profile (the vital-signs profiles), walked against the instance:
   cardinality, fixed and pattern values, value slicing (e.g. the bp profile's SystolicBP /
   DiastolicBP components), and the FHIRPath invariants (severity error) evaluated with fhirpathpy.

The packages are fetched by scripts/fetch-fhir-packages into .fhir-packages/ (or
$OHX_FHIR_PACKAGES); nothing from them is copied into this repository or re-typed by hand.
Invariants that need to resolve() references to other resources are not evaluated (the validator
sees one resource at a time). Slow by design (milliseconds a resource): asset checks and tests,
sampled in production, never the hot path.
"""

from __future__ import annotations

import calendar
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson
from fhir.resources import get_fhir_model_class
from pydantic import ValidationError as PydanticValidationError

from ohx_dagster.errors import ConfigError
from ohx_dagster.fhir.codes import VITAL_SIGN_PROFILES

CORE_PACKAGE: Final = "hl7.fhir.r5.core-5.0.0"
EXAMPLES_PACKAGE: Final = "hl7.fhir.r5.examples-5.0.0"
_CANONICAL: Final = "http://hl7.org/fhir/StructureDefinition/"
# Checked directly (ele-1 below) or meaningless for one resource at a time.
_SKIPPED_INVARIANTS: Final = frozenset({"ele-1", "ext-1"})


@dataclass(frozen=True, slots=True)
class Problem:
    resource_type: str
    resource_id: str
    message: str
    layer: str = "model"

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}: [{self.layer}] {self.message}"


def packages_dir() -> Path:
    configured = os.environ.get("OHX_FHIR_PACKAGES")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".fhir-packages"


def package_path(name: str = CORE_PACKAGE) -> Path:
    path = packages_dir() / name
    if not (path / ".complete").is_file():
        raise ConfigError(
            f"FHIR package {name} not found at {path}: run scripts/fetch-fhir-packages "
            "(or set OHX_FHIR_PACKAGES to the folder holding it)"
        )
    return path


# -- layer 1: fhir.resources models -------------------------------------------------------------


def model_problems(resource: dict) -> list[Problem]:
    resource_type = str(resource.get("resourceType", ""))
    resource_id = str(resource.get("id", "?"))
    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return [Problem(resource_type, resource_id, f"unknown resourceType {resource_type!r}")]
    try:
        model.model_validate(resource)
    except PydanticValidationError as exc:
        return [
            Problem(resource_type, resource_id, f"{'.'.join(map(str, e['loc']))}: {e['msg']}")
            for e in exc.errors()
        ]
    return []


# -- layer 2: the official JSON schema ----------------------------------------------------------


@cache
def _schema_definitions() -> dict[str, Any]:
    schema = orjson.loads((package_path() / "openapi" / "fhir.schema.json").read_bytes())
    return schema["definitions"]


@cache
def _schema_validator(resource_type: str) -> Any:
    from jsonschema import Draft6Validator

    definitions = _schema_definitions()
    schema = {"$ref": f"#/definitions/{resource_type}", "definitions": definitions}
    return Draft6Validator(schema)


def schema_problems(resource: dict) -> list[Problem]:
    resource_type = str(resource.get("resourceType", ""))
    resource_id = str(resource.get("id", "?"))
    if resource_type not in _schema_definitions():
        return [Problem(resource_type, resource_id, "no such resourceType in R5", "schema")]
    problems = []
    for error in _schema_validator(resource_type).iter_errors(resource):
        where = ".".join(str(p) for p in error.absolute_path) or resource_type
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        problems.append(Problem(resource_type, resource_id, f"{where}: {message}", "schema"))
    return sorted(problems, key=lambda p: p.message)


# -- layer 3: StructureDefinitions (profiles, slicing, FHIRPath invariants) ---------------------


@dataclass
class Element:
    """One ElementDefinition of a snapshot, with its children and slices as a tree."""

    id: str
    path: str
    min: int
    max: int | None
    types: list[str]
    fixed: Any = None
    pattern: Any = None
    invariants: list[tuple[str, str, str]] = field(default_factory=list)
    discriminators: list[dict[str, str]] = field(default_factory=list)
    slice_name: str | None = None
    children: dict[str, Element] = field(default_factory=dict)
    slices: list[Element] = field(default_factory=list)


def _element(definition: dict[str, Any]) -> Element:
    fixed = next((v for k, v in definition.items() if k.startswith("fixed")), None)
    pattern = next((v for k, v in definition.items() if k.startswith("pattern")), None)
    maximum = definition.get("max", "*")
    return Element(
        id=definition["id"],
        path=definition["path"],
        min=int(definition.get("min", 0)),
        max=None if maximum == "*" else int(maximum),
        types=[t["code"] for t in definition.get("type", [])],
        fixed=fixed,
        pattern=pattern,
        invariants=[
            (c["key"], c.get("human", ""), c["expression"])
            for c in definition.get("constraint", [])
            if c.get("severity") == "error"
            and "expression" in c
            and c["key"] not in _SKIPPED_INVARIANTS
            and "resolve()" not in c["expression"]
        ],
        discriminators=definition.get("slicing", {}).get("discriminator", []),
        slice_name=definition.get("sliceName"),
    )


@cache
def structure(url_or_type: str) -> Element | None:
    """The snapshot of a core StructureDefinition (by canonical URL or type name) as a tree."""
    name = url_or_type.removeprefix(_CANONICAL)
    if "/" in name:
        return None
    path = package_path() / f"StructureDefinition-{name}.json"
    if not path.is_file():
        return None
    definition = orjson.loads(path.read_bytes())
    elements = definition["snapshot"]["element"]
    root = _element(elements[0])
    for item in elements[1:]:
        segments = item["id"].split(".")
        node = root
        for segment in segments[1:-1]:
            child, _, slice_name = segment.partition(":")
            node = node.children[child]
            if slice_name:
                node = next(s for s in node.slices if s.slice_name == slice_name)
        child, _, slice_name = segments[-1].partition(":")
        element = _element(item)
        if slice_name:
            node.children[child].slices.append(element)
        else:
            node.children[child] = element
    return root


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


_FUNCTIONS: Final = {
    "htmlChecks": {"fn": _html_checks, "arity": {0: []}},
    "hasValue": {"fn": _has_value, "arity": {0: []}},
    "lowBoundary": {"fn": _boundary(high=False), "arity": {0: []}},
    "highBoundary": {"fn": _boundary(high=True), "arity": {0: []}},
}


@cache
def _compiled(expression: str) -> Callable[..., list]:
    import fhirpathpy
    from fhirpathpy.models import models

    options = {"userInvocationTable": _FUNCTIONS, "traceFn": lambda *_: None}
    return fhirpathpy.compile(expression, model=models["r5"], options=options)


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _items(instance: dict[str, Any], name: str) -> list[tuple[str, Any]]:
    """(json key, value) pairs of a child element; choice elements ([x]) by their typed key."""
    if name.endswith("[x]"):
        base = name[:-3]
        return [
            (key, item)
            for key, value in instance.items()
            if key.startswith(base) and key[len(base) : len(base) + 1].isupper()
            for item in _listed(value)
        ]
    return [(name, item) for item in _listed(instance.get(name))]


def _matches_pattern(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            _matches_pattern(value.get(k), v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        values = _listed(value)
        return all(any(_matches_pattern(v, p) for v in values) for p in pattern)
    return value == pattern


def _walk_values(value: Any, path: str) -> list[Any]:
    current = _listed(value)
    for part in path.split(".") if path != "$this" else []:
        current = [item for v in current if isinstance(v, dict) for item in _listed(v.get(part))]
    return current


def _required_value(element: Element, path: str) -> Any:
    """The fixed / pattern value a slice sets at a discriminator path (looking into slices of
    the elements on the way: bp's SystolicBP fixes code.coding:SBPCode.code)."""
    nodes = [element]
    for part in path.split(".") if path != "$this" else []:
        nodes = [
            found
            for node in nodes
            if part in node.children
            for found in (node.children[part], *node.children[part].slices)
        ]
    for node in nodes:
        value = node.fixed if node.fixed is not None else node.pattern
        if value is not None:
            return value
    return None


def _in_slice(key: str, item: Any, slicing: Element, slice_: Element) -> bool:
    for discriminator in slicing.discriminators:
        kind, path = discriminator["type"], discriminator["path"]
        if kind == "type":
            if slice_.slice_name != key:
                return False
        elif kind in ("value", "pattern"):
            wanted = _required_value(slice_, path)
            if wanted is not None and not any(
                _matches_pattern(v, wanted) for v in _walk_values(item, path)
            ):
                return False
        else:  # profile / exists discriminators: not used by the profiles we claim
            return False
    return True


def _choice_type(element: Element, key: str) -> str | None:
    if element.path.endswith("[x]"):
        suffix = key[len(element.path.rsplit(".", 1)[1]) - 3 :]
        for code in element.types:
            if code.lower() == suffix.lower():
                return code
        return None
    return element.types[0] if len(element.types) == 1 else None


class _Walk:
    def __init__(self, resource: dict[str, Any], layer: str) -> None:
        self.resource = resource
        self.layer = layer
        self.problems: list[str] = []
        self.variables = {"resource": resource, "rootResource": resource}

    def cardinality(self, where: str, count: int, element: Element) -> None:
        if count < element.min:
            self.problems.append(f"{where}: {count} found, at least {element.min} required")
        if element.max is not None and count > element.max:
            self.problems.append(f"{where}: {count} found, at most {element.max} allowed")

    def invariants(self, invariants: Iterable[tuple[str, str, str]], value: Any, path: str) -> None:
        from fhirpathpy.engine.nodes import ResourceNode

        for key, human, expression in invariants:
            try:
                node = ResourceNode.create_node(value, path)
                result = _compiled(expression)(node, self.variables)
            except Exception as exc:  # an engine limit is reported, never taken as a pass
                self.problems.append(f"{path}: invariant {key} could not be evaluated: {exc}")
                continue
            if result and not all(r is True for r in result):
                self.problems.append(f"{path}: invariant {key} failed: {human} ({expression})")

    def element(self, element: Element, key: str, value: Any, path: str) -> None:
        if element.fixed is not None and value != element.fixed:
            self.problems.append(f"{path}: {value!r} found, fixed value {element.fixed!r} required")
        if element.pattern is not None and not _matches_pattern(value, element.pattern):
            self.problems.append(f"{path}: does not match the required pattern {element.pattern}")
        if value in ({}, [], ""):
            self.problems.append(f"{path}: empty element (ele-1: children or a value required)")
        type_code = _choice_type(element, key)
        datatype = (
            structure(type_code) if type_code and type_code[:1].isupper() and element.path else None
        )
        invariants = list(element.invariants)
        if datatype is not None:
            known = {k for k, _, _ in invariants}
            invariants += [i for i in datatype.invariants if i[0] not in known]
        self.invariants(invariants, value, path)
        if isinstance(value, dict):
            children = element.children or (datatype.children if datatype else {})
            self.children(children, value, path)

    def children(self, children: dict[str, Element], value: dict[str, Any], path: str) -> None:
        for name, child in children.items():
            items = _items(value, name)
            where = f"{path}.{name}"
            self.cardinality(where, len(items), child)
            for key, item in items:
                self.element(child, key, item, f"{path}.{key}")
            for slice_ in child.slices:
                members = [(k, i) for k, i in items if _in_slice(k, i, child, slice_)]
                self.cardinality(f"{where}:{slice_.slice_name}", len(members), slice_)
                for key, item in members:
                    if slice_.children:
                        self.children(slice_.children, item, f"{path}.{key}")
                    self.invariants(slice_.invariants, item, f"{path}.{key}")


def implied_profiles(resource: dict) -> list[str]:
    """Vital-signs profiles an Observation must meet because of its code (claimed or not)."""
    if resource.get("resourceType") != "Observation":
        return []
    codings = resource.get("code", {}).get("coding", [])
    found = (VITAL_SIGN_PROFILES.get((c.get("system"), c.get("code"))) for c in codings)
    return [url for url in found if url]


def profile_problems(resource: dict) -> list[Problem]:
    resource_type = str(resource.get("resourceType", ""))
    resource_id = str(resource.get("id", "?"))
    found: list[Problem] = []
    seen: set[str] = set()
    claimed = resource.get("meta", {}).get("profile", [])
    urls = list(dict.fromkeys([*claimed, *implied_profiles(resource), resource_type]))
    for url in urls:
        root = structure(url)
        layer = "profile" if url != resource_type else "structure"
        if root is None:
            found.append(Problem(resource_type, resource_id, f"unknown profile {url}", layer))
            continue
        if root.path != resource_type:
            message = f"profile {url} is for {root.path}, not {resource_type}"
            found.append(Problem(resource_type, resource_id, message, layer))
            continue
        walk = _Walk(resource, layer)
        walk.invariants(root.invariants, resource, resource_type)
        walk.children(root.children, resource, resource_type)
        name = url.removeprefix(_CANONICAL)
        for message in dict.fromkeys(walk.problems):
            if message not in seen:  # a base rule a profile repeats is reported once
                seen.add(message)
                found.append(Problem(resource_type, resource_id, f"{message} [{name}]", layer))
    return found


# -- the three layers together ------------------------------------------------------------------


def validate_resource(resource: dict) -> list[Problem]:
    return [*model_problems(resource), *schema_problems(resource), *profile_problems(resource)]


def sample(resources: Iterable[dict], size: int, *, seed: int = 0) -> list[dict]:
    """A deterministic sample with every resource type and profile represented."""
    strata: dict[tuple[str, str], list[dict]] = {}
    for resource in resources:
        profile = ",".join(resource.get("meta", {}).get("profile", []))
        strata.setdefault((resource["resourceType"], profile), []).append(resource)
    chosen = [items[0] for items in strata.values()]
    rest = [item for items in strata.values() for item in items[1:]]
    rng = random.Random(seed)
    return chosen + rng.sample(rest, max(0, min(len(rest), size - len(chosen))))


def validate_resources(resources: Iterable[dict], *, limit: int | None = None) -> list[Problem]:
    """Problems of the resources (all three layers); with `limit`, of a stratified sample."""
    items = list(resources)
    if limit is not None and len(items) > limit:
        items = sample(items, limit)
    return [problem for resource in items for problem in validate_resource(resource)]


def iter_examples(prefix: str) -> Iterator[tuple[str, dict]]:
    """Official R5 examples (hl7.fhir.r5.examples) whose file name starts with a prefix."""
    for path in sorted(package_path(EXAMPLES_PACKAGE).glob(f"{prefix}*.json")):
        yield path.name, orjson.loads(path.read_bytes())
