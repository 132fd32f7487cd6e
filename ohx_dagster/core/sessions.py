"""Sessions: a period and its parts (a night's sleep and its stages, a workout and its measures).

A session is one record (ohx_dagster/core/datatypes.py, shape "session") stamped at its END, the
moment it is known whole: `ts` is when the person woke or stopped, `duration_s` how long the
session lasted, so it began at ts - duration_s. Being stamped at its end, a session belongs to
exactly one local day, the one it ends on (the night is the date the person woke up), whichever
midnight or daylight-saving change it crossed, and a provider's fetch window that holds its end
returns it once it is over. Its parts are the record's `samples` (`check_parts`):

- sleep: `value` the time asleep in minutes as the provider reports it; its stages, when the
  provider gives them, flattened as (start, end, stage) triples: seconds after the session's
  start, end > start, in order, never overlapping, inside the session. The stages, numbered as
  Oura's hypnograms number them (1 deep, 2 light, 3 REM, 4 awake) plus 5 for sleep whose stage
  the device does not tell (HealthKit's "asleep"). A provider that tells how long each stage
  lasted but not when (Withings' sleep summaries) gives a summary instead (`stage_summary`): a
  NaN first, which no interval starts with, then the totals;
- workout: `value` the time exercising in minutes, the activity in `context`; its measures
  (WORKOUT_MEASURES: energy, distance, mean and highest heart rate), NaN where not reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from ohx_dagster.core.errors import ValidationError

# A night of sleep and a nap are hours; a session longer than a day is not one.
MAX_SESSION_S: Final = 86_400.0
# Providers write a session's dates in whole seconds and its time asleep or exercising finer
# (HealthKit: a walk of 5.7229 minutes between dates 343 s apart): that much longer is the same.
DATES_SLACK_S: Final = 1.0


class Stage(IntEnum):
    DEEP = 1
    LIGHT = 2  # HealthKit's "core", N1 and N2
    REM = 3
    AWAKE = 4
    ASLEEP = 5  # asleep, stage not told


ASLEEP_STAGES: Final = (Stage.DEEP, Stage.LIGHT, Stage.REM, Stage.ASLEEP)


def stage_intervals(samples: ArrayLike, duration_s: float, where: str = "") -> np.ndarray:
    """The (start, end, stage) rows of a session's flattened stages, checked: an error names the
    first interval that is not inside the session, not in order or of no known stage."""
    flat = np.asarray(samples, dtype="float64")
    if flat.ndim != 1 or flat.size % 3:
        raise ValidationError(
            "stages", flat.size, "(start, end, stage) triples, flattened", where=where
        )
    rows = flat.reshape(-1, 3)
    known = np.isin(rows[:, 2], [int(s) for s in Stage])
    bad = (
        ~np.isfinite(rows).all(axis=1)
        | (rows[:, 0] < 0)
        | (rows[:, 1] <= rows[:, 0])
        | (rows[:, 1] > duration_s)
        | ~known
    )
    bad[1:] |= rows[1:, 0] < rows[:-1, 1]
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValidationError(
            "stages",
            rows[index].tolist(),
            f"intervals in order inside the session's {duration_s:g} s, each (start s, end s, "
            f"stage {[int(s) for s in Stage]}) with end > start",
            where=f"{where}, interval {index}" if where else f"interval {index}",
        )
    return rows


def check_session(duration_s: float, value_min: float, where: str = "") -> None:
    """A session lasts at most a day (nothing, for a workout typed in without its times), and
    no one sleeps or exercises longer than it."""
    if not np.isfinite(duration_s) or not 0 <= duration_s <= MAX_SESSION_S:
        raise ValidationError(
            "duration_s", duration_s, f"0..{MAX_SESSION_S:g} seconds", where=where
        )
    if value_min * 60.0 > duration_s + DATES_SLACK_S:
        raise ValidationError(
            "value",
            value_min,
            f"at most the session's {duration_s / 60.0:g} minutes",
            where=where,
        )


# A workout's measures, in this order, each with its UCUM unit and the values a device can give.
WORKOUT_MEASURES: Final[dict[str, tuple[str, tuple[float, float]]]] = {
    "energy": ("kcal", (0.0, 20_000.0)),
    "distance": ("m", (0.0, 1_000_000.0)),
    "mean_heart_rate": ("/min", (20.0, 300.0)),
    "max_heart_rate": ("/min", (20.0, 300.0)),
}


def workout_parts(
    *,
    energy: float = np.nan,
    distance: float = np.nan,
    mean_heart_rate: float = np.nan,
    max_heart_rate: float = np.nan,
) -> list[float]:
    """A workout's parts, its measures by name in WORKOUT_MEASURES' order (NaN: not reported)."""
    return [energy, distance, mean_heart_rate, max_heart_rate]


def workout_measures(samples: ArrayLike, where: str = "") -> np.ndarray:
    """A workout's measures, checked: one per WORKOUT_MEASURES (NaN where not reported), each
    inside its bounds, the mean heart rate no higher than the highest."""
    values = np.asarray(samples, dtype="float64")
    names = list(WORKOUT_MEASURES)
    if values.shape != (len(names),):
        raise ValidationError("measures", values.size, f"{len(names)} values: {names}", where=where)
    for (name, (unit, (low, high))), value in zip(WORKOUT_MEASURES.items(), values, strict=True):
        if not np.isnan(value) and not low <= value <= high:
            raise ValidationError(name, float(value), f"{low:g}..{high:g} {unit}", where=where)
    mean, top = values[2], values[3]
    if mean > top:  # False when either is NaN
        raise ValidationError(
            "mean_heart_rate", float(mean), f"<= the highest, {top:g}", where=where
        )
    return values


def check_parts(data_type: str, samples: ArrayLike, duration_s: float, where: str = "") -> list:
    """A session's parts, checked for its type, as a flat list."""
    if data_type == "workout":
        return workout_measures(samples, where).tolist()
    flat = np.asarray(samples, dtype="float64")
    if _is_summary(flat):
        summary_totals(flat, duration_s, where)
        return flat.tolist()
    return stage_intervals(flat, duration_s, where).ravel().tolist()


