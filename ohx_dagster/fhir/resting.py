"""Resting heart rate of a person's local day (LOINC 40443-4 "Heart rate --resting"), from the heart
rate their provider says was taken at rest or asleep (Oura's heart-rate `source`: rest, sleep).

A provider that does not say what the person was doing gives no resting heart rate: an average of
every reading would be a daily heart rate, not a resting one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ohx_dagster.core.ids import content_key
from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.fhir.codes import DECIMALS, LOINC, STATISTIC, Code, category
from ohx_dagster.fhir.common import header, patient_reference, quantity
from ohx_dagster.fhir.timefmt import format_us

if TYPE_CHECKING:
    from ohx_dagster.fhir.partition import BucketData

RESTING_CONTEXTS: Final = ("rest", "sleep")
RESTING_HEART_RATE: Final = Code(LOINC, "40443-4", "Heart rate --resting")


def resting_heart_rate(
    data: BucketData,
    statuses: Mapping[str, str],
    derived_from: Callable[[Mapping[str, Any]], list[dict[str, str]]],
) -> list[dict[str, Any]]:
    """One Observation per person of the bucket whose local day has resting readings."""
    resources = []
    for user_id, config in data.configs.items():
        calendar = Calendar.of(config)
        start, end = calendar.day_window(data.day)
        parts = []
        for chunk in data.chunks:
            if chunk.user_id == user_id and chunk.data_type == "heart_rate":
                samples = chunk.samples
                offsets = samples.utc_offset_min.astype("float64")
                inside = calendar.in_day("heart_rate", samples.ts_us, offsets, data.day)
                parts.append(samples.value[inside & np.isin(samples.context, RESTING_CONTEXTS)])
        values = np.concatenate(parts) if parts else np.array([])
        if not values.size:
            continue
        zone = str(calendar.zone_on(data.day).key)
        key = content_key(
            data.provider, user_id, "heart_rate", "resting", start, zone,
            generation=config.link_generation,
        )  # fmt: skip
        offset = calendar.offset_min(start, data.day)
        resource = header("Observation", key)
        resource["status"] = statuses.get(user_id, "final")
        resource["category"] = [category("vital-signs")]
        resource["code"] = RESTING_HEART_RATE.concept()
        resource["subject"] = patient_reference(config)
        resource["effectivePeriod"] = {
            "start": format_us(start, offset),
            "end": format_us(end, calendar.offset_min(end, data.day)),
        }
        mean = round(float(values.mean()), DECIMALS[HealthDataType.HEART_RATE])
        resource["method"] = {
            "coding": [STATISTIC["mean"].coding()],
            "text": f"average of {int(values.size)} resting readings",
        }
        resource["valueQuantity"] = quantity(mean, "/min", "beats/minute")
        sources = derived_from(
            {"user_id": user_id, "data_type": "heart_rate", "bucket_start_us": start,
             "bucket_end_us": end}
        )  # fmt: skip
        if sources:
            resource["derivedFrom"] = sources
        resource["component"] = [
            {"code": STATISTIC["mean"].concept(), "valueQuantity": quantity(mean, "/min")},
            {"code": STATISTIC["min"].concept(), "valueQuantity": quantity(values.min(), "/min")},
            {"code": STATISTIC["max"].concept(), "valueQuantity": quantity(values.max(), "/min")},
            {"code": STATISTIC["count"].concept(), "valueInteger": int(values.size)},
        ]
        resources.append(resource)
    return resources
