"""Writing and reading one person's records: dense series as hourly chunks, the rest one row each.

Both writes run inside the caller's transaction (under the person's lock, see
ohx_dagster.storage.db) and return the instants whose stored data actually changed, so the caller
can tell which day partitions must be published again: re-delivering what is stored changes nothing.

A `replace` window says "the provider has just answered for this whole window": stored records of
that type inside it that the provider did not send again are gone at the provider, and go here too.

The record store's record methods (store_records.py: `RecordStore.commit`, `read_records`, ...)
are built on these; publishing reads chunks and measurements with them directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.models import SERIES_TYPES, HealthDataType
from ohx_dagster.core.records import empty_batch, label_codes, normalize
from ohx_dagster.core.times import now_us
from ohx_dagster.storage import chunks, db
from ohx_dagster.storage.chunks import HOUR_US, Samples
from ohx_dagster.storage.schema import measurements, series_chunks

DENSE: Final = frozenset(t.value for t in SERIES_TYPES)
_EMPTY: Final = Samples.of(np.array([], dtype=np.int64), np.array([], dtype=np.float64))
# Measurement columns compared to decide whether a re-delivered row changes anything.
_COMPARED: Final = (
    "utc_offset_min",
    "value",
    "diastolic",
    "duration_s",
    "method",
    "context",
    "sampling_rate_hz",
    "waveform",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored hour of one person's series from one device."""

    user_id: str
    data_type: str
    device_id: str
    hour_us: int
    samples: Samples


def _ts_us(frame: pd.DataFrame) -> np.ndarray:
    return frame["ts"].dt.as_unit("us").astype("int64").to_numpy()


def _clip(windows: Sequence[Interval], start: int, end: int) -> list[Interval]:
    return [(max(s, start), min(e, end)) for s, e in windows if s < end and e > start]


def _chunk_rows(
    kinds_text: np.ndarray, devices_text: np.ndarray, ts: np.ndarray
) -> dict[tuple[str, str, int], np.ndarray]:
    """The row numbers per (type, device, UTC hour) of these columns: the chunks they write to."""
    kinds, kind_names = label_codes(kinds_text)
    devices, device_names = label_codes(devices_text)
    hours = chunks.hour_of(ts)
    index = (hours - hours.min()) // HOUR_US
    key = (kinds * len(device_names) + devices) * (int(index.max()) + 1) + index
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    found = {}
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        row = int(order[start])
        name = (str(kind_names[kinds[row]]), str(device_names[devices[row]]), int(hours[row]))
        found[name] = order[start:end]
    return found


def write_series(
    conn: Connection,
    provider: str,
    user_id: str,
    batch: pd.DataFrame,
    replace: Mapping[str, Sequence[Interval]],
    rows: np.ndarray | None = None,
) -> dict[str, list[tuple[int, int]]]:
    """Merge a person's dense records into their chunks; returns the [start, end) spans changed,
    per data type.
    `rows`: the batch's rows that are dense records (None: all of them), read column by column
    (a copy of the frame's dense part cost more than the columns the chunks need)."""
    new: dict[tuple[str, str, int], Samples] = {}
    taken = np.arange(len(batch)) if rows is None else rows
    if taken.size:

        def column(name: str) -> np.ndarray:
            return batch[name].to_numpy()[taken]

        ts = _ts_us(batch)[taken]
        offsets = batch["utc_offset_min"].fillna(0).to_numpy(dtype="int64")[taken]
        value, duration = column("value"), column("duration_s")
        method, context = column("method"), column("context")
        found = _chunk_rows(column("data_type"), column("device_id"), ts)
        for (data_type, device_id, hour), at in found.items():
            new[(data_type, device_id, hour)] = Samples.of(
                ts[at],
                value[at],
                utc_offset_min=offsets[at],
                duration_s=duration[at],
                method=method[at],
                context=context[at],
            ).sorted_unique()
    touched: dict[str, set[int]] = {}
    for data_type, _, hour in new:
        touched.setdefault(data_type, set()).add(hour)
    for data_type, windows in replace.items():
        if data_type not in DENSE:
            continue
        for start, end in windows:
            first, last = chunks.hour_of(np.array([start, end - 1]))
            touched.setdefault(data_type, set()).update(range(int(first), int(last) + 1, HOUR_US))
    t = series_chunks
    changed: dict[str, list[tuple[int, int]]] = {}
    upserts: list[dict[str, Any]] = []
    deletes: list[tuple[str, str, int]] = []
    stamp = now_us()
    for data_type, hours in touched.items():
        stored = {
            (row.device_id, row.hour_us): row.payload
            for row in conn.execute(
                sa.select(t.c.device_id, t.c.hour_us, t.c.payload).where(
                    t.c.provider == provider,
                    t.c.user_id == user_id,
                    t.c.data_type == data_type,
                    t.c.hour_us >= min(hours),
                    t.c.hour_us <= max(hours),
                )
            )
            if row.hour_us in hours
        }
        keys = {(d, h) for (kind, d, h) in new if kind == data_type} | set(stored)
        windows = replace.get(data_type, ())
        for device_id, hour in sorted(keys):
            old_payload = stored.get((device_id, hour))
            fresh = new.get((data_type, device_id, hour), _EMPTY)
            dropped = _clip(windows, hour, hour + HOUR_US)
            if not len(fresh) and not dropped:
                continue
            old = None if old_payload is None else chunks.decode(old_payload, hour)
            merged = chunks.merge(old, fresh, dropped)
            if not len(merged):
                if old_payload is not None:
                    deletes.append((data_type, device_id, hour))
                    changed.setdefault(data_type, []).append((hour, hour + HOUR_US))
                continue
            if old is not None and merged.equals(old):  # re-delivered: nothing changes
                continue
            payload = chunks.encode(merged, hour)
            upserts.append(
                {
                    "provider": provider,
                    "user_id": user_id,
                    "data_type": data_type,
                    "hour_us": hour,
                    "device_id": device_id,
                    "samples": len(merged),
                    "payload": payload,
                    "updated_at_us": stamp,
                }
            )
            changed.setdefault(data_type, []).append((hour, hour + HOUR_US))
    for data_type, device_id, hour in deletes:
        conn.execute(
            t.delete().where(
                t.c.provider == provider,
                t.c.user_id == user_id,
                t.c.data_type == data_type,
                t.c.hour_us == hour,
                t.c.device_id == device_id,
            )
        )
    db.upsert(conn, t, upserts)
    return changed


