"""Dense series stored as the unit they are published in: one chunk per user, type, device and hour.

A chunk holds that hour's samples column by column, each column in the most compact exact form:

| column | encoding |
|---|---|
| ts | microseconds after the hour: (start, step) when evenly spaced, else first differences |
| value | first differences of integers (value x 10^k, smallest exact k <= 6), else raw float64 |
| utc_offset_min, duration_s, method, context | one value if constant in the chunk, else an array |

The columns are concatenated and deflated (zlib, fastest level). 1 Hz heart rate takes under 1 byte
a sample, where a row per sample took 145 (SQLite) to 230 (PostgreSQL) bytes (docs/storage.md).
Encoding is deterministic: the same samples always give the same bytes. "Did this write change
anything" compares the merged samples with the stored ones, so chunks written by another encoder
setting are not rewritten for it.

`merge` is the only way samples enter a stored chunk: samples are keyed by timestamp, a re-delivered
sample changes nothing, a corrected one replaces the stored value, and samples inside a window the
provider has just answered for in full (`replace`) are dropped unless the provider sent them again
(that is how a deletion at the provider reaches the store).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.records import own_column
from ohx_dagster.core.times import HOUR_US

VERSION: Final = 1
_HEADER = struct.Struct("<BI")  # version, sample count
_MAX_DIGITS: Final = 6


@dataclass(frozen=True, slots=True)
class Samples:
    """The samples of one chunk (or a batch about to become one), time-sorted, one per instant."""

    ts_us: np.ndarray  # int64, epoch microseconds, strictly increasing
    value: np.ndarray  # float64
    utc_offset_min: np.ndarray  # int16
    duration_s: np.ndarray  # float64, NaN = instantaneous
    method: np.ndarray  # object (str)
    context: np.ndarray  # object (str)

    def __len__(self) -> int:
        return int(self.ts_us.size)

    @classmethod
    def of(
        cls,
        ts_us: Sequence[int] | np.ndarray,
        value: Sequence[float] | np.ndarray,
        *,
        utc_offset_min: int | Sequence[int] | np.ndarray = 0,
        duration_s: float | Sequence[float] | np.ndarray = float("nan"),
        method: str | Sequence[str] | np.ndarray = "device",
        context: str | Sequence[str] | np.ndarray = "",
    ) -> Samples:
        ts = np.asarray(ts_us, dtype="int64")
        n = ts.size
        return cls(
            ts,
            own_column(value, n, "float64"),
            own_column(utc_offset_min, n, "int16"),
            own_column(duration_s, n, "float64"),
            own_column(method, n, "object"),
            own_column(context, n, "object"),
        )

    def take(self, index: np.ndarray) -> Samples:
        return Samples(
            self.ts_us[index],
            self.value[index],
            self.utc_offset_min[index],
            self.duration_s[index],
            self.method[index],
            self.context[index],
        )

    def sorted_unique(self) -> Samples:
        """Sorted by time; of samples sharing an instant the last one given wins."""
        if len(self) < 2:
            return self
        order = np.argsort(self.ts_us, kind="stable")
        ts = self.ts_us[order]
        last = np.ones(ts.size, dtype=bool)
        last[:-1] = ts[1:] != ts[:-1]
        return self.take(order[last])

    def equals(self, other: Samples) -> bool:
        return (
            np.array_equal(self.ts_us, other.ts_us)
            and np.array_equal(self.value, other.value)
            and np.array_equal(self.utc_offset_min, other.utc_offset_min)
            and np.array_equal(self.duration_s, other.duration_s, equal_nan=True)
            and np.array_equal(self.method, other.method)
            and np.array_equal(self.context, other.context)
        )


def concat_samples(parts: Sequence[Samples]) -> Samples:
    return Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in Samples.__slots__))


def merge(stored: Samples | None, new: Samples, replace: Sequence[tuple[int, int]] = ()) -> Samples:
    """The chunk after `new` arrives: stored samples inside a `replace` window [start, end) are
    dropped, then new samples are added, a new sample replacing a stored one at the same instant."""
    if stored is None or len(stored) == 0:
        return new.sorted_unique()
    keep = np.ones(len(stored), dtype=bool)
    for start, end in replace:
        keep &= ~((stored.ts_us >= start) & (stored.ts_us < end))
    return concat_samples([stored.take(np.flatnonzero(keep)), new]).sorted_unique()


# -- encoding ---------------------------------------------------------------------------------


def _pack_ints(values: np.ndarray) -> bytes:
    """Integers as first differences in the narrowest signed type that holds them."""
    diffs = np.diff(values, prepend=np.int64(0))
    for dtype, code in ((np.int8, 1), (np.int16, 2), (np.int32, 4)):
        info = np.iinfo(dtype)
        if diffs.size == 0 or (diffs.min() >= info.min and diffs.max() <= info.max):
            return bytes([code]) + diffs.astype(dtype).tobytes()
    return bytes([8]) + diffs.astype(np.int64).tobytes()


def _unpack_ints(blob: memoryview, n: int) -> tuple[np.ndarray, int]:
    code = blob[0]
    dtype = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[code]
    end = 1 + n * code
    diffs = np.frombuffer(blob[1:end], dtype=dtype).astype(np.int64)
    return np.cumsum(diffs), end


def _pack_ts(ts: np.ndarray, hour_us: int) -> bytes:
    rel = ts - hour_us
    if ts.size > 1:
        steps = np.diff(rel)
        if (steps == steps[0]).all():
            return b"R" + struct.pack("<qq", int(rel[0]), int(steps[0]))
    return b"D" + _pack_ints(rel)


def _unpack_ts(blob: memoryview, n: int, hour_us: int) -> tuple[np.ndarray, int]:
    if blob[0:1] == b"R":
        first, step = struct.unpack_from("<qq", blob, 1)
        return hour_us + first + step * np.arange(n, dtype=np.int64), 17
    values, used = _unpack_ints(blob[1:], n)
    return hour_us + values, used + 1


def _pack_values(values: np.ndarray) -> bytes:
    for digits in range(_MAX_DIGITS + 1):
        scaled = np.round(values * 10.0**digits)
        if np.all(np.abs(scaled) < 2**53) and np.array_equal(scaled / 10.0**digits, values):
            return b"I" + bytes([digits]) + _pack_ints(scaled.astype(np.int64))
    return b"F" + values.astype("<f8").tobytes()


def _unpack_values(blob: memoryview, n: int) -> tuple[np.ndarray, int]:
    if blob[0:1] == b"F":
        end = 1 + 8 * n
        return np.frombuffer(blob[1:end], dtype="<f8").astype(np.float64), end
    digits = blob[1]
    ints, used = _unpack_ints(blob[2:], n)
    return ints / 10.0**digits, used + 2


def _pack_column(values: np.ndarray, dtype: str) -> bytes:
    """One value when constant, else the array; dtype is a numpy dtype string."""
    if (values.size and (values == values[0]).all()) or (
        dtype == "<f8" and values.size and np.isnan(values).all()
    ):
        return b"C" + np.asarray(values[:1], dtype=dtype).tobytes()
    return b"A" + values.astype(dtype).tobytes()


def _unpack_column(blob: memoryview, n: int, dtype: str) -> tuple[np.ndarray, int]:
    width = np.dtype(dtype).itemsize
    if blob[0:1] == b"C":
        value = np.frombuffer(blob[1 : 1 + width], dtype=dtype)
        return np.repeat(value, n), 1 + width
    end = 1 + n * width
    return np.frombuffer(blob[1:end], dtype=dtype).copy(), end


def _pack_labels(labels: np.ndarray) -> bytes:
    """Strings as a small dictionary plus uint8 codes (constant: the one string)."""
    if labels.size and (labels == labels[0]).all():  # the usual case, without a sort
        text = str(labels[0]).encode()
        return struct.pack("<I", len(text)) + text + b"C" + b"\x00"
    names = sorted(set(labels.tolist()))
    if len(names) > 255:
        raise ValidationError("labels", len(names), "at most 255 distinct values in one chunk")
    text = "\x1f".join(names).encode()
    codes = np.searchsorted(np.array(names, dtype=object), labels).astype(np.uint8)
    return struct.pack("<I", len(text)) + text + _pack_column(codes, "u1")


def _unpack_labels(blob: memoryview, n: int) -> tuple[np.ndarray, int]:
    (length,) = struct.unpack_from("<I", blob, 0)
    names = np.array(bytes(blob[4 : 4 + length]).decode().split("\x1f"), dtype=object)
    codes, used = _unpack_column(blob[4 + length :], n, "u1")
    return names[codes] if n else np.array([], dtype=object), 4 + length + used


def encode(samples: Samples, hour_us: int) -> bytes:
    """The chunk's bytes (deterministic). Samples must be sorted and unique (`sorted_unique`)."""
    n = len(samples)
    if n == 0:
        raise ValidationError("samples", 0, "at least one sample in a chunk")
    ts = samples.ts_us
    if ts[0] < hour_us or ts[-1] >= hour_us + HOUR_US:
        raise ValidationError("ts_us", int(ts[0]), f"instants inside the hour starting {hour_us}")
    if n > 1 and not (np.diff(ts) > 0).all():
        raise ValidationError("ts_us", "unsorted", "strictly increasing instants")
    body = b"".join(
        [
            _pack_ts(ts, hour_us),
            _pack_values(samples.value),
            _pack_column(samples.utc_offset_min, "<i2"),
            _pack_column(samples.duration_s, "<f8"),
            _pack_labels(samples.method),
            _pack_labels(samples.context),
        ]
    )
    return _HEADER.pack(VERSION, n) + zlib.compress(body, 1)


