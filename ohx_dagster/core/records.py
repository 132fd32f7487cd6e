"""Record batches: many HealthDataRecords as one pandas DataFrame, validated vectorized.

Providers yield tens of thousands of samples per user and day; building one Python object per
sample is the slow path the seed took. A batch holds the same fields as `HealthDataRecord`, one
column each, and `make_batch` applies the same rules (aware timestamps, canonical units, finite
values inside the hard limits) to whole arrays at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ohx_dagster.core.datatypes import DATA_TYPES, Shape
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HARD_LIMITS, DateRange, HealthDataRecord, HealthDataType
from ohx_dagster.core.sessions import check_parts, check_session
from ohx_dagster.core.units import to_canonical

if TYPE_CHECKING:
    from pandas._typing import AstypeArg, SequenceNotStr

    # Timestamps as make_batch takes them: anything pandas makes a DatetimeIndex of.
    Timestamps: TypeAlias = SequenceNotStr[datetime] | pd.Series | pd.Index | np.ndarray

IDENTITY: Final[list[str]] = ["provider", "user_id", "data_type", "ts", "device_id"]
COLUMNS: Final[list[str]] = [
    *IDENTITY,
    "utc_offset_min",
    "value",
    "diastolic",
    "unit",
    "samples",
    "sampling_rate_hz",
    "duration_s",
    "method",
    "context",
]
# How a value was obtained: measured by the device, typed in by a person, or measured by a device
# that cannot tell who stood on it (a shared scale's unassigned weigh-in).
METHODS: Final = ("device", "manual", "ambiguous")
# What the person was doing, as the provider names it (a workout's activity): the store's column.
CONTEXT_CHARS: Final = 32
_DTYPES: Final[dict[str, AstypeArg]] = {
    "provider": "object",
    "user_id": "object",
    "data_type": "object",
    "ts": "datetime64[us, UTC]",
    "device_id": "object",
    "utc_offset_min": "Int32",
    "value": "float64",
    "diastolic": "float64",
    "unit": "object",
    "samples": "object",
    "sampling_rate_hz": "float64",
    "duration_s": "float64",
    "method": "object",
    "context": "object",
}


_EMPTY: Final = pd.DataFrame({name: pd.Series(dtype=_DTYPES[name]) for name in COLUMNS})


def empty_batch() -> pd.DataFrame:
    # A copy of one template: building a typed empty frame costs milliseconds, and sources
    # return empty batches for most (user, type, hour) combinations.
    return _EMPTY.copy()


def _check_range(kind: HealthDataType, field: str, values: np.ndarray, where: str) -> None:
    low, high = HARD_LIMITS[kind]
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValidationError(
            field,
            float(values[index]),
            f"a finite number in {low:g}..{high:g} {kind.canonical_unit} for {kind.value}",
            where=f"{where}, row {index}",
        )


def own_column(values: object, n: int, dtype: str | type) -> np.ndarray:
    """`n` values as a writable array of their own: one value repeated, or a copy of the
    caller's sequence (never a view of it)."""
    return np.array(np.broadcast_to(np.asarray(values, dtype=dtype), n))


def to_utc_index(timestamps: Timestamps) -> pd.DatetimeIndex:
    """Timestamps as a UTC DatetimeIndex; naive input is rejected, not assumed to be UTC."""
    index = pd.DatetimeIndex(timestamps)
    if index.tz is None:
        sample = index[0].isoformat() if len(index) else ""
        raise ValidationError("timestamp", sample, "timezone-aware timestamps (naive given)")
    return index.tz_convert("UTC").as_unit("us")


