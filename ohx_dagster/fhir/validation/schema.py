"""Layer 2: the official JSON schema, fhir.schema.json of hl7.fhir.r5.core 5.0.0 (structure:
unknown elements such as an R4 SampledData.period, enums, primitive regexes)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any, Final

import orjson

from ohx_dagster.fhir.validation.packages import package_path, read_json
from ohx_dagster.fhir.validation.problems import Problem, identity

# Values found valid against a definition, kept for the process (as the invariant outcomes are):
# a partition's resources repeat most of their elements (codes, subject, meta, performer), and a
# `$ref`'s verdict depends on the definition and the value only. Only passes are kept, so an
# error is always reported from a fresh evaluation, with its path.
_VALID: set[tuple[str, type, Any]] = set()
_VALID_MAX: Final = 50_000
_VALUE_MAX_BYTES: Final = 2_048
# And at most this many bytes of JSON (a few MB more with the bookkeeping): 50,000 values of
# 2 KiB would be 100 MB, a third of what `ohx import` may take (docs/storage.md).
_VALID_MAX_JSON: Final = 8 << 20
_json_bytes = [0]  # of the values in _VALID


def forget_valid_values() -> None:
    """Empty the memory of valid values (as a new process starts: benchmarks)."""
    _VALID.clear()
    _json_bytes[0] = 0


def _remembered_key(ref: str, instance: Any) -> tuple[str, type, Any] | None:
    if isinstance(instance, dict | list):
        try:
            blob = orjson.dumps(instance)
        except TypeError:  # not plain JSON (a Decimal): evaluated, not remembered
            return None
        return (ref, type(instance), blob) if len(blob) <= _VALUE_MAX_BYTES else None
    if isinstance(instance, str) and len(instance) > _VALUE_MAX_BYTES:
        return None
    # The type is part of the key: True == 1 == 1.0, and each is valid against other definitions.
    return ref, type(instance), instance


def _remembering_ref(validator: Any, ref: str, instance: Any, schema: Any) -> Iterator[Any]:
    key = _remembered_key(ref, instance)
    if key is not None and key in _VALID:
        return
    errors = list(validator._validate_reference(ref=ref, instance=instance))
    if not errors and key is not None:
        if len(_VALID) >= _VALID_MAX or _json_bytes[0] >= _VALID_MAX_JSON:
            forget_valid_values()
        if isinstance(key[2], bytes):
            # A copy of its own length: orjson's bytes keep the 4 KiB they were written into (a
            # full memory of them was 200 MB; `ohx import` grew 0.33 MiB a day published).
            key = (key[0], key[1], bytes(memoryview(key[2])))
            _json_bytes[0] += len(key[2])
        _VALID.add(key)
    yield from errors


@cache
def _schema_definitions() -> dict[str, Any]:
    return read_json(package_path() / "openapi" / "fhir.schema.json")["definitions"]


@cache
def _schema_validator(resource_type: str) -> Any:
    from jsonschema import Draft6Validator, validators

    definitions = _schema_definitions()
    schema = {"$ref": f"#/definitions/{resource_type}", "definitions": definitions}
    return validators.extend(Draft6Validator, {"$ref": _remembering_ref})(schema)


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
