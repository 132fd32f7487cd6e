"""Workouts: the Physical Activity IG's activity group, on the day they end.

One workout (ohx_dagster/core/sessions.py) is a panel Observation (the IG's temporary code
PAPanel, category activity and the IG's PhysicalActivity, the workout as effectivePeriod, no value)
whose `hasMember` are one Observation per measure the provider reported, each with the same
period: the activity (73985-4 "Exercise activity", its value the provider's name of it as text:
no provider's names are mapped to LOINC's answers), the time exercising (55411-3, min), the energy
(55424-6, kcal), the mean and highest heart rate (55425-3, 55426-1, /min) and the distance (this
project's code: the IG has none, m). The period's start is written with the offset of its end.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import row_dicts
from ohx_dagster.core.sessions import WORKOUT_MEASURES
from ohx_dagster.fhir.codes import (
    DECIMALS,
    EXERCISE_ACTIVITY,
    PA_CATEGORY,
    PA_PANEL,
    TYPE_CODES,
    WORKOUT_MEMBERS,
    Code,
    category,
)
from ohx_dagster.fhir.common import (
    add_origin,
    epoch_us,
    header,
    patient_reference,
    quantity,
    reference,
)
from ohx_dagster.fhir.measurements import measurement_key
from ohx_dagster.fhir.timefmt import format_us

WORKOUT = HealthDataType.WORKOUT


def _observation(key: str, code: Code, row: Mapping[str, Any], config: HealthSyncConfig,
                 period: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    resource = header("Observation", key)
    resource["status"] = "final"
    resource["category"] = [
        category("activity"),
        {"coding": [PA_CATEGORY.coding()], "text": PA_CATEGORY.display},
    ]
    resource["code"] = code.concept()
    resource["subject"] = patient_reference(config)
    resource["effectivePeriod"] = period
    add_origin(resource, row, config.user_id)
    return resource


def workout_resources(row: Mapping[str, Any], config: HealthSyncConfig) -> list[dict[str, Any]]:
    """[panel, its members] of one stored workout (a record batch row with `ts_us`)."""
    end_us = int(row["ts_us"])
    start_us = end_us - round(float(row["duration_s"]) * 1_000_000)
    offset = 0 if pd.isna(row["utc_offset_min"]) else int(row["utc_offset_min"])
    period = {"start": format_us(start_us, offset), "end": format_us(end_us, offset)}
    key = measurement_key(row["provider"], config.user_id, WORKOUT.value, end_us, row["device_id"],
                          config.link_generation)  # fmt: skip
    members: dict[str, dict[str, Any]] = {}  # content key -> member

    def member(name: str, code: Code) -> dict[str, Any]:
        resource = _observation(f"{key}|{name}", code, row, config, period)
        members[f"{key}|{name}"] = resource
        return resource

    if row["context"]:
        member("activity", EXERCISE_ACTIVITY)["valueCodeableConcept"] = {"text": row["context"]}
    codes = TYPE_CODES[WORKOUT]
    minutes = round(float(row["value"]), DECIMALS[WORKOUT])
    member("duration", codes.code)["valueQuantity"] = quantity(
        minutes, codes.unit, codes.unit_display
    )
    measures = np.full(len(WORKOUT_MEASURES), np.nan)
    if row["samples"] is not None:
        measures = np.asarray(row["samples"], dtype="float64")
    for (name, (unit, _)), value in zip(WORKOUT_MEASURES.items(), measures, strict=True):
        if not np.isnan(value):
            member(name, WORKOUT_MEMBERS[name])["valueQuantity"] = quantity(value, unit)
    panel = _observation(key, PA_PANEL, row, config, period)
    panel["hasMember"] = [reference("Observation", k) for k in members]
    return [panel, *members.values()]


def workout_observations(
    records: pd.DataFrame, configs: Mapping[str, HealthSyncConfig]
) -> Iterator[dict[str, Any]]:
    frame = records[records["data_type"] == WORKOUT.value]
    for row in row_dicts(frame.assign(ts_us=epoch_us(frame["ts"]))):
        if row["user_id"] in configs:
            yield from workout_resources(row, configs[row["user_id"]])
