"""References across a set of resources (a partition's bulk output, or Bundles), in O(n):

- every Reference element (found by walking the instance along the StructureDefinitions, so only
  elements of type Reference / CodeableReference count, in extensions and contained resources
  too) is one of:
  - "Type/id", resolving to a resource of the set (or of the enclosing Bundle's entries) or to
    one of the configured external ones;
  - an absolute URL ending in Type/id, one of the external ones or an entry's fullUrl;
  - "urn:uuid:..." / "urn:oid:...", an entry's fullUrl of the enclosing Bundle;
  - "#id" of a contained resource ("#": the container);
  - a conditional "Type?..." inside a transaction or batch Bundle (the server resolves it);
  - a logical reference by identifier, which needs identifier.system and identifier.value;
- its resource type (from the literal reference or `type`) is one the element's targetProfile
  allows, in the base definition and in every profile the resource claims or implies
  (vitalsigns: subject is a Patient);
- no two resources of one type share an id, nor an identifier (system + value): conditional
  updates by identifier would merge them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from ohx_dagster.fhir.validation.problems import Problem, identity
from ohx_dagster.fhir.validation.profile import profile_urls
from ohx_dagster.fhir.validation.structure import (
    CANONICAL,
    Element,
    allowed_targets,
    children_of,
    is_resource_type,
    structure,
)

LAYER: Final = "output"
_ID: Final = r"[A-Za-z0-9\-\.]{1,64}"
_RELATIVE: Final = re.compile(rf"(?P<type>[A-Z][A-Za-z]+)/(?P<id>{_ID})(?:/_history/{_ID})?")
_ABSOLUTE: Final = re.compile(
    rf"(?P<base>https?://\S+)/(?P<type>[A-Z][A-Za-z]+)/(?P<id>{_ID})(?:/_history/{_ID})?"
)
_CONDITIONAL: Final = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?\S+")
_BUNDLE_LOCAL: Final = ("urn:uuid:", "urn:oid:")
_CONDITIONAL_BUNDLES: Final = frozenset({"transaction", "batch"})
_REFERENCE_TYPES: Final = frozenset({"Reference", "CodeableReference"})


@dataclass(frozen=True, slots=True)
class Found:
    """One Reference element of a resource."""

    path: str  # instance path, Observation.derivedFrom[0]
    element: Element  # its ElementDefinition (base)
    value: dict[str, Any]  # the Reference
    container: dict[str, Any]  # the top-level resource (for #id of contained resources)


def references(resource: dict[str, Any]) -> Iterator[Found]:
    """Every Reference in a resource (and in its contained resources), with its definition.
    Bundle entries are not entered: a Bundle's entries are resources of their own."""
    root = structure(str(resource.get("resourceType", "")))
    if root is not None:
        yield from _walk(resource, root, str(resource["resourceType"]), resource)


# What the walk does with a child: yield it (a Reference), yield its .reference (a
# CodeableReference), enter a contained resource, enter it, or enter it only when it carries
# extensions (a datatype such as Coding or Period that holds no Reference of its own).
_REFERENCE, _CODEABLE, _CONTAINED, _ENTER, _EXTENDED = range(5)
_EXTENSIONS: Final = ("extension", "modifierExtension")
_Step = tuple[int, Element, Element | None]


def _holds_references(node: Element, seen: frozenset[int] = frozenset()) -> bool:
    """Whether a value of this element can hold a Reference other than through extensions."""
    if "holds-references" in node.derived:
        return node.derived["holds-references"]
    if id(node) in seen:  # a cycle (Identifier.assigner.identifier ...): decided where it started
        return False
    found = False
    for name, (child, type_code) in node.json_keys().items():
        if name in _EXTENSIONS:
            continue
        if type_code in _REFERENCE_TYPES or type_code == "Resource":
            found = True
        else:
            inner = children_of(child, type_code)
            found = inner is not None and _holds_references(inner, seen | {id(node)})
        if found:
            break
    if not seen:
        node.derived["holds-references"] = found
    return found


def _plan(node: Element) -> dict[str, _Step]:
    """JSON key -> what to do with it, per element (computed once: the trees are cached)."""
    plan = node.derived.get("reference-plan")
    if plan is None:
        plan = {}
        for name, (child, type_code) in node.json_keys().items():
            inner = None
            if type_code == "Reference":
                action = _REFERENCE
            elif type_code == "CodeableReference":
                action = _CODEABLE
            elif type_code == "Resource":
                action = _CONTAINED
            else:
                inner = children_of(child, type_code)
                if inner is None:
                    continue  # a primitive
                holds = name in _EXTENSIONS or _holds_references(inner)
                action = _ENTER if holds else _EXTENDED
            plan[name] = (action, child, inner)
        node.derived["reference-plan"] = plan
    return plan


