"""Individual measurements of the sparse types (blood pressure, weight, temperature, SpO2): one
Observation each, at its exact time, for everyone (aggregates summarise them per preference, and
derive from them, so the devices and times of what was averaged stay visible).

Blood pressure is the 85354-9 panel with systolic (8480-6) and diastolic (8462-4) components and no
value of its own (the R5 bp profile forbids one); SpO2 carries 59408-5 and the 2708-6 coding the
oxygensat profile requires; each claims its R5 vital-signs profile in meta.profile.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import pandas as pd

from ohx_dagster.core.datatypes import Shape, of_shape
from ohx_dagster.core.ids import content_key
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import row_dicts
from ohx_dagster.fhir.codes import DIASTOLIC, SYSTOLIC, TYPE_CODES
from ohx_dagster.fhir.common import (
    add_origin,
    epoch_us,
    observation_base,
    quantity,
)
from ohx_dagster.fhir.timefmt import format_us

SPARSE_TYPES: Final = of_shape(Shape.READING)


def measurement_key(
    provider: str, user_id: str, data_type: str, ts_us: int, device_id: str, generation: int = 0
) -> str:
    return content_key(
        provider, user_id, data_type, "individual", int(ts_us), device_id, generation=generation
    )


def measurement_observation(row: Mapping[str, Any], config: HealthSyncConfig) -> dict[str, Any]:
    kind = HealthDataType(row["data_type"])
    codes = TYPE_CODES[kind]
    ts_us = int(row["ts_us"])
    key = measurement_key(
        row["provider"], config.user_id, kind.value, ts_us, row["device_id"], config.link_generation
    )
    resource = observation_base(kind, key, config)
    offset = 0 if pd.isna(row["utc_offset_min"]) else int(row["utc_offset_min"])
    resource["effectiveDateTime"] = format_us(ts_us, offset)
    if kind is HealthDataType.BLOOD_PRESSURE:
        resource["component"] = [
            {
                "code": SYSTOLIC.concept(),
                "valueQuantity": quantity(row["value"], codes.unit, codes.unit_display),
            },
            {
                "code": DIASTOLIC.concept(),
                "valueQuantity": quantity(row["diastolic"], codes.unit, codes.unit_display),
            },
        ]
    else:
        resource["valueQuantity"] = quantity(row["value"], codes.unit, codes.unit_display)
    add_origin(resource, row, config.user_id)
    return resource


def measurement_rows(records: pd.DataFrame) -> pd.DataFrame:
    """The sparse-type records, with their instants as epoch microseconds."""
    frame = records[records["data_type"].isin([t.value for t in SPARSE_TYPES])]
    return frame.assign(ts_us=epoch_us(frame["ts"]))


def measurement_observations(
    records: pd.DataFrame, configs: Mapping[str, HealthSyncConfig]
) -> Iterator[dict[str, Any]]:
    for row in row_dicts(measurement_rows(records)):
        if row["user_id"] in configs:
            yield measurement_observation(row, configs[row["user_id"]])
