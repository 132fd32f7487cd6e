"""High-frequency series (heart rate, steps, RR intervals) as Observation.valueSampledData.

One Observation per user, type, device and UTC hour, never one resource per sample. R5 SampledData:
the first sample is at effectivePeriod.start; a regular series gives `interval` + `intervalUnit`,
an irregular one (RR intervals, beat by beat) `offsets` from the first sample in `intervalUnit`;
`data` holds the values in the type's canonical UCUM unit (origin 0, no factor), exactly as stored.

This is the hot path: the records of a group are numpy arrays and orjson writes the numbers, so a
day of 1 Hz heart rate for a hundred people takes seconds (bench/chain.py, scripts/bench).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ohx_dagster.core.ids import content_key
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.fhir.codes import TYPE_CODES
from ohx_dagster.fhir.common import (
    device_reference,
    number,
    observation_base,
    quantity,
    reference,
)
from ohx_dagster.fhir.timefmt import format_us, parse_us
from ohx_dagster.storage.record_tables import Chunk


def series_key(
    provider: str, user_id: str, data_type: str, hour_us: int, device_id: str, generation: int = 0
) -> str:
    return content_key(
        provider, user_id, data_type, "series", int(hour_us), device_id, generation=generation
    )


def series_reference(
    provider: str, user_id: str, data_type: str, hour_us: int, device_id: str, generation: int = 0
) -> dict[str, str]:
    key = series_key(provider, user_id, data_type, hour_us, device_id, generation)
    return reference("Observation", key)


def sampled_text(values: np.ndarray) -> str:
    """Numbers separated by single spaces; whole numbers without a decimal point."""
    values = np.ascontiguousarray(values, dtype="float64")
    if np.array_equal(values, np.round(values)):
        values = values.astype("int64")
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    return text[1:-1].replace(b",", b" ").decode()


def time_axis(ts_us: np.ndarray) -> dict[str, Any]:
    """`interval` for evenly spaced samples, else `offsets` (ms) from the first sample."""
    if len(ts_us) > 1:
        steps = np.diff(ts_us)
        step = int(steps[0])
        if step > 0 and (steps == step).all():
            if step % 1_000_000 == 0:
                return {"interval": step // 1_000_000, "intervalUnit": "s"}
            return {"interval": number(step / 1000), "intervalUnit": "ms"}
    return {"intervalUnit": "ms", "offsets": sampled_text((ts_us - ts_us[0]) / 1000)}


def series_observation(
    kind: HealthDataType,
    config: HealthSyncConfig,
    *,
    provider: str,
    device_id: str,
    hour_us: int,
    ts_us: np.ndarray,
    values: np.ndarray,
    offset_min: int,
    duration_s: float = float("nan"),
    status: str = "final",
) -> dict[str, Any]:
    """One hour of one type from one device as an Observation with valueSampledData."""
    codes = TYPE_CODES[kind]
    key = series_key(
        provider, config.user_id, kind.value, hour_us, device_id, config.link_generation
    )
    resource = observation_base(kind, key, config, status)
    end = int(ts_us[-1]) + (0 if np.isnan(duration_s) else round(duration_s * 1_000_000))
    resource["effectivePeriod"] = {
        "start": format_us(int(ts_us[0]), offset_min),
        "end": format_us(end, offset_min),
    }
    resource["valueSampledData"] = {
        "origin": quantity(0, codes.unit, codes.unit_display),
        **time_axis(ts_us),
        "dimensions": 1,
        "data": sampled_text(values),
    }
    device = device_reference(provider, config.user_id, device_id)
    if device:
        resource["device"] = device
    return resource


def chunk_observation(
    provider: str, chunk: Chunk, config: HealthSyncConfig, status: str = "final"
) -> dict[str, Any]:
    """A stored chunk (one hour of one type from one device) is exactly one series Observation."""
    samples = chunk.samples
    return series_observation(
        HealthDataType(chunk.data_type),
        config,
        provider=provider,
        device_id=chunk.device_id,
        hour_us=chunk.hour_us,
        ts_us=samples.ts_us,
        values=samples.value,
        offset_min=int(samples.utc_offset_min[0]),
        duration_s=float(samples.duration_s[-1]),
        status=status,
    )


def read_series(resource: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(epoch microseconds, values) of a series Observation: the inverse of series_observation."""
    sampled = resource["valueSampledData"]
    values = np.array(sampled["data"].split(), dtype="float64")
    values = sampled["origin"]["value"] + values * sampled.get("factor", 1)
    scale = {"s": 1_000_000, "ms": 1_000}[sampled["intervalUnit"]]
    start = parse_us(resource["effectivePeriod"]["start"])
    if "interval" in sampled:
        steps = np.arange(len(values)) * sampled["interval"] * scale
    else:
        steps = np.array(sampled["offsets"].split(), dtype="float64") * scale
    return start + np.round(steps).astype("int64"), values