def _measurement_rows(provider: str, user_id: str, batch: pd.DataFrame) -> dict[tuple, dict]:
    ts = _ts_us(batch)
    rows: dict[tuple, dict] = {}
    stamp = now_us()
    # A row's fields are whatever its columns hold: not something the type checker can know.
    batch_rows: Iterable[Any] = batch.itertuples(index=False)
    for i, row in enumerate(batch_rows):
        samples = row.samples
        waveform = None if samples is None else chunks.encode_waveform(np.asarray(samples))

        def number(value: Any) -> float | None:
            return None if value is None or pd.isna(value) else float(value)

        key = (row.data_type, int(ts[i]), row.device_id)
        rows[key] = {
            "provider": provider,
            "user_id": user_id,
            "data_type": row.data_type,
            "ts_us": int(ts[i]),
            "device_id": row.device_id,
            "utc_offset_min": None if pd.isna(row.utc_offset_min) else int(row.utc_offset_min),
            "value": number(row.value),
            "diastolic": number(row.diastolic),
            "duration_s": number(row.duration_s),
            "method": row.method,
            "context": row.context,
            "sampling_rate_hz": number(row.sampling_rate_hz),
            "waveform": waveform,
            "updated_at_us": stamp,
        }
    return rows


def _same(stored: Any, row: Mapping[str, Any]) -> bool:
    for name in _COMPARED:
        a, b = getattr(stored, name), row[name]
        if isinstance(a, memoryview | bytes | bytearray) or isinstance(b, bytes):
            if (None if a is None else bytes(a)) != b:
                return False
        elif a != b and not (a is None and b is None):
            return False
    return True


def write_measurements(
    conn: Connection,
    provider: str,
    user_id: str,
    batch: pd.DataFrame,
    replace: Mapping[str, Sequence[Interval]],
) -> list[tuple[int, int]]:
    """Upsert a person's sparse records and ECG recordings.

    Returns the [start, end) spans changed.
    """
    new = _measurement_rows(provider, user_id, batch) if not batch.empty else {}
    t = measurements
    changed: list[tuple[int, int]] = []
    upserts: list[dict[str, Any]] = []
    kinds = {k[0] for k in new} | {k for k in replace if k not in DENSE}
    for data_type in sorted(kinds):
        windows = [] if data_type in DENSE else list(replace.get(data_type, ()))
        instants = [ts for (kind, ts, _) in new if kind == data_type]
        bounds = [*instants, *(s for s, _ in windows), *(e - 1 for _, e in windows)]
        if not bounds:
            continue
        stored = {
            (row.data_type, row.ts_us, row.device_id): row
            for row in conn.execute(
                sa.select(t).where(
                    t.c.provider == provider,
                    t.c.user_id == user_id,
                    t.c.data_type == data_type,
                    t.c.ts_us >= min(bounds),
                    t.c.ts_us <= max(bounds),
                )
            )
        }
        for key in stored:
            if key not in new and any(s <= key[1] < e for s, e in windows):
                conn.execute(
                    t.delete().where(
                        t.c.provider == provider,
                        t.c.user_id == user_id,
                        t.c.data_type == key[0],
                        t.c.ts_us == key[1],
                        t.c.device_id == key[2],
                    )
                )
                changed.append((key[1], key[1] + 1))
        for key, row in new.items():
            if key[0] != data_type:
                continue
            if key in stored and _same(stored[key], row):
                continue
            upserts.append(row)
            changed.append((key[1], key[1] + 1))
    db.upsert(conn, t, upserts)
    return changed


