"""Aggregate Observations (hourly / daily statistics) as plain dicts.

valueQuantity holds the mean (the sum for steps); components hold every statistic, each coded
with http://hl7.org/fhir/observation-statistics, so a reader never has to guess what a number is.
Ids and identifiers derive from the content key (provider, user, type, level, bucket start), so
re-publishing a partition produces the same resources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd

from ohx_dagster.fhir.codes import DAILY_STEPS, DIASTOLIC, STATISTIC, SYSTOLIC, TYPE_CODES
from ohx_dagster.fhir.common import observation_base, patient_reference, quantity
from ohx_dagster.fhir.timefmt import format_us
from ohx_dagster.ids import content_key
from ohx_dagster.models import AggregationLevel, HealthDataType, HealthSyncConfig

__all__ = ["aggregate_observation", "aggregate_observations", "patient_reference", "quantity"]

# The series Observations an aggregate row summarises (see fhir.partition).
DerivedFrom = Callable[[Mapping[str, Any]], list[dict[str, str]]]


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


def aggregate_observation(
    row: Mapping[str, Any],
    config: HealthSyncConfig,
    derived_from: list[dict[str, str]] = (),
    status: str = "final",
) -> dict[str, Any]:
    kind = HealthDataType(row["data_type"])
    codes = TYPE_CODES[kind]
    level = AggregationLevel(row["level"])
    resource = observation_base(kind, aggregate_key(row), config, status)
    if kind is HealthDataType.STEPS and level is AggregationLevel.DAILY:
        resource["code"] = DAILY_STEPS.concept()
    resource["effectivePeriod"] = {
        "start": format_us(row["bucket_start_us"], row["utc_offset_min"]),
        "end": format_us(row["bucket_end_us"], row["utc_offset_min"]),
    }
    if kind is HealthDataType.BLOOD_PRESSURE:
        if derived_from:
            resource["derivedFrom"] = list(derived_from)
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
    if derived_from:
        resource["derivedFrom"] = list(derived_from)
    resource["component"] = _statistic_components(row, codes.unit)
    return resource


def aggregate_observations(
    aggregates: pd.DataFrame,
    configs: Mapping[str, HealthSyncConfig],
    derived_from: DerivedFrom | None = None,
    statuses: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Observations for the aggregate rows whose user asked for that aggregation level;
    `statuses`: per user, final or preliminary (default final)."""
    for row in aggregates.to_dict("records"):
        config = configs.get(row["user_id"])
        if config is not None and config.aggregation.value == row["level"]:
            sources = derived_from(row) if derived_from is not None else []
            status = (statuses or {}).get(row["user_id"], "final")
            yield aggregate_observation(row, config, sources, status)
