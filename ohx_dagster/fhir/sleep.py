"""Sleep sessions: one Observation each, on the night they end (ohx_dagster/core/sessions.py).

As the Personal Health Records IG (hl7.fhir.uv.phr) models a sleep episode: code LOINC 93832-4
"Sleep duration" with the IG's `sleepEpisode` beside it, category social-history, the session as
effectivePeriod, the time asleep as valueQuantity in minutes, and a component per stage the
provider told: deep (93831-6), light (93830-8), REM (93829-0), each with the IG's sleep-episode
code beside LOINC's, and the IG's wake after sleep onset and number of awakenings where the
device records waking (core/sessions.py `night_totals`: from the stages' intervals or the
provider's summary of them). A session without stages has no components. The period's start is
written with the offset of its end: the same instant, one clock for the whole night.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import row_dicts
from ohx_dagster.core.sessions import night_totals
from ohx_dagster.fhir.codes import DECIMALS, SLEEP_COMPONENTS, SLEEP_EPISODE, TYPE_CODES
from ohx_dagster.fhir.common import (
    add_origin,
    epoch_us,
    observation_base,
    quantity,
)
from ohx_dagster.fhir.measurements import measurement_key
from ohx_dagster.fhir.timefmt import format_us

SLEEP = HealthDataType.SLEEP


def _minutes(seconds: float) -> dict[str, Any]:
    codes = TYPE_CODES[SLEEP]
    return quantity(round(seconds / 60.0, DECIMALS[SLEEP]), codes.unit, codes.unit_display)


def _component(field: str, value: dict[str, Any]) -> dict[str, Any]:
    codes = SLEEP_COMPONENTS[field]
    return {
        "code": {"coding": [c.coding() for c in codes], "text": codes[0].display},
        **value,
    }


def sleep_observation(row: Mapping[str, Any], config: HealthSyncConfig) -> dict[str, Any]:
    """The Observation of one stored session (a record batch row with `ts_us`)."""
    end_us = int(row["ts_us"])
    start_us = end_us - round(float(row["duration_s"]) * 1_000_000)
    key = measurement_key(row["provider"], config.user_id, SLEEP.value, end_us, row["device_id"],
                          config.link_generation)  # fmt: skip
    resource = observation_base(SLEEP, key, config)
    codes = TYPE_CODES[SLEEP]
    resource["code"] = {
        "coding": [codes.code.coding(), SLEEP_EPISODE.coding()],
        "text": codes.code.display,
    }
    offset = 0 if pd.isna(row["utc_offset_min"]) else int(row["utc_offset_min"])
    resource["effectivePeriod"] = {
        "start": format_us(start_us, offset),
        "end": format_us(end_us, offset),
    }
    resource["valueQuantity"] = _minutes(float(row["value"]) * 60.0)
    if row["samples"] is not None:
        totals = night_totals(row["samples"], float(row["duration_s"]))
        components = [
            _component(field, {"valueQuantity": _minutes(getattr(totals, field))})
            for field in ("deep", "light", "rem")
            if totals.staged
        ]
        if not np.isnan(totals.awake_after_onset):
            waso = _minutes(totals.awake_after_onset)
            components.append(_component("awake_after_onset", {"valueQuantity": waso}))
        if not np.isnan(totals.awakenings):
            count = int(totals.awakenings)
            components.append(_component("awakenings", {"valueInteger": count}))
        if components:
            resource["component"] = components
    add_origin(resource, row, config.user_id)
    return resource


def sleep_observations(
    records: pd.DataFrame, configs: Mapping[str, HealthSyncConfig]
) -> Iterator[dict[str, Any]]:
    frame = records[records["data_type"] == SLEEP.value]
    for row in row_dicts(frame.assign(ts_us=epoch_us(frame["ts"]))):
        if row["user_id"] in configs:
            yield sleep_observation(row, configs[row["user_id"]])
