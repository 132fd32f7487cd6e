"""Layer 3: the instance walked against StructureDefinitions: the resource's base definition and
every profile it claims in meta.profile (or must meet because of its code: the vital signs):
cardinality, fixed and pattern values, value slicing (the bp profile's SystolicBP / DiastolicBP
components), required bindings (value sets expanded from the packages, terminology.py) and the
FHIRPath invariants of severity error. Invariants that resolve() other resources are left to
references.py, which sees the whole output."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

from ohx_dagster.fhir.codes import VITAL_SIGN_PROFILES
from ohx_dagster.fhir.validation.fhirpath import compiled
from ohx_dagster.fhir.validation.problems import Problem, identity
from ohx_dagster.fhir.validation.structure import CANONICAL, Element, structure
from ohx_dagster.fhir.validation.terminology import binding_problem

_INDEX: Final = re.compile(r"\[\d+\]")  # fhirpathpy types a node by its path without indices


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _items(instance: dict[str, Any], name: str) -> list[tuple[str, Any]]:
    """(json key, value) pairs of a child element; choice elements ([x]) by their typed key; the
    key of an item of a list carries its index (component[1])."""
    if name.endswith("[x]"):
        base = name[:-3]
        size = len(base)
        keys = [k for k in instance if k.startswith(base) and k[size : size + 1].isupper()]
    else:
        keys = [name] if name in instance else []
    found = []
    for key in keys:
        value = instance[key]
        if isinstance(value, list):
            found += [(f"{key}[{index}]", item) for index, item in enumerate(value)]
        elif value is not None:
            found.append((key, value))
    return found


def _key(indexed: str) -> str:
    return indexed.partition("[")[0]


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
            if slice_.slice_name != _key(key):
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
    key = _key(key)
    if element.path.endswith("[x]"):
        suffix = key[len(element.path.rsplit(".", 1)[1]) - 3 :]
        for code in element.types:
            if code.lower() == suffix.lower():
                return code
        return None
    return element.types[0] if len(element.types) == 1 else None


_HOLDS: Final = None
_FAILED: Final = "failed"
# Outcomes of invariants that see only their element: the same element (same JSON, same typed
# path) gives the same answer in every resource, and a partition's resources repeat most of
# theirs (codes, subject, category, meta). Small elements only (a large one rarely repeats), and
# bounded: cleared when full (at most about 20 MB).
_OUTCOMES: dict[tuple[str, str, bytes], str | None] = {}
_OUTCOMES_MAX: Final = 20_000
_ELEMENT_MAX_BYTES: Final = 1_024
_SEES_RESOURCE: Final = ("%resource", "%rootResource", "resolve(")


def _local_reference_free(value: Any) -> bool:
    """ref-1 holds: no reference, or one that is not local ('#...'); anything else (extensions
    on the reference, a local one) goes to the engine."""
    if not isinstance(value, dict) or "_reference" in value:
        return False
    reference = value.get("reference")
    return reference is None or (isinstance(reference, str) and not reference.startswith("#"))


def _names_something(value: Any) -> bool:
    """ref-2 holds: a reference, identifier or display is there as a plain value."""
    if not isinstance(value, dict):
        return False
    return (
        isinstance(value.get("reference"), str)
        or isinstance(value.get("display"), str)
        or isinstance(value.get("identifier"), dict)
    )


# Reference's invariants, met by every Reference the product writes: answered here when they
# plainly hold (most of a partition's evaluations: a Provenance has a target per resource, and
# ref-1 reads %rootResource, so it cannot be remembered). Anything less plain goes to the
# engine; a property test holds these to it (tests/fhir/test_fhir_validate.py).
PLAINLY_HOLDS: Final[dict[str, Callable[[Any], bool]]] = {
    "reference.exists()  implies (reference.startsWith('#').not() or (reference.substring(1)"
    ".trace('url') in %rootResource.contained.id.trace('ids')) or (reference='#' and "
    "%rootResource!=%resource))": _local_reference_free,
    "reference.exists() or identifier.exists() or display.exists() or extension.exists()": (
        _names_something
    ),
}


def _rememberable(expression: str) -> bool:
    """Whether the invariant's outcome depends on its element only."""
    return expression not in PLAINLY_HOLDS and not any(m in expression for m in _SEES_RESOURCE)


