"""HealthKit's sleep analysis as nights: its records of one device grouped into sessions.

HealthKit writes a night as many HKCategoryTypeIdentifierSleepAnalysis records of one source,
one per stage interval (a watch since iOS 16: core, deep, REM, awake; earlier, and most apps,
"asleep" or "in bed" alone, often one record a night). The parse (export.py) keeps each record
as an interval stamped at its end, as sessions are (ohx_dagster/core/sessions.py), with its
stage; this module makes sessions of them, per device:

- a device's intervals in order of start are one session while each begins within GAP of the
  latest end so far (a person awake for more than an hour between two sleeps slept twice), and
  while the session stays within a day (MAX_SESSION_S);
- the session lasts from its first start to its last end, in bed included; it is stamped at that
  end with that record's offset;
- its stages are its records but "in bed", overlapping records of one device counted once
  (merge_intervals); its time asleep is the stages asleep;
- a session of "in bed" records alone says nothing of sleep and is left out.

Grouping reads every interval of the export (a watch writes about 30 a night: 11,000 a year), so a
window's sessions are the same whichever window of a sync asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from ohx_dagster.core.models import HealthDataType
from ohx_dagster.core.records import empty_batch, make_batch
from ohx_dagster.core.sessions import ASLEEP_STAGES, MAX_SESSION_S, Stage, merge_intervals

SLEEP_ANALYSIS: Final = "HKCategoryTypeIdentifierSleepAnalysis"
# How the summary counts the records of no length (the Health app saves such an entry when its
# end was not moved): skipped, with this name.
NO_LENGTH: Final = f"{SLEEP_ANALYSIS} (ends as it starts)"
STAGE_UNIT: Final = "stage"  # the spill's "unit" of sleep intervals: the value is a stage
IN_BED: Final = 0  # an interval of the session that is no stage
# HealthKit's HKCategoryValueSleepAnalysis names as the export writes them.
STAGES: Final[dict[str, int]] = {
    "HKCategoryValueSleepAnalysisInBed": IN_BED,
    "HKCategoryValueSleepAnalysisAsleep": Stage.ASLEEP,  # before iOS 16
    "HKCategoryValueSleepAnalysisAsleepUnspecified": Stage.ASLEEP,
    "HKCategoryValueSleepAnalysisAwake": Stage.AWAKE,
    "HKCategoryValueSleepAnalysisAsleepCore": Stage.LIGHT,
    "HKCategoryValueSleepAnalysisAsleepDeep": Stage.DEEP,
    "HKCategoryValueSleepAnalysisAsleepREM": Stage.REM,
}
GAP_S: Final = 3_600.0
_US: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class _Night:
    end_us: int
    offset_min: int
    duration_s: float
    asleep_s: float
    stages: list[float]
    device: str
    manual: bool


def session_bounds(starts_us: np.ndarray, ends_us: np.ndarray) -> np.ndarray:
    """The session number of each interval (sorted by start): a new session where an interval
    begins more than GAP after the latest end so far, or would make the session last more than
    a day."""
    numbers = np.zeros(starts_us.size, dtype="int64")
    first = reach = 0
    number = -1
    for i, (start, end) in enumerate(zip(starts_us.tolist(), ends_us.tolist(), strict=True)):
        if (
            number < 0
            or start > reach + GAP_S * _US
            or max(reach, end) - first > MAX_SESSION_S * _US
        ):
            number += 1
            first, reach = start, end
        else:
            reach = max(reach, end)
        numbers[i] = number
    return numbers


def sessions(
    rows: dict[str, np.ndarray], device_names: np.ndarray, user_id: str, provider: str
) -> pd.DataFrame:
    """The nights of the export's sleep intervals (the spill's rows: `utc_us` the end,
    `duration_s`, `value` the stage), as a sleep batch."""
    ends = rows["utc_us"].astype("int64")
    starts = ends - np.round(rows["duration_s"] * _US).astype("int64")
    stages = rows["value"].astype("int64")
    found: list[_Night] = []
    for device in np.unique(rows["device"]).tolist():
        mine = np.flatnonzero(rows["device"] == device)
        mine = mine[np.lexsort((ends[mine], starts[mine]))]
        numbers = session_bounds(starts[mine], ends[mine])
        for number in range(int(numbers[-1]) + 1 if mine.size else 0):
            at = mine[numbers == number]
            staged = at[stages[at] != IN_BED]
            if not staged.size:
                continue
            begin, last = int(starts[at].min()), int(ends[at].max())
            flat = merge_intervals(
                (starts[staged] - begin) / _US, (ends[staged] - begin) / _US, stages[staged]
            )
            triples = flat.reshape(-1, 3)
            asleep = np.isin(triples[:, 2], [int(s) for s in ASLEEP_STAGES])
            woke = at[np.argmax(ends[at])]
            found.append(
                _Night(
                    end_us=last,
                    offset_min=int(rows["offset_min"][woke]),
                    duration_s=(last - begin) / _US,
                    asleep_s=float((triples[asleep, 1] - triples[asleep, 0]).sum()),
                    stages=flat.tolist(),
                    device=str(device_names[device]),
                    manual=bool(rows["manual"][at].any()),
                )
            )
    if not found:
        return empty_batch()
    return make_batch(
        provider=provider,
        user_id=user_id,
        data_type=HealthDataType.SLEEP,
        timestamps=pd.DatetimeIndex(
            np.array([f.end_us for f in found], dtype="datetime64[us]")
        ).tz_localize("UTC"),
        values=[f.asleep_s for f in found],
        unit="s",
        device_id=np.array([f.device for f in found], dtype=object),
        utc_offset_min=np.array([f.offset_min for f in found], dtype="int64"),
        duration_s=[f.duration_s for f in found],
        samples=[f.stages for f in found],
        method=np.array(["manual" if f.manual else "device" for f in found], dtype=object),
    )
