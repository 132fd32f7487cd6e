"""Validation of emitted resources against FHIR R5 (fhir.resources models: cardinality, types).

Slow by design (about 0.5 ms a resource): used by asset checks and tests, never on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fhir.resources import get_fhir_model_class
from pydantic import ValidationError as PydanticValidationError


@dataclass(frozen=True, slots=True)
class Problem:
    resource_type: str
    resource_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}: {self.message}"


def validate_resource(resource: dict) -> list[Problem]:
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


def validate_resources(resources: Iterable[dict]) -> list[Problem]:
    return [problem for resource in resources for problem in validate_resource(resource)]
