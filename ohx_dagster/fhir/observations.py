"""Aggregate Observations (hourly / daily statistics) as plain dicts.

valueQuantity holds the mean (the sum for steps); components hold every statistic, each coded
with http://hl7.org/fhir/observation-statistics, so a reader never has to guess what a number is.
Ids and identifiers derive from the content key (provider, user, type, level, bucket start), so
re-publishing a partition produces the same resources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from ohx_dagster.core.datatypes import DATA_TYPES
from ohx_dagster.core.ids import content_key
from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import AggregationLevel, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import row_dicts
from ohx_dagster.fhir.codes import (
    BP_EXTREMES,
    DAILY_STEPS,
    DECIMALS,
    DIASTOLIC,
    STATISTIC,
    SYSTOLIC,
    TYPE_CODES,
)
from ohx_dagster.fhir.common import (
    device_reference,
    method_concept,
    observation_base,
    patient_reference,
    quantity,
)
from ohx_dagster.fhir.timefmt import format_us

__all__ = ["aggregate_observation", "aggregate_observations", "patient_reference", "quantity"]

# The series Observations an aggregate row summarises (see fhir.partition).
DerivedFrom = Callable[[Mapping[str, Any]], list[dict[str, str]]]


def aggregate_key(row: Mapping[str, Any], config: HealthSyncConfig) -> str:
    """The bucket, and the zone it was cut in: the same file read in another zone (a re-import
    of a wall-clock export) gives other resources, never the same ids with other content."""
    calendar = Calendar.of(config)
    start = int(row["bucket_start_us"])
    return content_key(
        row["provider"],
        row["user_id"],
        row["data_type"],
        row["level"],
        start,
        str(calendar.zone_on(calendar.day_of(start)).key),
        generation=config.link_generation,
    )


def _value(row: Mapping[str, Any], column: str, kind: HealthDataType) -> float | None:
    """A statistic rounded to the decimals its type is published with (None: there is none)."""
    value = row[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), DECIMALS[kind])


def _headline(row: Mapping[str, Any], column: str, kind: HealthDataType) -> float:
    """A statistic every aggregate has (a bucket holds at least one reading)."""
    value = _value(row, column, kind)
    assert value is not None, f"an aggregate without its {column}"
    return value


def _statistic_components(row: Mapping[str, Any], kind: HealthDataType) -> list[dict[str, Any]]:
    unit = TYPE_CODES[kind].unit
    components = []
    # A sum is a statistic of counts (steps); the sum of heart rates means nothing.
    columns = ("mean", "min", "max", "sum") if unit == "1" else ("mean", "min", "max")
    for column in columns:
        value = _value(row, column, kind)
        if value is not None:
            components.append(
                {"code": STATISTIC[column].concept(), "valueQuantity": quantity(value, unit)}
            )
    components.append(_count(row))
    return components


def _count(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"code": STATISTIC["count"].concept(), "valueInteger": int(row["count"])}


def _provenance(
    resource: dict[str, Any], row: Mapping[str, Any], config: HealthSyncConfig, headline: str
) -> None:
    """The device the values came from (when one), and how they were obtained: a statistic (the
    `headline` one, coded: what tells an aggregate from a reading), of readings entered by hand
    or attributed by guess when any were."""
    devices = [d for d in str(row.get("devices") or "").split(",") if d]
    if len(devices) == 1:
        resource["device"] = device_reference(row["provider"], config.user_id, devices[0])
    method = method_concept(str(row.get("methods") or "").split(","))
    statistic = STATISTIC[headline]
    text = f"{statistic.display.lower()} of {int(row['count'])} readings"
    resource["method"] = {
        "coding": [statistic.coding()],
        "text": f"{text}; {method['text']}" if method else text,
    }


def aggregate_observation(
    row: Mapping[str, Any],
    config: HealthSyncConfig,
    derived_from: Sequence[dict[str, str]] = (),
    status: str = "final",
) -> dict[str, Any]:
    """An hourly or daily statistic. Every aggregate says which statistic its value is and of how
    many readings (components coded with observation-statistics; the blood-pressure panel beside
    its systolic and diastolic components), which device and method the readings came from, and
    `derivedFrom` the readings' own Observations."""
    kind = HealthDataType(row["data_type"])
    codes = TYPE_CODES[kind]
    level = AggregationLevel(row["level"])
    resource = observation_base(kind, aggregate_key(row, config), config, status)
    if kind is HealthDataType.STEPS and level is AggregationLevel.DAILY:
        resource["code"] = DAILY_STEPS.concept()
    # Each end written with the offset in force then (a DST day ends at another offset).
    calendar = Calendar.of(config)
    end_us = int(row["bucket_end_us"])
    resource["effectivePeriod"] = {
        "start": format_us(row["bucket_start_us"], row["utc_offset_min"]),
        "end": format_us(end_us, calendar.offset_min(end_us, calendar.day_of(end_us - 1))),
    }
    headline = DATA_TYPES[kind].headline
    _provenance(resource, row, config, headline)
    if derived_from:
        resource["derivedFrom"] = list(derived_from)
    if kind is HealthDataType.BLOOD_PRESSURE:
        # The bp profile fixes systolic and diastolic as the panel's components; the statistic
        # they hold (the average), the extremes and the number of readings are components of
        # their own.
        resource["component"] = [
            {
                "code": SYSTOLIC.concept(),
                "valueQuantity": quantity(_headline(row, "mean", kind), codes.unit),
            },
            {
                "code": DIASTOLIC.concept(),
                "valueQuantity": quantity(_headline(row, "diastolic_mean", kind), codes.unit),
            },
            {
                "code": STATISTIC["mean"].concept(),
                "valueString": "systolic and diastolic are averages",
            },
            *(
                {"code": code.concept(), "valueQuantity": quantity(value, codes.unit)}
                for column, code in BP_EXTREMES.items()
                if (value := _value(row, column, kind)) is not None
            ),
            _count(row),
        ]
        return resource
    resource["valueQuantity"] = quantity(_headline(row, headline, kind), codes.unit)
    resource["component"] = _statistic_components(row, kind)
    return resource


def aggregate_observations(
    aggregates: pd.DataFrame,
    configs: Mapping[str, HealthSyncConfig],
    derived_from: DerivedFrom | None = None,
    statuses: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Observations for the aggregate rows whose user asked for that aggregation level;
    `statuses`: per user, final or preliminary (default final)."""
    for row in row_dicts(aggregates):
        config = configs.get(row["user_id"])
        if config is not None and config.aggregation.value == row["level"]:
            sources = derived_from(row) if derived_from is not None else []
            status = (statuses or {}).get(row["user_id"], "final")
            yield aggregate_observation(row, config, sources, status)