@dataclass(frozen=True, slots=True)
class StageTotals:
    """What a night's stages add up to, in seconds; NaN where the device does not tell."""

    deep: float
    light: float
    rem: float
    asleep_unstaged: float
    awake_after_onset: float  # awake between falling asleep and the last waking
    awakenings: float  # times woken between falling asleep and the last waking

    @property
    def asleep(self) -> float:
        return float(np.nansum([self.deep, self.light, self.rem, self.asleep_unstaged]))

    @property
    def staged(self) -> bool:
        """Whether the device told deep, light and REM sleep apart."""
        stages = np.array([self.deep, self.light, self.rem])
        return bool(np.isfinite(stages).all() and stages.sum() > 0)


SUMMARY_FIELDS: Final = (
    "deep",
    "light",
    "rem",
    "asleep_unstaged",
    "awake_after_onset",
    "awakenings",
)


def stage_summary(
    *,
    deep: float = np.nan,
    light: float = np.nan,
    rem: float = np.nan,
    asleep_unstaged: float = np.nan,
    awake_after_onset: float = np.nan,
    awakenings: float = np.nan,
) -> list[float]:
    """A night's parts when its device tells each stage's seconds but not when (NaN: not told).
    The leading NaN marks a summary: an interval never starts at NaN."""
    return [np.nan, deep, light, rem, asleep_unstaged, awake_after_onset, awakenings]


def _is_summary(flat: np.ndarray) -> bool:
    return flat.ndim == 1 and flat.size > 0 and bool(np.isnan(flat[0]))


