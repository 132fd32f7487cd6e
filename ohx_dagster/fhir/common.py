"""What every emitted resource shares: deterministic id + identifier, references, quantities,
and the resources about the person and their devices (Patient, Device, DeviceAssociation).

A resource's id and identifier derive only from its content key (provider, person, type, window,
statistic ...), so publishing it again is an idempotent conditional update, never a duplicate.
Every key of a person's resource begins with provider|user_id: whose data a resource holds can
be read from its identifier (erasure and the outbox rely on it).

Subjects resolve: a person's resources point at `Patient/<id>` and carry the person's identifier
in the same Reference. The id is the clinical system's when the connect flow was given one (that
Patient lives on the clinical server, not in our output); otherwise it is ours, and every output
that references it holds the matching Patient resource. Delivery turns references into
conditional ones that the server resolves inside the transaction
(ohx_dagster.fhir.delivery.bundle).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from ohx_dagster.core.ids import content_key, stable_id
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig, default_patient_id
from ohx_dagster.fhir.codes import (
    DEVICE_ASSOCIATION_STATUS,
    IDENTIFIER_SYSTEM,
    PERSON_SYSTEM,
    TYPE_CODES,
    UCUM,
    category,
)


def epoch_us(timestamps: pd.Series) -> np.ndarray:
    """Integer epoch microseconds of a batch's `ts` column (UTC)."""
    return timestamps.dt.as_unit("us").astype("int64").to_numpy()


def number(value: float) -> float | int:
    """Whole numbers as integers (steps, counts, bpm); others exactly as they are, unless the
    shortest exact form needs more fraction digits than FHIR's decimal allows (17): computed means
    are then rounded to 15 significant digits."""
    value = float(value)
    if value.is_integer():
        return int(value)
    text = repr(value)
    if "e" not in text and len(text.partition(".")[2]) <= 17:
        return value
    return float(f"{value:.15g}")


def quantity(value: float, unit: str, display: str | None = None) -> dict[str, Any]:
    return {"value": number(value), "unit": display or unit, "system": UCUM, "code": unit}


def header(resource_type: str, key: str) -> dict[str, Any]:
    """resourceType, id and identifier of the resource with this content key."""
    return {
        "resourceType": resource_type,
        "id": stable_id(resource_type, key),
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": f"{resource_type}|{key}"}],
    }


