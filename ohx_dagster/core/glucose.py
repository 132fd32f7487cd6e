"""A CGM summary over a reporting period, from the sensor's readings: what the CGM IG
(hl7.fhir.uv.cgm 1.0.0) reports and how the international consensus on CGM metrics defines it.

- Ranges, mg/dL: very low < 54, low 54 to < 70, target 70 to 180, high > 180 to 250, very high
  > 250. Times in ranges are the shares of the readings in each (a reading stands for its 5
  minutes), in percent with two decimals, as the IG asks.
- Mean glucose (mg/dL); the coefficient of variation, 100 x the standard deviation (of the
  readings, n - 1) / the mean; the glucose management indicator, GMI (%) = 3.31 + 0.02392 x the
  mean in mg/dL (Bergenstal et al., Diabetes Care 2018).
- Sensor active percentage: readings / the readings a sensor gives in the period (one per 5
  minutes), at most 100; days of wear: the local days of the period with a reading.
- A summary describes glucose only when the sensor was active at least 70% of the period (the
  consensus' minimum for 14 days); below that the metrics are not computed and the summary says
  why (`sufficient` false), the wear figures are still given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

import numpy as np

READING_INTERVAL_US: Final = 300_000_000  # a CGM reading every 5 minutes
PERIOD_DAYS: Final = (1, 14)  # the local day, and the 14 days the consensus reports on
MIN_ACTIVE: Final = 70.0  # percent of the period
# (name, lowest, highest) in mg/dL, inclusive; the boundaries of the consensus' ranges.
RANGES: Final = (
    ("very-low", -np.inf, np.nextafter(54.0, -np.inf)),
    ("low", 54.0, np.nextafter(70.0, -np.inf)),
    ("target", 70.0, 180.0),
    ("high", np.nextafter(180.0, np.inf), 250.0),
    ("very-high", np.nextafter(250.0, np.inf), np.inf),
)
PERCENT_DECIMALS: Final = 2


def days_summarizing(day: date) -> list[date]:
    """The later local days whose summaries count this day's readings (it is among the
    last max(PERIOD_DAYS) days of each)."""
    return [day + timedelta(days=n) for n in range(1, max(PERIOD_DAYS))]


@dataclass(frozen=True, slots=True)
class GlucoseSummary:
    readings: int
    active_percent: float
    days_of_wear: int
    sufficient: bool
    mean: float | None = None  # mg/dL
    cv_percent: float | None = None
    gmi_percent: float | None = None
    # range name -> percent of the readings, in RANGES' order
    times_in_ranges: dict[str, float] | None = None


def in_ranges(values: np.ndarray) -> dict[str, float]:
    """Percent of the readings in each range, two decimals."""
    total = len(values)
    return {
        name: round(100.0 * int(((values >= low) & (values <= high)).sum()) / total, 2)
        for name, low, high in RANGES
    }


def summarize(
    values: np.ndarray, *, period_us: int, local_days: np.ndarray | None = None
) -> GlucoseSummary:
    """The summary of the readings `values` (mg/dL) of a period `period_us` long; `local_days`:
    each reading's local day (any label), for the days of wear (None: counted as one)."""
    values = np.asarray(values, dtype=np.float64)
    readings = int(values.size)
    expected = period_us // READING_INTERVAL_US
    active = min(100.0, 100.0 * readings / expected) if expected else 0.0
    active = round(active, PERCENT_DECIMALS)
    days = int(np.unique(local_days).size) if local_days is not None else int(readings > 0)
    if readings < 2 or active < MIN_ACTIVE:
        return GlucoseSummary(readings, active, days, sufficient=False)
    mean = float(values.mean())
    return GlucoseSummary(
        readings,
        active,
        days,
        sufficient=True,
        mean=mean,
        cv_percent=round(100.0 * float(values.std(ddof=1)) / mean, PERCENT_DECIMALS),
        gmi_percent=round(3.31 + 0.02392 * mean, PERCENT_DECIMALS),
        times_in_ranges=in_ranges(values),
    )
