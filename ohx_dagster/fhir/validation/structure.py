"""StructureDefinitions of hl7.fhir.r5.core as trees of ElementDefinitions.

Each snapshot becomes an Element tree: children by name, slices under the sliced element, and per
element what the checks need: cardinality, types, fixed / pattern values, FHIRPath invariants
(severity error), its required binding and, for Reference types, the resource types its
targetProfiles allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from ohx_dagster.fhir.validation.packages import package_path, read_json

CANONICAL: Final = "http://hl7.org/fhir/StructureDefinition/"
# Checked directly (ele-1 in the walk) or meaningless for one resource at a time.
SKIPPED_INVARIANTS: Final = frozenset({"ele-1", "ext-1"})
ANY_RESOURCE: Final = "Resource"


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
    binding: str | None = None  # ValueSet URL of a required binding
    target_profiles: tuple[str, ...] = ()  # of the Reference / CodeableReference type
    children: dict[str, Element] = field(default_factory=dict)
    slices: list[Element] = field(default_factory=list)
    _keys: dict[str, tuple[Element, str | None]] | None = None
    derived: dict[str, Any] = field(default_factory=dict)  # what a check computes once per element

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    def json_keys(self) -> dict[str, tuple[Element, str | None]]:
        """JSON key -> (child element, its type) of this element's own children; a choice
        element (value[x]) appears once per type (valueQuantity, valueSampledData ...)."""
        if self._keys is None:
            keys: dict[str, tuple[Element, str | None]] = {}
            for name, child in self.children.items():
                if name.endswith("[x]"):
                    for code in child.types:
                        keys[name[:-3] + code[:1].upper() + code[1:]] = (child, code)
                else:
                    keys[name] = (child, child.types[0] if len(child.types) == 1 else None)
            self._keys = keys
        return self._keys


def _element(definition: dict[str, Any]) -> Element:
    fixed = next((v for k, v in definition.items() if k.startswith("fixed")), None)
    pattern = next((v for k, v in definition.items() if k.startswith("pattern")), None)
    maximum = definition.get("max", "*")
    binding = definition.get("binding", {})
    targets = [
        profile
        for t in definition.get("type", [])
        if t["code"] in ("Reference", "CodeableReference")
        for profile in t.get("targetProfile", [])
    ]
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
            and c["key"] not in SKIPPED_INVARIANTS
            and "resolve()" not in c["expression"]
        ],
        discriminators=definition.get("slicing", {}).get("discriminator", []),
        slice_name=definition.get("sliceName"),
        binding=binding.get("valueSet") if binding.get("strength") == "required" else None,
        target_profiles=tuple(targets),
    )


@cache
def structure(url_or_type: str) -> Element | None:
    """The snapshot of a core StructureDefinition (by canonical URL or type name) as a tree."""
    name = url_or_type.removeprefix(CANONICAL)
    if "/" in name or ":" in name:
        return None
    path = package_path() / f"StructureDefinition-{name}.json"
    if not path.is_file():
        return None
    definition = read_json(path)
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


@cache
def is_resource_type(name: str) -> bool:
    """Whether `name` is an R5 resource type (Observation, Patient ...), not a datatype."""
    if not name[:1].isupper() or "/" in name:
        return False
    path = package_path() / f"StructureDefinition-{name}.json"
    if not path.is_file():
        return False
    definition = read_json(path)
    return definition.get("kind") == "resource" and definition.get("type") == name


@cache
def target_type(profile: str) -> str | None:
    """The resource type a targetProfile stands for ("…/StructureDefinition/vitalsigns":
    Observation), or None for a profile outside the core package."""
    root = structure(profile)
    return root.path if root is not None else None


def allowed_targets(element: Element) -> frozenset[str] | None:
    """Resource types a Reference element may point to; None when any (Resource, or unknown)."""
    return _targets(element.target_profiles)


@cache
def _targets(profiles: tuple[str, ...]) -> frozenset[str] | None:
    if not profiles:
        return None
    types = {target_type(p) for p in profiles}
    if None in types or ANY_RESOURCE in types:
        return None
    return frozenset(t for t in types if t)


def children_of(element: Element, type_code: str | None) -> Element | None:
    """The element whose children describe a value of `element`: itself when the snapshot lists
    its children (backbone elements, profiled datatypes), else its datatype's definition."""
    if element.children:
        return element
    if type_code and type_code[:1].isupper():
        return structure(type_code)
    return None


@cache
def primitive_regex(type_name: str) -> str:
    """The regex a primitive type's StructureDefinition gives its values ("decimal": the FHIR
    decimal grammar). 5.0.0 writes the decimal's exponent as `[0-9]{1,9}}`, a stray `}` that
    would require one after every exponent; it is dropped."""
    definition = read_json(package_path() / f"StructureDefinition-{type_name}.json")
    for element in definition["snapshot"]["element"]:
        for kind in element.get("type", []):
            for extension in kind.get("extension", []):
                if extension["url"].endswith("/StructureDefinition/regex"):
                    return extension["valueString"].replace("}}", "}")
    raise LookupError(f"StructureDefinition-{type_name}.json: no regex for its value")
