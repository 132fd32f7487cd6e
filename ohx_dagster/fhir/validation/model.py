"""Layer 1: fhir.resources (pydantic) models: cardinality, types, primitive formats and values
(a 30th of February is no dateTime)."""

from __future__ import annotations

from fhir.resources import get_fhir_model_class
from pydantic import ValidationError as PydanticValidationError

from ohx_dagster.fhir.validation.problems import Problem, identity


def model_problems(resource: dict) -> list[Problem]:
    resource_type, resource_id = identity(resource)
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