def make_batch(
    *,
    provider: str,
    user_id: str | Sequence[str],
    data_type: HealthDataType | str,
    timestamps: Timestamps,
    values: ArrayLike | None,
    unit: str,
    device_id: ArrayLike = "",
    utc_offset_min: ArrayLike | None = None,
    diastolic: ArrayLike | None = None,
    duration_s: ArrayLike | None = None,
    samples: Sequence[ArrayLike | None] | None = None,
    sampling_rate_hz: ArrayLike | None = None,
    method: ArrayLike = "device",
    context: ArrayLike = "",
) -> pd.DataFrame:
    """A validated batch of one provider's records of one type, converted to canonical units.

    `method`: one of METHODS per record; `context`: what the person was doing when a reading was
    taken as the provider names it (Oura heart rate: awake, rest, sleep, workout, ...), or ""."""
    kind = HealthDataType(data_type)
    where = f"{provider} {kind.value}"
    ts = to_utc_index(timestamps)
    n = len(ts)
    # Every column first, then the frame once (a column set at a time was most of the cost).
    columns: dict[str, Any] = {
        "provider": provider,
        "user_id": user_id if isinstance(user_id, str) else np.array(user_id, dtype=object),
        "data_type": kind.value,
        "ts": ts,
        "device_id": device_id,
    }
    value: np.ndarray
    low: np.ndarray | float
    waveforms: pd.Series | None
    rate: np.ndarray | float
    if utc_offset_min is None:
        # Keep the device's local offset when the timestamps carry one, as HealthDataRecord does.
        local = pd.DatetimeIndex(timestamps)
        utc_offset_min = (local.tz_localize(None) - ts.tz_localize(None)) // pd.Timedelta("1min")
    columns["utc_offset_min"] = pd.array(
        np.broadcast_to(np.asarray(utc_offset_min), n), dtype="Int32"
    )
    if kind is HealthDataType.ECG:
        if samples is None or sampling_rate_hz is None:
            raise ValidationError("samples", None, "samples and sampling_rate_hz for ecg")
        waves = [s for s in samples if s is not None]
        if len(waves) != len(samples):
            raise ValidationError("samples", None, "a waveform for every ecg", where=where)
        converted = [to_canonical(kind, s, unit) for s in waves]
        for array in converted:
            if array.size == 0:
                raise ValidationError("samples", [], "a non-empty waveform", where=where)
            _check_range(kind, "samples", array, where)
        value = np.full(n, np.nan)
        waveforms = pd.Series([a.tolist() for a in converted], dtype="object")
        rate = np.broadcast_to(np.asarray(sampling_rate_hz, dtype="float64"), n)
        if ((rate < 50) | (rate > 10_000) | ~np.isfinite(rate)).any():
            raise ValidationError("sampling_rate_hz", rate.tolist()[:3], "50..10000 Hz for ecg")
    else:
        if values is None:
            raise ValidationError("value", None, f"values for {kind.value}", where=where)
        value = to_canonical(kind, values, unit)
        if value.shape != (n,):
            raise ValidationError("value", value.shape, f"{n} values, one per timestamp")
        _check_range(kind, "value", value, where)
        waveforms, rate = None, np.nan
        if DATA_TYPES[kind].shape is Shape.SESSION:
            waveforms = _sessions(kind, value, duration_s, samples, n, where)
    if kind is HealthDataType.BLOOD_PRESSURE:
        if diastolic is None:
            raise ValidationError("diastolic", None, "values for blood_pressure", where=where)
        low = to_canonical(kind, diastolic, unit)
        _check_range(kind, "diastolic", low, where)
        if (low >= value).any():
            index = int(np.flatnonzero(low >= value)[0])
            raise ValidationError(
                "diastolic", float(low[index]), "< systolic", where=f"{where}, row {index}"
            )
    else:
        low = np.nan
    methods = own_column(method, n, object)
    # One method for the batch (the usual case) is checked once, not hashed per row.
    given = {method} if isinstance(method, str) else set(pd.unique(methods))
    unknown = given - set(METHODS) if n else set()
    if unknown:
        raise ValidationError("method", sorted(unknown)[0], f"one of {list(METHODS)}", where=where)
    contexts = (
        {context} if isinstance(context, str) else set(pd.unique(own_column(context, n, object)))
    )
    long = [c for c in contexts if len(str(c)) > CONTEXT_CHARS] if n else []
    if long:
        raise ValidationError(
            "context", long[0], f"at most {CONTEXT_CHARS} characters", where=where
        )
    # Every column is a scalar or an array of this batch's own (the caller's arrays are copied):
    # the frame then takes them as they are (copy=False), and each text column is built once.
    columns |= {
        "value": own_column(value, n, "float64"),
        "diastolic": own_column(low, n, "float64"),
        "unit": kind.canonical_unit,
        "samples": waveforms,
        "sampling_rate_hz": own_column(rate, n, "float64"),
        "duration_s": own_column(np.nan if duration_s is None else duration_s, n, "float64"),
        "method": pd.Series(methods, dtype="object", copy=False),
        "context": pd.Series(own_column(context, n, object), dtype="object", copy=False),
    }
    return pd.DataFrame(columns, index=pd.RangeIndex(n), copy=False)


