"""Transaction Bundles: how the server finds each resource, and the order resources go in.

- each entry is a conditional update on the resource's deterministic identifier
  (PUT Observation?identifier=urn:ohx:fhir|...); a Provenance, which has no identifier, is
  updated by id (PUT Provenance/<id>); a withdrawn (entered-in-error) resource is a conditional
  DELETE;
- references resolve on the server: one to a resource in the same transaction points at that
  entry's fullUrl (urn:uuid), one to our resource sent earlier is a conditional reference by its
  identifier (Patient?identifier=urn:ohx:user:oura|...), which the server resolves to its own
  id; a clinical system's Patient keeps its literal id. Resources go out in dependency order
  (Patient, Device, DeviceAssociation, Observation, derived Observation, DiagnosticReport,
  Provenance; then deletes, in the reverse order), so a conditional reference always finds its
  target and no delete leaves a reference dangling.
Pure functions of the resources (and of the match URLs of those sent before): the outbox
(outbox.py) stores each resource's match URL and rank, the client (client.py) posts the Bundle.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any, Final
from urllib.parse import quote

import orjson

from ohx_dagster.fhir.common import is_withdrawn, references_in

# Delivery order by resource type: a resource goes after everything it references.
TYPE_RANK: Final[dict[str, int]] = {
    "Patient": 0,
    "Device": 1,
    "DeviceAssociation": 2,
    "Observation": 3,  # 4 when derived from or grouping other Observations
    "DiagnosticReport": 5,
    "Provenance": 6,
}
# Deletes go after every update, in the reverse order: a resource is deleted only once nothing
# on the server references it any more (servers refuse the other way round).
DELETE_RANK: Final = 20


def rank(resource: dict, *, deleted: bool = False) -> int:
    base = TYPE_RANK.get(resource["resourceType"], 3)
    if resource.get("derivedFrom") or resource.get("hasMember"):
        base += 1
    deleted = deleted or is_withdrawn(resource)
    return DELETE_RANK - base if deleted else base


def _token_escape(text: str) -> str:
    """FHIR search token escaping: a literal | , $ or \\ in a value is preceded by \\."""
    for char in ("\\", "|", ",", "$"):
        text = text.replace(char, "\\" + char)
    return text


def conditional_url(resource: dict) -> str:
    identifier = resource["identifier"][0]
    token = f"{_token_escape(identifier['system'])}|{_token_escape(identifier['value'])}"
    return f"{resource['resourceType']}?identifier={quote(token, safe='')}"


def match_url(resource: dict) -> str:
    """How the server finds the resource: by identifier, or by id when it has none."""
    if resource.get("identifier"):
        return conditional_url(resource)
    return f"{resource['resourceType']}/{resource['id']}"


def full_url(resource_type: str, resource_id: str) -> str:
    """The entry's fullUrl inside a transaction: a uuid derived from the resource's id, so the
    same resource has the same fullUrl in every attempt."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{resource_type}/{resource_id}')}"


def resolve_references(resources: Sequence[dict], elsewhere: dict[str, str]) -> list[dict]:
    """Copies of the resources whose references the server can resolve: to an entry of the same
    transaction by its fullUrl, to a resource delivered before by `elsewhere` (Type/id -> its
    match URL); others (a clinical system's Patient) stay as they are."""
    in_batch = {f"{r['resourceType']}/{r['id']}": full_url(r["resourceType"], r["id"])
                for r in resources}  # fmt: skip
    resolved = []
    for resource in resources:
        copy = orjson.loads(orjson.dumps(resource))
        for ref in references_in(copy):
            target = ref["reference"]
            ref["reference"] = in_batch.get(target) or elsewhere.get(target) or target
        resolved.append(copy)
    return resolved


def _entry(resource: dict, delete: bool) -> dict[str, Any]:
    """A conditional update (by id without identifier), or a (conditional) delete."""
    url = match_url(resource)
    if delete:
        return {"request": {"method": "DELETE", "url": url}}
    return {
        "fullUrl": full_url(resource["resourceType"], resource["id"]),
        "resource": resource,
        "request": {"method": "PUT", "url": url},
    }


def transaction(
    resources: Sequence[dict],
    elsewhere: dict[str, str] | None = None,
    deleted: Collection[tuple[str, str]] = (),
) -> dict:
    """The transaction Bundle for resources in delivery order (see the module docstring): the
    withdrawn ones (entered-in-error, or (type, id) in `deleted`) are deleted."""

    def delete(resource: dict) -> bool:
        key = (resource["resourceType"], resource["id"])
        return is_withdrawn(resource) or key in deleted

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r, delete(r)) for r in resolve_references(resources, elsewhere or {})],
    }