def _extended(value: Any) -> bool:
    """Whether an extension is anywhere in a value (the only way a Coding holds a Reference)."""
    if isinstance(value, dict):
        return any(
            key in _EXTENSIONS or (isinstance(item, dict | list) and _extended(item))
            for key, item in value.items()
        )
    return isinstance(value, list) and any(_extended(item) for item in value)


def _walk(value: dict[str, Any], node: Element, path: str, container: dict) -> Iterator[Found]:
    plan = _plan(node)
    for key, item in value.items():
        step = plan.get(key)
        if step is None:
            continue
        action, child, inner = step
        listed = isinstance(item, list)
        for index, element in enumerate(item if listed else [item]):
            if not isinstance(element, dict):
                continue
            if action == _EXTENDED and not _extended(element):
                continue
            where = f"{path}.{key}[{index}]" if listed else f"{path}.{key}"
            if action == _REFERENCE:
                yield Found(where, child, element, container)
            elif action == _CODEABLE:
                if isinstance(element.get("reference"), dict):
                    yield Found(f"{where}.reference", child, element["reference"], container)
            elif action == _CONTAINED:
                if key == "contained":
                    nested = structure(str(element.get("resourceType", "")))
                    if nested is not None:
                        yield from _walk(element, nested, where, container)
            elif inner is not None:
                yield from _walk(element, inner, where, container)


@cache
def _profile_targets(url: str) -> dict[str, tuple[frozenset[str], str]]:
    """Element path -> (allowed types, profile name) where a profile narrows a Reference."""
    root = structure(url)
    narrowed: dict[str, tuple[frozenset[str], str]] = {}
    if root is None:
        return narrowed
    name = url.removeprefix(CANONICAL)
    stack = [root]
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        if _REFERENCE_TYPES & set(node.types):
            allowed = allowed_targets(node)
            if allowed is not None:
                narrowed[node.path] = (allowed, name)
    return narrowed


@dataclass
class _Scope:
    """What references can resolve to: the set's "Type/id"s and the external ones; inside a
    Bundle also its entries, by Type/id and by fullUrl (a scope of its own over the set's)."""

    known: set[str]
    external: frozenset[str]
    full_urls: set[str] = field(default_factory=set)
    bundle_type: str | None = None
    outer: _Scope | None = None

    def resolves(self, key: str) -> bool:
        if key in self.known or key in self.external or key in self.full_urls:
            return True
        return self.outer is not None and self.outer.resolves(key)


def _check(found: Found, profiles: list[str], scope: _Scope) -> Iterator[str]:
    ref, path = found.value, found.path
    literal, logical, declared = ref.get("reference"), ref.get("identifier"), ref.get("type")
    pointed: str | None = None
    if isinstance(literal, str):
        pointed, problem = _resolve(literal, path, found.container, scope)
        if problem:
            yield problem
    elif isinstance(logical, dict):
        missing = [k for k in ("system", "value") if not logical.get(k)]
        if missing:
            yield (
                f"{path}.identifier: a logical reference without {' and '.join(missing)}; "
                "expected identifier.system and identifier.value"
            )
    if isinstance(declared, str) and pointed is not None and declared != pointed:
        yield f"{path}.type: {declared!r} but the reference points to a {pointed}; expected equal"
    kind = pointed or (declared if isinstance(declared, str) else None)
    if kind is None:
        return
    # The narrowest first: a profile's targets, then the base definition's (None: any type).
    rules: list[tuple[frozenset[str] | None, str]] = []
    for url in profiles:
        narrowed = _profile_targets(url).get(found.element.path)
        if narrowed is not None:
            rules.append((narrowed[0], f"{found.element.path} in {narrowed[1]}"))
    rules.append((allowed_targets(found.element), found.element.path))
    for allowed, where in rules:
        if allowed is not None and kind not in allowed:
            yield (
                f"{path}: points to {kind}; expected a reference to "
                f"{' | '.join(sorted(allowed))} (targetProfile of {where})"
            )
            return


