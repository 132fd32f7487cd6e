"""Layer 2: the official JSON schema, fhir.schema.json of hl7.fhir.r5.core 5.0.0 (structure:
unknown elements such as an R4 SampledData.period, enums, primitive regexes)."""

from __future__ import annotations

from functools import cache
from typing import Any

from ohx_dagster.fhir.validation.packages import package_path, read_json
from ohx_dagster.fhir.validation.problems import Problem, identity


@cache
def _schema_definitions() -> dict[str, Any]:
    return read_json(package_path() / "openapi" / "fhir.schema.json")["definitions"]


@cache
def _schema_validator(resource_type: str) -> Any:
    from jsonschema import Draft6Validator

    definitions = _schema_definitions()
    schema = {"$ref": f"#/definitions/{resource_type}", "definitions": definitions}
    return Draft6Validator(schema)


def schema_problems(resource: dict) -> list[Problem]:
    resource_type, resource_id = identity(resource)
    if resource_type not in _schema_definitions():
        return [Problem(resource_type, resource_id, "no such resourceType in R5", "schema")]
    problems = []
    for error in _schema_validator(resource_type).iter_errors(resource):
        where = ".".join(str(p) for p in error.absolute_path) or resource_type
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        problems.append(Problem(resource_type, resource_id, f"{where}: {message}", "schema"))
    return sorted(problems, key=lambda p: p.message)