def _sessions(
    kind: HealthDataType,
    value: np.ndarray,
    duration_s: ArrayLike | None,
    samples: Sequence[ArrayLike | None] | None,
    n: int,
    where: str,
) -> pd.Series:
    """Sessions' parts (ohx_dagster/core/sessions.py) as the samples column, each checked
    against its session: a duration of at most a day, no more asleep or exercising than that, a
    night's stages in order inside it, a workout's measures in bounds."""
    if duration_s is None:
        raise ValidationError("duration_s", None, "each session's length in seconds", where=where)
    durations = np.broadcast_to(np.asarray(duration_s, dtype="float64"), n)
    if samples is not None and len(samples) != n:
        raise ValidationError("samples", len(samples), f"{n} lists of parts, one per session")
    parts: list[list[float] | None] = []
    for row in range(n):
        at = f"{where}, row {row}"
        check_session(float(durations[row]), float(value[row]), at)
        given = None if samples is None else samples[row]
        if given is None or np.asarray(given).size == 0:
            parts.append(None)
        else:
            parts.append(check_parts(kind.value, given, float(durations[row]), at))
    return pd.Series(parts, dtype="object")


def batch_from_records(records: Iterable[HealthDataRecord]) -> pd.DataFrame:
    rows = [
        {
            "provider": r.provider,
            "user_id": r.user_id,
            "data_type": r.data_type.value,
            "ts": r.timestamp,
            "device_id": r.device_id,
            "utc_offset_min": r.utc_offset_min,
            "value": np.nan if r.value is None else r.value,
            "diastolic": np.nan if r.diastolic is None else r.diastolic,
            "unit": r.unit,
            "samples": None if r.samples is None else list(r.samples),
            "sampling_rate_hz": np.nan if r.sampling_rate_hz is None else r.sampling_rate_hz,
            "duration_s": np.nan if r.duration_s is None else r.duration_s,
            "method": "device",
            "context": "",
        }
        for r in records
    ]
    if not rows:
        return empty_batch()
    return normalize(pd.DataFrame(rows))