# -- reading --------------------------------------------------------------------------------------


def _scope(query: sa.Select, table: sa.Table, user_ids: Iterable[str] | None, types) -> sa.Select:
    if user_ids is not None:
        query = query.where(table.c.user_id.in_(sorted(user_ids)))
    if types is not None:
        query = query.where(table.c.data_type.in_(sorted(str(t) for t in types)))
    return query


def read_chunks(
    conn: Connection,
    provider: str,
    start_us: int,
    end_us: int,
    *,
    user_ids: Iterable[str] | None = None,
    data_types: Iterable[str] | None = None,
) -> list[Chunk]:
    """The stored chunks with samples in [start, end), samples outside it cut off."""
    t = series_chunks
    query = sa.select(t.c.user_id, t.c.data_type, t.c.device_id, t.c.hour_us, t.c.payload).where(
        t.c.provider == provider,
        t.c.hour_us > start_us - HOUR_US,
        t.c.hour_us < end_us,
    )
    query = _scope(query, t, user_ids, data_types).order_by(
        t.c.user_id, t.c.data_type, t.c.device_id, t.c.hour_us
    )
    found = []
    for row in conn.execute(query):
        samples = chunks.decode(row.payload, row.hour_us)
        if row.hour_us < start_us or row.hour_us + HOUR_US > end_us:
            inside = (samples.ts_us >= start_us) & (samples.ts_us < end_us)
            if not inside.any():
                continue
            samples = samples.take(np.flatnonzero(inside))
        found.append(Chunk(row.user_id, row.data_type, row.device_id, row.hour_us, samples))
    return found


def read_measurements(
    conn: Connection,
    provider: str,
    start_us: int,
    end_us: int,
    *,
    user_ids: Iterable[str] | None = None,
    data_types: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Sparse records and ECG recordings in [start, end), as a record batch."""
    t = measurements
    query = sa.select(t).where(t.c.provider == provider, t.c.ts_us >= start_us, t.c.ts_us < end_us)
    query = _scope(query, t, user_ids, data_types).order_by(
        t.c.user_id, t.c.data_type, t.c.ts_us, t.c.device_id
    )
    rows = conn.execute(query).all()
    if not rows:
        return empty_batch()
    frame = pd.DataFrame(
        {
            "provider": provider,
            "user_id": [r.user_id for r in rows],
            "data_type": [r.data_type for r in rows],
            "ts": pd.to_datetime([r.ts_us for r in rows], unit="us", utc=True),
            "device_id": [r.device_id for r in rows],
            "utc_offset_min": [r.utc_offset_min for r in rows],
            "value": [np.nan if r.value is None else r.value for r in rows],
            "diastolic": [np.nan if r.diastolic is None else r.diastolic for r in rows],
            "unit": [HealthDataType(r.data_type).canonical_unit for r in rows],
            "samples": [
                None if r.waveform is None else chunks.decode_waveform(r.waveform).tolist()
                for r in rows
            ],
            "sampling_rate_hz": [
                np.nan if r.sampling_rate_hz is None else r.sampling_rate_hz for r in rows
            ],
            "duration_s": [np.nan if r.duration_s is None else r.duration_s for r in rows],
            "method": [r.method for r in rows],
            "context": [r.context for r in rows],
        }
    )
    return normalize(frame)


def chunks_to_batch(provider: str, found: Sequence[Chunk]) -> pd.DataFrame:
    """Chunks as a record batch (one row per sample), built from whole arrays."""
    if not found:
        return empty_batch()
    sizes = [len(c.samples) for c in found]

    def repeat(values: list[str]) -> np.ndarray:
        return np.repeat(np.array(values, dtype=object), sizes)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(c.samples, name) for c in found])

    kinds = [c.data_type for c in found]
    frame = pd.DataFrame(
        {
            "provider": provider,
            "user_id": repeat([c.user_id for c in found]),
            "data_type": repeat(kinds),
            "ts": pd.to_datetime(cat("ts_us"), unit="us", utc=True),
            "device_id": repeat([c.device_id for c in found]),
            "utc_offset_min": cat("utc_offset_min").astype("int32"),
            "value": cat("value"),
            "diastolic": np.nan,
            "unit": repeat([HealthDataType(k).canonical_unit for k in kinds]),
            "samples": None,
            "sampling_rate_hz": np.nan,
            "duration_s": cat("duration_s"),
            "method": cat("method"),
            "context": cat("context"),
        }
    )
    return normalize(frame)
