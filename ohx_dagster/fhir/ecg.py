"""ECG recordings: a DiagnosticReport whose results are the waveform and the heart rate around it.

The waveform is an Observation with valueSampledData: origin 0 uV, `factor` the device's
resolution (so `data` holds whole numbers in device steps), `interval` the sampling interval in ms.
The report (LOINC 11524-6, HL7 v2-0074 section EC) lists it in `result` together with the
heart-rate and RR-interval series Observations of the hours the recording touches (the linking
rule: what was recorded with the ECG travels with it). Nothing is an
attachment: the seed's `media.link` is not valid R5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ohx_dagster.core.ids import content_key
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import row_dicts
from ohx_dagster.fhir.codes import ECG_SECTION, ECG_WAVEFORM, TYPE_CODES, category
from ohx_dagster.fhir.common import (
    device_reference,
    epoch_us,
    header,
    number,
    patient_reference,
    quantity,
    reference,
)
from ohx_dagster.fhir.series import sampled_text
from ohx_dagster.fhir.timefmt import format_us, parse_us

# (user_id, start_us, end_us) -> references to the heart-rate and RR series around that window.
LinkedSeries = Callable[[str, int, int], list[dict[str, str]]]


def ecg_key(provider: str, user_id: str, ts_us: int, device_id: str, generation: int = 0) -> str:
    return content_key(
        provider, user_id, HealthDataType.ECG.value, int(ts_us), device_id, generation=generation
    )


def device_steps(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """(whole-number data, factor): the coarsest decimal resolution that keeps every sample."""
    for digits in range(7):
        scaled = samples * 10.0**digits
        steps = np.round(scaled)
        if np.allclose(scaled, steps, rtol=0, atol=1e-6 * max(1.0, 10.0**digits)):
            return steps, 10.0**-digits
    return samples, 1.0


def ecg_resources(
    row: Mapping[str, Any], config: HealthSyncConfig, linked: LinkedSeries, status: str = "final"
) -> list[dict[str, Any]]:
    """[waveform Observation, DiagnosticReport] of one ECG record. The report is no more final
    than the series it links to (`status`: theirs, the person's day's)."""
    provider, device_id = row["provider"], row["device_id"]
    ts_us = int(row["ts_us"])
    offset = 0 if pd.isna(row["utc_offset_min"]) else int(row["utc_offset_min"])
    samples = np.asarray(row["samples"], dtype="float64")
    rate = float(row["sampling_rate_hz"])
    end_us = ts_us + round(len(samples) / rate * 1_000_000)
    period = {"start": format_us(ts_us, offset), "end": format_us(end_us, offset)}
    key = ecg_key(provider, config.user_id, ts_us, device_id, config.link_generation)
    data, factor = device_steps(samples)

    waveform = header("Observation", f"{key}|waveform")
    waveform["status"] = "final"
    waveform["category"] = [category("procedure")]
    waveform["code"] = ECG_WAVEFORM.concept()
    waveform["subject"] = patient_reference(config)
    waveform["effectivePeriod"] = period
    waveform["valueSampledData"] = {
        "origin": quantity(0, "uV", "microvolt"),
        "interval": number(1000.0 / rate),
        "intervalUnit": "ms",
        "factor": number(factor),
        "dimensions": 1,
        "data": sampled_text(data),
    }
    device = device_reference(provider, config.user_id, device_id)
    if device:
        waveform["device"] = device

    report = header("DiagnosticReport", key)
    report["status"] = status
    report["category"] = [ECG_SECTION.concept()]
    report["code"] = TYPE_CODES[HealthDataType.ECG].code.concept()
    report["subject"] = patient_reference(config)
    report["effectivePeriod"] = period
    report["result"] = [
        reference("Observation", f"{key}|waveform"),
        *linked(config.user_id, ts_us, end_us),
    ]
    return [waveform, report]


def ecg_reports(
    records: pd.DataFrame,
    configs: Mapping[str, HealthSyncConfig],
    linked: LinkedSeries,
    statuses: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    frame = records[records["data_type"] == HealthDataType.ECG.value]
    frame = frame.assign(ts_us=epoch_us(frame["ts"]))
    for row in row_dicts(frame):
        config = configs.get(row["user_id"]) or HealthSyncConfig(
            user_id=row["user_id"], provider=row["provider"]
        )
        yield from ecg_resources(row, config, linked, (statuses or {}).get(row["user_id"], "final"))


def read_waveform(observation: dict[str, Any]) -> tuple[int, float, np.ndarray]:
    """(start epoch us, sampling rate Hz, samples in uV) of a waveform Observation."""
    sampled = observation["valueSampledData"]
    data = np.array(sampled["data"].split(), dtype="float64")
    samples = sampled["origin"]["value"] + data * sampled.get("factor", 1)
    rate = 1000.0 / sampled["interval"]
    return parse_us(observation["effectivePeriod"]["start"]), rate, samples