def _resolve(literal: str, path: str, container: dict, scope: _Scope) -> tuple[str | None, str]:
    """(the resource type pointed to, the problem or '')."""
    where = f"{path}.reference"
    if literal.startswith("#"):
        contained = {
            str(c.get("id")): str(c.get("resourceType"))
            for c in container.get("contained", [])
            if isinstance(c, dict)
        }
        if literal == "#":  # the container itself, from inside a contained resource
            return str(container.get("resourceType")), ""
        if literal[1:] not in contained:
            ids = ", ".join(sorted(contained)) or "none: nothing is contained"
            return None, f"{where}: {literal!r} names no contained resource; expected one of {ids}"
        return contained[literal[1:]], ""
    if literal.startswith(_BUNDLE_LOCAL):
        if scope.bundle_type is None:
            return None, f"{where}: {literal!r} outside a Bundle; expected 'Type/id'"
        if literal not in scope.full_urls:
            return None, f"{where}: {literal!r} matches no entry.fullUrl of the Bundle"
        return None, ""
    match = _RELATIVE.fullmatch(literal) or _ABSOLUTE.fullmatch(literal)
    if match is None:
        conditional = _CONDITIONAL.fullmatch(literal)
        if conditional and scope.bundle_type in _CONDITIONAL_BUNDLES:
            kind = conditional["type"]
            if not is_resource_type(kind):
                return None, f"{where}: {literal!r} names no R5 resource type {kind!r}"
            return kind, ""
        return None, (
            f"{where}: {literal!r} is not a reference; expected 'Type/id', an absolute URL "
            "ending in Type/id, 'urn:uuid:...' inside a Bundle or '#id' of a contained resource"
        )
    kind = match["type"]
    if not is_resource_type(kind):
        return None, f"{where}: {literal!r} names no R5 resource type {kind!r}"
    # a relative reference resolves by Type/id; an absolute one by its exact URL (an external
    # resource, or an entry's fullUrl)
    key = f"{kind}/{match['id']}" if match.re is _RELATIVE else literal
    if scope.resolves(key):
        return kind, ""
    return kind, (
        f"{where}: {literal!r} does not resolve; expected {kind} {match['id']!r} in "
        "the output" + (" or among the external resources" if scope.external else "")
    )


def _bundle(bundle: dict[str, Any], scope: _Scope) -> Iterator[tuple[dict, str]]:
    """(entry resource, problem) of a Bundle: each entry's references resolve in its scope."""
    inner = _Scope(set(), scope.external, bundle_type=bundle.get("type"), outer=scope)
    seen: dict[str, int] = {}
    entries = [e for e in bundle.get("entry", []) if isinstance(e, dict)]
    for index, entry in enumerate(entries):
        url, resource = entry.get("fullUrl"), entry.get("resource")
        if isinstance(url, str):
            if url in seen:
                message = (
                    f"Bundle.entry[{index}].fullUrl: {url!r} is also entry[{seen[url]}]'s; "
                    "expected unique fullUrls"
                )
                yield bundle, message
            seen.setdefault(url, index)
            inner.full_urls.add(url)
        if isinstance(resource, dict) and "id" in resource:
            inner.known.add(f"{resource.get('resourceType')}/{resource['id']}")
    for entry in entries:
        resource = entry.get("resource")
        if isinstance(resource, dict):
            for message in _resource(resource, inner):
                yield resource, message


def _resource(resource: dict[str, Any], scope: _Scope) -> Iterator[str]:
    profiles = [u for u in profile_urls(resource) if u != resource.get("resourceType")]
    for found in references(resource):
        yield from _check(found, profiles, scope)


def _duplicates(resources: list[dict[str, Any]]) -> Iterator[tuple[dict, str]]:
    ids: dict[str, int] = {}
    identifiers: dict[tuple[str, str, str], str] = {}
    for resource in resources:
        resource_type, resource_id = identity(resource)
        key = f"{resource_type}/{resource_id}"
        ids[key] = ids.get(key, 0) + 1
        if ids[key] == 2:
            message = (
                f"{resource_type}.id: {resource_id!r} is used by more than one {resource_type}; "
                "expected ids unique per resource type"
            )
            yield resource, message
        for index, identifier in enumerate(resource.get("identifier", [])):
            if not isinstance(identifier, dict):
                continue
            system, value = identifier.get("system"), identifier.get("value")
            if not (isinstance(system, str) and isinstance(value, str)):
                continue
            owner = identifiers.setdefault((resource_type, system, value), key)
            if owner != key:
                message = (
                    f"{resource_type}.identifier[{index}]: {system}|{value} is also {owner}'s "
                    "identifier; expected identifiers unique per resource type"
                )
                yield resource, message


def validate_output(
    resources: Iterable[dict[str, Any]], *, external: Collection[str] = ()
) -> list[Problem]:
    """Reference and identity problems of a set of resources (a partition's whole output).

    `external`: resources that exist outside the set, as "Type/id" or absolute URLs (the
    Patients of a FHIR server the output links to)."""
    items = [r for r in resources if isinstance(r, dict)]
    known = {f"{r.get('resourceType')}/{r['id']}" for r in items if "id" in r}
    scope = _Scope(known, frozenset(external))
    problems: list[Problem] = []

    def report(resource: dict[str, Any], message: str) -> None:
        problems.append(Problem(*identity(resource), message, LAYER))

    for resource, message in _duplicates(items):
        report(resource, message)
    for resource in items:
        for message in _resource(resource, scope):
            report(resource, message)
        if resource.get("resourceType") == "Bundle":
            for entry, message in _bundle(resource, scope):
                report(entry, message)
    return problems
