"""What every emitted resource shares: deterministic id + identifier, references, quantities.

A resource's id and identifier derive only from its content key (provider, user, type, window,
statistic ...), so publishing it again is an idempotent conditional update, never a duplicate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ohx_dagster.fhir.codes import IDENTIFIER_SYSTEM, TYPE_CODES, UCUM, category
from ohx_dagster.ids import stable_id
from ohx_dagster.models import HealthDataType, HealthSyncConfig


def epoch_us(timestamps: pd.Series) -> np.ndarray:
    """Integer epoch microseconds of a batch's `ts` column (UTC)."""
    return timestamps.dt.as_unit("us").astype("int64").to_numpy()


def number(value: float) -> float | int:
    """Whole numbers as integers (steps, counts, bpm); others exactly as they are."""
    value = float(value)
    return int(value) if value.is_integer() else value


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


def patient_reference(config: HealthSyncConfig) -> dict[str, str]:
    return {"reference": f"Patient/{config.fhir_patient_id}"}


def device_key(provider: str, device_id: str) -> str:
    return f"{provider}|{device_id}"


def device_reference(provider: str, device_id: str) -> dict[str, str] | None:
    """The Device a measurement came from, or None when the provider does not say."""
    return reference("Device", device_key(provider, device_id)) if device_id else None


def observation_base(
    kind: HealthDataType, key: str, config: HealthSyncConfig, status: str = "final"
) -> dict[str, Any]:
    """The leading elements of an Observation of a type: profile, status, category, code, subject.

    Aggregates claim the profile too: an hourly mean heart rate is still a heart rate. `status`:
    final, or preliminary while late data may still change it (ohx_dagster/publish.py)."""
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


def device(provider: str, device_id: str) -> dict[str, Any]:
    """One Device resource per provider device (deterministic id: emitted again, no change)."""
    resource = header("Device", device_key(provider, device_id))
    resource["status"] = "active"
    resource["displayName"] = device_id
    resource["name"] = [{"value": device_id, "type": "user-friendly-name"}]
    return resource