def forget_invariant_outcomes() -> None:
    """Empty the memory of invariant outcomes (as a new process starts: benchmarks)."""
    _OUTCOMES.clear()


def _remembered_as(value: Any) -> bytes | None:
    """The element's JSON when its outcomes may be remembered."""
    try:
        blob = orjson.dumps(value)
    except TypeError:  # not plain JSON (a Decimal): evaluated, not remembered
        return None
    return blob if len(blob) <= _ELEMENT_MAX_BYTES else None


def _invariant_outcome(
    expression: str, typed_path: str, value: Any, blob: bytes | None, variables: dict[str, Any]
) -> str | None:
    """_HOLDS, _FAILED or "could not be evaluated: why" (an engine limit is reported, never
    taken as a pass)."""
    plainly = PLAINLY_HOLDS.get(expression)
    if plainly is not None and plainly(value):
        return _HOLDS
    key = None
    if blob is not None and _rememberable(expression):
        key = (expression, typed_path, blob)
        if key in _OUTCOMES:
            return _OUTCOMES[key]
    from fhirpathpy.engine.nodes import ResourceNode

    try:
        result = compiled(expression)(ResourceNode.create_node(value, typed_path), variables)
        outcome = _FAILED if result and not all(r is True for r in result) else _HOLDS
    except Exception as exc:
        outcome = f"could not be evaluated: {exc}"
    if key is not None and blob is not None:
        if len(_OUTCOMES) >= _OUTCOMES_MAX:
            _OUTCOMES.clear()
        # A copy of the blob's own length: orjson's bytes keep the 4 KiB it wrote them into.
        _OUTCOMES[(expression, typed_path, bytes(memoryview(blob)))] = outcome
    return outcome


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
        invariants = list(invariants)
        if not invariants:
            return
        rememberable = any(_rememberable(expression) for _, _, expression in invariants)
        typed_path = _INDEX.sub("", path)
        blob = _remembered_as(value) if rememberable else None  # one serialization per element
        for key, human, expression in invariants:
            outcome = _invariant_outcome(expression, typed_path, value, blob, self.variables)
            if outcome == _FAILED:
                self.problems.append(f"{path}: invariant {key} failed: {human} ({expression})")
            elif outcome is not _HOLDS:
                self.problems.append(f"{path}: invariant {key} {outcome}")

    def binding(self, element: Element, key: str, value: Any, path: str) -> None:
        if element.binding is not None:
            problem = binding_problem(element.binding, _choice_type(element, key), value, path)
            if problem is not None:
                self.problems.append(problem)

    def element(self, element: Element, key: str, value: Any, path: str) -> None:
        if element.fixed is not None and value != element.fixed:
            self.problems.append(f"{path}: {value!r} found, fixed value {element.fixed!r} required")
        if element.pattern is not None and not _matches_pattern(value, element.pattern):
            self.problems.append(f"{path}: does not match the required pattern {element.pattern}")
        if value in ({}, [], ""):
            self.problems.append(f"{path}: empty element (ele-1: children or a value required)")
        self.binding(element, key, value, path)
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
                    self.binding(slice_, key, item, f"{path}.{key}")
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


def profile_urls(resource: dict) -> list[str]:
    """The claimed profiles, the implied ones, then the resource type (its base definition)."""
    claimed = resource.get("meta", {}).get("profile", [])
    resource_type = str(resource.get("resourceType", ""))
    return list(dict.fromkeys([*claimed, *implied_profiles(resource), resource_type]))


def profile_problems(resource: dict) -> list[Problem]:
    resource_type, resource_id = identity(resource)
    found: list[Problem] = []
    seen: set[str] = set()
    for url in profile_urls(resource):
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
        name = url.removeprefix(CANONICAL)
        for message in dict.fromkeys(walk.problems):
            if message not in seen:  # a base rule a profile repeats is reported once
                seen.add(message)
                found.append(Problem(resource_type, resource_id, f"{message} [{name}]", layer))
    return found