def records_from_batch(batch: pd.DataFrame) -> Iterator[HealthDataRecord]:
    """The batch as validated records (re-checks every rule; for tests and small batches)."""
    # A row's fields are whatever its columns hold: not something the type checker can know.
    rows: Iterable[Any] = batch.itertuples(index=False)
    for row in rows:

        def opt(value: float) -> float | None:
            return None if pd.isna(value) else float(value)

        yield HealthDataRecord(
            provider=row.provider,
            user_id=row.user_id,
            data_type=HealthDataType(row.data_type),
            timestamp=row.ts.to_pydatetime(),
            value=opt(row.value),
            unit=row.unit,
            device_id=row.device_id,
            diastolic=opt(row.diastolic),
            samples=None if row.samples is None else tuple(row.samples),
            sampling_rate_hz=opt(row.sampling_rate_hz),
            duration_s=opt(row.duration_s),
            utc_offset_min=None if pd.isna(row.utc_offset_min) else int(row.utc_offset_min),
        )


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in canonical order and dtype (for frames read from storage or built from rows)."""
    if frame.empty:
        return empty_batch()
    out = frame.reindex(columns=COLUMNS)
    out["ts"] = pd.to_datetime(out["ts"], utc=True).dt.as_unit("us")
    for name, dtype in _DTYPES.items():
        if name != "ts" and dtype != "object":
            out[name] = out[name].astype(dtype)
    out["samples"] = out["samples"].astype("object").where(out["samples"].notna(), None)
    out["method"] = out["method"].astype("object").where(out["method"].notna(), "device")
    out["context"] = out["context"].astype("object").where(out["context"].notna(), "")
    return out.reset_index(drop=True)


def concat(batches: Iterable[pd.DataFrame]) -> pd.DataFrame:
    parts = [b for b in batches if not b.empty]
    if not parts:
        return empty_batch()
    return pd.concat(parts, ignore_index=True)


def dedupe(batch: pd.DataFrame) -> pd.DataFrame:
    """One row per record identity; the last occurrence wins, as an upsert would.

    Only rows that share a timestamp can share an identity: those few are compared on every
    identity column (a day of 1 Hz heart rate has none but the minute marks its steps share),
    which costs a sort of the timestamps instead of hashing every text column of every row."""
    if len(batch) < 2:
        return batch.reset_index(drop=True)
    stamps = batch["ts"].array.asi8
    order = np.argsort(stamps, kind="stable")
    shared = stamps[order[1:]] == stamps[order[:-1]]
    if not shared.any():
        return batch.reset_index(drop=True)
    candidates = np.union1d(order[1:][shared], order[:-1][shared])
    repeated = batch.iloc[candidates].duplicated(subset=IDENTITY, keep="last").to_numpy()
    if not repeated.any():
        return batch.reset_index(drop=True)
    keep = np.ones(len(batch), dtype=bool)
    keep[candidates[repeated]] = False
    return batch[keep].reset_index(drop=True)


def row_dicts(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """`frame.to_dict("records")`, read column by column (pandas boxes every value on its own,
    which was most of the cost of rendering a bucket's few hundred rows)."""
    columns = [str(c) for c in frame.columns]
    return [
        dict(zip(columns, values, strict=True))
        for values in zip(*(frame[c].tolist() for c in frame.columns), strict=True)
    ]


def label_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a text column and its distinct labels (`labels[codes]` is the column).

    A batch is built type by type and person by person, so its text columns come in long runs:
    the runs are found with one comparison of neighbours and only their labels are hashed."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.asarray(values[:0], dtype=object)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    if starts.size > values.size // 16:  # no long runs: hash every row
        codes, labels = pd.factorize(values)
        return codes.astype(np.int64), np.asarray(labels, dtype=object)
    run_codes, labels = pd.factorize(values[starts])
    lengths = np.diff(np.r_[starts, values.size])
    return np.repeat(run_codes.astype(np.int64), lengths), np.asarray(labels, dtype=object)


def rows_by(values: np.ndarray) -> dict[Any, np.ndarray]:
    """The row numbers of each distinct label of a text column, in row order."""
    codes, labels = label_codes(values)
    return {label: np.flatnonzero(codes == code) for code, label in enumerate(labels)}


def select(
    batch: pd.DataFrame, user_id: str, data_types: Iterable[HealthDataType | str], window: DateRange
) -> pd.DataFrame:
    """One user's records of these types with timestamps in the window (file sources read an
    export once and serve every fetch from it)."""
    wanted = [HealthDataType(t).value for t in data_types]
    selected = (
        (batch["user_id"] == user_id)
        & batch["data_type"].isin(wanted)
        & (batch["ts"] >= window.start)
        & (batch["ts"] < window.end)
    )
    return batch[selected].reset_index(drop=True)