def reference(resource_type: str, key: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{stable_id(resource_type, key)}"}


ENTERED_IN_ERROR: Final = "entered-in-error"


def entered_in_error(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource withdrawn: its status entered-in-error, as its type codes a status (a code,
    or the DeviceAssociation's CodeableConcept)."""
    if resource["resourceType"] == "DeviceAssociation":
        coding = {"system": DEVICE_ASSOCIATION_STATUS, "code": ENTERED_IN_ERROR,
                  "display": "Entered in Error"}  # fmt: skip
        return {**resource, "status": {"coding": [coding]}}
    return {**resource, "status": ENTERED_IN_ERROR}


def is_withdrawn(resource: dict[str, Any]) -> bool:
    """Whether the resource is entered-in-error (`entered_in_error`)."""
    status = resource.get("status")
    if isinstance(status, dict):
        return any(c.get("code") == ENTERED_IN_ERROR for c in status.get("coding", ()))
    return status == ENTERED_IN_ERROR


def references_in(node: Any) -> Iterator[dict]:
    """Every Reference with a literal `reference` inside a resource (or any JSON value)."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from references_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from references_in(item)


def referenced(resources: Iterable[dict]) -> set[str]:
    """The literal references (Type/id) the resources hold."""
    return {r["reference"] for resource in resources for r in references_in(resource)}


def person_identifier(config: HealthSyncConfig) -> dict[str, str]:
    """The person as the product knows them: their provider account."""
    return {"system": f"{PERSON_SYSTEM}:{config.provider}", "value": config.user_id}


def is_clinical_patient(config: HealthSyncConfig) -> bool:
    """Whether the connect flow gave the clinical system's Patient id (else it is ours)."""
    return config.fhir_patient_id != default_patient_id(config)


def patient_reference(config: HealthSyncConfig) -> dict[str, Any]:
    return {
        "reference": f"Patient/{config.fhir_patient_id}",
        "type": "Patient",
        "identifier": person_identifier(config),
    }


def patient(config: HealthSyncConfig) -> dict[str, Any]:
    """The Patient our output holds for a person the clinical system has not named."""
    return {
        "resourceType": "Patient",
        "id": config.fhir_patient_id,
        "identifier": [person_identifier(config)],
        "active": True,
    }


def device_key(provider: str, user_id: str, device_id: str) -> str:
    """A Device names no patient: its key has no link generation (a relinked person's resources
    keep pointing at the same Device; their DeviceAssociation, which names the patient, is new)."""
    return content_key(provider, user_id, "device", device_id)


def device_reference(provider: str, user_id: str, device_id: str) -> dict[str, str] | None:
    """The person's Device a measurement came from, or None when the provider does not say."""
    return reference("Device", device_key(provider, user_id, device_id)) if device_id else None


# How a value was obtained (ohx_dagster.core.records.METHODS), as Observation.method says it. Device
# measurements say nothing: their device is in Observation.device.
METHOD_TEXT: Final[dict[str, str]] = {
    "manual": "entered by hand",
    "ambiguous": "measured by a shared device; may belong to another person",
}


def method_concept(methods: Iterable[str]) -> dict[str, Any] | None:
    """Observation.method for values obtained in these ways; None when all came from devices."""
    named = sorted({m for m in methods if m and m != "device"})
    if not named:
        return None
    return {"text": "; ".join(METHOD_TEXT.get(m, m) for m in named)}


def add_origin(resource: dict[str, Any], row: Mapping[str, Any], user_id: str) -> None:
    """A record's Observation gets the Device it came from and how it was obtained (a typed-in
    or shared-device value), when the provider says."""
    device = device_reference(row["provider"], user_id, row["device_id"])
    if device:
        resource["device"] = device
    method = method_concept([row.get("method") or "device"])
    if method:
        resource["method"] = method


def observation_base(
    kind: HealthDataType, key: str, config: HealthSyncConfig, status: str = "final"
) -> dict[str, Any]:
    """The leading elements of an Observation of a type: profile, status, category, code, subject.

    Aggregates claim the profile too: an hourly mean heart rate is still a heart rate. `status`:
    final, or preliminary while late data may still change it
    (ohx_dagster/publish/partitions.py)."""
    codes = TYPE_CODES[kind]
    resource = header("Observation", key)
    if codes.profile:
        resource = {
            "resourceType": "Observation",
            "id": resource["id"],
            "meta": {"profile": [codes.profile]},
            "identifier": resource["identifier"],
        }
    resource["status"] = status
    resource["category"] = [category(codes.category)]
    resource["code"] = codes.concept()
    resource["subject"] = patient_reference(config)
    return resource


def device(provider: str, config: HealthSyncConfig, device_id: str) -> list[dict[str, Any]]:
    """The person's Device (one per provider device of theirs: two people's "fitbit" are two
    Devices) and the DeviceAssociation that says it is theirs (R5 Device has no patient)."""
    key = device_key(provider, config.user_id, device_id)
    resource = header("Device", key)
    resource["status"] = "active"
    resource["displayName"] = device_id
    resource["name"] = [{"value": device_id, "type": "user-friendly-name"}]
    association = header(
        "DeviceAssociation", content_key(key, "association", generation=config.link_generation)
    )
    association["device"] = reference("Device", key)
    association["status"] = {
        "coding": [{"system": DEVICE_ASSOCIATION_STATUS, "code": "unknown", "display": "Unknown"}]
    }
    association["subject"] = patient_reference(config)
    return [resource, association]
