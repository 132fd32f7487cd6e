"""CGM summaries of a person's local day and of the 14 local days ending with it, as the CGM IG
(hl7.fhir.uv.cgm 1.0.0, its profiles' codes) has them: a summary panel (LOINC 107931-8) whose
members are the mean glucose (97507-8), the times in ranges (106793-3, a component per range:
104642-4 very low, 104641-6 low, 97510-2 target, 104640-8 high, 104639-0 very high), the GMI
(97506-0), the coefficient of variation (104638-2), the days of wear (104636-6) and the sensor
active percentage (104637-4). The metrics: ohx_dagster/core/glucose.py.

The IG is an R4 guide; these are its R5 equivalents (the same elements), published without
claiming its profiles. Codings carry no display: LOINC's displays are not restated here, the
concept's `text` says what it is. Below 70% sensor activity the glucose metrics are not computed:
their Observations carry a data-absent reason saying so, and the wear figures stay.

A summary is published in the partition of its last day, beside the day's readings; the 14 days'
readings come from the store (BucketData.history). A commit that changes a day's readings marks
the 13 later days already published as changed too (store.commit), so a reading that reaches the
store late is in every 14-day summary that counts it once the republish sensor has run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ohx_dagster.core.glucose import MIN_ACTIVE, PERIOD_DAYS, GlucoseSummary, summarize
from ohx_dagster.core.ids import content_key
from ohx_dagster.core.localdays import Calendar
from ohx_dagster.core.models import HealthDataType, HealthSyncConfig
from ohx_dagster.fhir.codes import LOINC, category
from ohx_dagster.fhir.common import header, patient_reference, quantity
from ohx_dagster.storage.record_tables import Chunk

if TYPE_CHECKING:
    from ohx_dagster.fhir.partition import BucketData

CGM: Final = HealthDataType.INTERSTITIAL_GLUCOSE.value
DATA_ABSENT: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# metric -> (LOINC code, text)
CODES: Final[dict[str, tuple[str, str]]] = {
    "summary": ("107931-8", "CGM summary"),
    "mean": ("97507-8", "Mean glucose"),
    "ranges": ("106793-3", "CGM times in ranges"),
    "gmi": ("97506-0", "Glucose management indicator (GMI)"),
    "cv": ("104638-2", "Glucose coefficient of variation"),
    "days-of-wear": ("104636-6", "CGM days of wear"),
    "sensor-active": ("104637-4", "CGM sensor active percentage"),
}
RANGE_CODES: Final[dict[str, tuple[str, str]]] = {
    "very-low": ("104642-4", "Time in very low range (< 54 mg/dL)"),
    "low": ("104641-6", "Time in low range (54-69 mg/dL)"),
    "target": ("97510-2", "Time in target range (70-180 mg/dL)"),
    "high": ("104640-8", "Time in high range (181-250 mg/dL)"),
    "very-high": ("104639-0", "Time in very high range (> 250 mg/dL)"),
}


def _concept(code: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}], "text": text}


def readings_in(
    chunks: Sequence[Chunk], user_id: str, start_us: int, end_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """(times in us, values in mg/dL) of the person's CGM readings in [start, end), in order."""
    stamps, values = [], []
    for chunk in chunks:
        if chunk.user_id == user_id and chunk.data_type == CGM:
            inside = (chunk.samples.ts_us >= start_us) & (chunk.samples.ts_us < end_us)
            stamps.append(chunk.samples.ts_us[inside])
            values.append(chunk.samples.value[inside])
    if not stamps:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    times, found = np.concatenate(stamps), np.concatenate(values)
    order = np.argsort(times, kind="stable")
    return times[order], found[order]


def period_summary(
    chunks: Sequence[Chunk], config: HealthSyncConfig, last: date, days: int
) -> GlucoseSummary | None:
    """The summary of the person's `days` local days ending with `last`; None without readings."""
    calendar = Calendar.of(config)
    windows = [calendar.day_window(last - timedelta(days=back)) for back in range(days - 1, -1, -1)]
    start, end = windows[0][0], windows[-1][1]
    stamps, values = readings_in(chunks, config.user_id, start, end)
    if not values.size:
        return None
    labels = np.searchsorted([w[0] for w in windows], stamps, side="right")
    return summarize(values, period_us=end - start, local_days=labels)


def cgm_summaries(
    data: BucketData, statuses: Mapping[str, str], period_statuses: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Per person of the bucket with CGM readings on the partition's day: the day's summary and
    the 14 days' (module docstring), with the day's status and the period's."""
    resources: list[dict[str, Any]] = []
    chunks = [*data.history, *data.chunks]
    for user_id, config in data.configs.items():
        if period_summary(data.chunks, config, data.day, 1) is None:
            continue  # no CGM that day: no summary of it
        for days in PERIOD_DAYS:
            summary = period_summary(chunks, config, data.day, days)
            if summary is not None:
                status = (statuses if days == 1 else period_statuses).get(user_id, "final")
                resources += summary_resources(
                    data.provider, config, data.day, days, summary, status
                )
    return resources


def summary_resources(
    provider: str,
    config: HealthSyncConfig,
    last: date,
    days: int,
    summary: GlucoseSummary,
    status: str,
) -> list[dict[str, Any]]:
    """The panel and its six members for one period."""
    first = last - timedelta(days=days - 1)
    period = {"start": first.isoformat(), "end": last.isoformat()}

    def observation(metric: str) -> dict[str, Any]:
        key = content_key(
            provider, config.user_id, CGM, f"cgm-{metric}", first.isoformat(), days,
            generation=config.link_generation,
        )  # fmt: skip
        resource = header("Observation", key)
        resource["status"] = status
        resource["category"] = [category("laboratory")]
        resource["code"] = _concept(*CODES[metric])
        resource["subject"] = patient_reference(config)
        resource["effectivePeriod"] = dict(period)
        return resource

    members = []
    absent = {
        "coding": [{"system": DATA_ABSENT, "code": "not-performed", "display": "Not Performed"}],
        "text": f"sensor active {summary.active_percent:g}% of the period: a CGM summary needs "
        f"at least {MIN_ACTIVE:g}%",
    }
    for metric in ("mean", "ranges", "gmi", "cv"):
        resource = observation(metric)
        if not summary.sufficient:
            resource["dataAbsentReason"] = absent
        elif metric == "mean":
            assert summary.mean is not None
            resource["valueQuantity"] = quantity(round(summary.mean, 1), "mg/dL")
        elif metric == "gmi":
            assert summary.gmi_percent is not None
            resource["valueQuantity"] = quantity(summary.gmi_percent, "%")
        elif metric == "cv":
            assert summary.cv_percent is not None
            resource["valueQuantity"] = quantity(summary.cv_percent, "%")
        else:
            assert summary.times_in_ranges is not None
            resource["component"] = [
                {"code": _concept(*RANGE_CODES[name]), "valueQuantity": quantity(share, "%")}
                for name, share in summary.times_in_ranges.items()
            ]
        members.append(resource)
    wear = observation("days-of-wear")
    wear["valueQuantity"] = quantity(summary.days_of_wear, "d", "days")
    active = observation("sensor-active")
    active["valueQuantity"] = quantity(summary.active_percent, "%")
    members += [wear, active]
    panel = observation("summary")
    panel["hasMember"] = [{"reference": f"Observation/{m['id']}"} for m in members]
    return [panel, *members]