def decode(payload: bytes | memoryview, hour_us: int) -> Samples:
    version, n = _HEADER.unpack_from(payload, 0)
    if version != VERSION:
        raise ValidationError("chunk version", version, f"{VERSION}")
    blob = memoryview(zlib.decompress(payload[_HEADER.size :]))
    ts, used = _unpack_ts(blob, n, hour_us)
    blob = blob[used:]
    value, used = _unpack_values(blob, n)
    blob = blob[used:]
    offset, used = _unpack_column(blob, n, "<i2")
    blob = blob[used:]
    duration, used = _unpack_column(blob, n, "<f8")
    blob = blob[used:]
    method, used = _unpack_labels(blob, n)
    context, _ = _unpack_labels(blob[used:], n)
    return Samples(
        ts,
        value,
        offset.astype(np.int16),
        duration.astype(np.float64),
        method,
        context,
    )


def hour_of(ts_us: np.ndarray) -> np.ndarray:
    """The start of the UTC hour of each instant (floor, also before 1970)."""
    return (ts_us // HOUR_US) * HOUR_US


def encode_waveform(values: np.ndarray) -> bytes:
    """An ECG recording's samples, exact, in the chunk's value encoding (deflated)."""
    values = np.asarray(values, dtype=np.float64)
    return _HEADER.pack(VERSION, values.size) + zlib.compress(_pack_values(values), 6)


def decode_waveform(payload: bytes | memoryview) -> np.ndarray:
    version, n = _HEADER.unpack_from(payload, 0)
    if version != VERSION:
        raise ValidationError("waveform version", version, f"{VERSION}")
    values, _ = _unpack_values(memoryview(zlib.decompress(payload[_HEADER.size :])), n)
    return values
