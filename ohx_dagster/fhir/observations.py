"""Aggregate Observations (hourly / daily statistics) as plain dicts.

valueQuantity holds the mean (the sum for steps); components hold every statistic, each coded
with http://hl7.org/fhir/observation-statistics, so a reader never has to guess what a number is.
Ids and identifiers derive from the content key (provider, user, type, level, bucket start), so
re-publishing a partition produces the same resources.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd

from ohx_dagster.fhir.codes import (
    DAILY_STEPS,
    DIASTOLIC,
    IDENTIFIER_SYSTEM,
    STATISTIC,
    SYSTOLIC,
    TYPE_CODES,
    UCUM,
    Code,
    category,
)
from ohx_dagster.fhir.timefmt import format_us
from ohx_dagster.ids import content_key, stable_id
from ohx_dagster.models import AggregationLevel, HealthDataType, HealthSyncConfig


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": _number(value), "unit": unit, "system": UCUM, "code": unit}


def _number(value: float) -> float | int:
    """Whole numbers as integers (steps, counts); others as they are."""
    return int(value) if float(value).is_integer() else float(value)


def patient_reference(config: HealthSyncConfig) -> dict[str, str]:
    return {"reference": f"Patient/{config.fhir_patient_id}"}


def aggregate_key(row: Mapping[str, Any]) -> str:
    return content_key(
        row["provider"], row["user_id"], row["data_type"], row["level"], row["bucket_start_us"]
    )


def _statistic_components(row: Mapping[str, Any], unit: str) -> list[dict[str, Any]]:
    components = []
    # A sum is a statistic of counts (steps); the sum of heart rates means nothing.
    columns = ("mean", "min", "max", "sum") if unit == "1" else ("mean", "min", "max")
    for column in columns:
        value = row[column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        components.append(
            {"code": STATISTIC[column].concept(), "valueQuantity": quantity(value, unit)}
        )
    components.append({"code": STATISTIC["count"].concept(), "valueInteger": int(row["count"])})
    return components


def aggregate_observation(row: Mapping[str, Any], config: HealthSyncConfig) -> dict[str, Any]:
    kind = HealthDataType(row["data_type"])
    codes = TYPE_CODES[kind]
    level = AggregationLevel(row["level"])
    key = aggregate_key(row)
    code: Code = codes.code
    if kind is HealthDataType.STEPS and level is AggregationLevel.DAILY:
        code = DAILY_STEPS
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": stable_id("Observation", key),
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": f"Observation|{key}"}],
        "status": "final",
        "category": [category(codes.category)],
        "code": code.concept(),
        "subject": patient_reference(config),
        "effectivePeriod": {
            "start": format_us(row["bucket_start_us"], row["utc_offset_min"]),
            "end": format_us(row["bucket_end_us"], row["utc_offset_min"]),
        },
    }
    if kind is HealthDataType.BLOOD_PRESSURE:
        resource["component"] = [
            {"code": SYSTOLIC.concept(), "valueQuantity": quantity(row["mean"], codes.unit)},
            {
                "code": DIASTOLIC.concept(),
                "valueQuantity": quantity(row["diastolic_mean"], codes.unit),
            },
        ]
        return resource
    headline = row["sum"] if kind is HealthDataType.STEPS else row["mean"]
    resource["valueQuantity"] = quantity(headline, codes.unit)
    resource["component"] = _statistic_components(row, codes.unit)
    return resource


def aggregate_observations(
    aggregates: pd.DataFrame, configs: Mapping[str, HealthSyncConfig]
) -> Iterator[dict[str, Any]]:
    """Observations for the aggregate rows whose user asked for that aggregation level."""
    for row in aggregates.to_dict("records"):
        config = configs.get(row["user_id"])
        if config is not None and config.aggregation.value == row["level"]:
            yield aggregate_observation(row, config)