def summary_totals(flat: np.ndarray, duration_s: float, where: str = "") -> StageTotals:
    """The totals of a stage summary, checked: each told total is at least 0, the seconds asleep
    and awake after falling asleep fit in the session, awakenings are a whole number."""
    if flat.shape != (1 + len(SUMMARY_FIELDS),):
        raise ValidationError(
            "stages", flat.size, f"a summary of NaN then {list(SUMMARY_FIELDS)}", where=where
        )
    totals = StageTotals(*(float(v) for v in flat[1:]))
    for name in SUMMARY_FIELDS:
        value = getattr(totals, name)
        if np.isinf(value) or value < 0:
            raise ValidationError(name, value, "at least 0, or NaN when not told", where=where)
    awakenings = totals.awakenings
    if not np.isnan(awakenings) and not awakenings.is_integer():
        raise ValidationError("awakenings", awakenings, "a whole number", where=where)
    spent = totals.asleep + float(np.nan_to_num(totals.awake_after_onset))
    if spent > duration_s + DATES_SLACK_S:
        raise ValidationError(
            "stages",
            spent,
            f"seconds asleep and awake after falling asleep within the session's {duration_s:g} s",
            where=where,
        )
    return totals


def night_totals(samples: ArrayLike, duration_s: float, where: str = "") -> StageTotals:
    """What a night's parts say, checked, whichever way its provider told them. From intervals,
    time awake is known only where the device records waking: an app that writes "asleep"
    alone leaves gaps that say nothing, so its waking is NaN."""
    flat = np.asarray(samples, dtype="float64")
    if _is_summary(flat):
        return summary_totals(flat, duration_s, where)
    rows = stage_intervals(flat, duration_s, where)
    totals = stage_totals(rows)
    if totals.staged or (rows[:, 2] == Stage.AWAKE).any():
        return totals
    return replace(totals, awake_after_onset=np.nan, awakenings=np.nan)


def stage_totals(rows: np.ndarray) -> StageTotals:
    """Seconds in each stage; wake after sleep onset and awakenings count only awake intervals
    between the first and the last asleep interval (lying awake before sleeping or after the
    final waking is neither)."""
    length = rows[:, 1] - rows[:, 0]
    stage = rows[:, 2].astype("int64")

    def total(kind: Stage) -> float:
        return float(length[stage == kind].sum())

    asleep = np.flatnonzero(np.isin(stage, [int(s) for s in ASLEEP_STAGES]))
    between = np.zeros(len(rows), dtype=bool)
    if asleep.size:
        between[asleep[0] : asleep[-1] + 1] = True
    awake = between & (stage == Stage.AWAKE)
    return StageTotals(
        deep=total(Stage.DEEP),
        light=total(Stage.LIGHT),
        rem=total(Stage.REM),
        asleep_unstaged=total(Stage.ASLEEP),
        awake_after_onset=float(length[awake].sum()),
        awakenings=float(awake.sum()),
    )


def from_hypnogram(text: str, step_s: float, where: str = "") -> np.ndarray:
    """Flattened stage triples of a hypnogram string, one digit a step (Oura's
    `sleep_phase_5_min` and `sleep_phase_30_sec`: 1 deep, 2 light, 3 REM, 4 awake), runs of one
    stage as one interval."""
    if not text or any(c not in "1234" for c in text):
        raise ValidationError("hypnogram", text[:40], "digits 1 to 4, one a step", where=where)
    codes = np.frombuffer(text.encode("ascii"), dtype="uint8") - ord("0")
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], codes.size]
    return (
        np.column_stack([starts * step_s, ends * step_s, codes[starts]]).astype("float64").ravel()
    )


def merge_intervals(starts: np.ndarray, ends: np.ndarray, stages: np.ndarray) -> np.ndarray:
    """Flattened triples of intervals given as columns (seconds after the session's start): in
    order, a later interval cut where an earlier one still runs (two apps' overlapping records of
    one night count each second once), empty ones left out."""
    order = np.lexsort((ends, starts))
    starts, ends, stages = starts[order], ends[order], stages[order]
    reach = np.maximum.accumulate(ends)
    begun = np.r_[starts[:1], np.maximum(starts[1:], reach[:-1])]
    keep = ends > begun
    return np.column_stack([begun[keep], ends[keep], stages[keep]]).astype("float64").ravel()
