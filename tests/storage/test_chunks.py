"""Chunks: exact round trips, deterministic bytes, and merges that never lose or double a sample."""

from __future__ import annotations

import numpy as np
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.storage.chunks import (
    HOUR_US,
    Samples,
    decode,
    decode_waveform,
    encode,
    encode_waveform,
    merge,
)

HOUR = 1_700_000_000_000_000 // HOUR_US * HOUR_US

offsets_us = st.lists(st.integers(0, HOUR_US - 1), min_size=1, max_size=300, unique=True)
values = st.one_of(
    st.integers(30, 220).map(float),
    st.floats(0.5, 650, allow_nan=False).map(lambda v: round(v, 3)),
    st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False),
)


def samples(ts: list[int], vals: list[float], **columns) -> Samples:
    return Samples.of(np.array(ts) + HOUR, vals, **columns).sorted_unique()


@given(
    offsets_us.flatmap(
        lambda ts: st.tuples(st.just(ts), st.lists(values, min_size=len(ts), max_size=len(ts)))
    )
)
@settings(max_examples=examples(200), deadline=None)
def test_every_chunk_decodes_to_exactly_what_was_encoded(case) -> None:
    ts, vals = case
    chunk = samples(ts, vals, utc_offset_min=60, method="manual", context="sleep")
    payload = encode(chunk, HOUR)
    assert decode(payload, HOUR).equals(chunk)
    assert encode(decode(payload, HOUR), HOUR) == payload  # deterministic bytes


@given(
    st.lists(st.tuples(st.integers(0, HOUR_US - 1), values), min_size=1, max_size=200),
    st.lists(st.tuples(st.integers(0, HOUR_US - 1), values), min_size=0, max_size=200),
)
@settings(max_examples=examples(200), deadline=None)
def test_a_merge_keeps_every_instant_once_and_the_newest_value(stored, arriving) -> None:
    old = samples([t for t, _ in stored], [v for _, v in stored])
    new = Samples.of(
        np.array([t for t, _ in arriving], dtype=np.int64) + HOUR, [v for _, v in arriving]
    )
    merged = merge(old, new)
    expected = {int(t): float(v) for t, v in zip(old.ts_us, old.value, strict=True)}
    expected.update({t + HOUR: float(v) for t, v in arriving})  # the last delivery wins
    assert dict(zip(merged.ts_us.tolist(), merged.value.tolist(), strict=True)) == expected
    assert (np.diff(merged.ts_us) > 0).all()
    # Delivering the same samples again changes nothing, byte for byte.
    assert encode(merge(merged, new), HOUR) == encode(merged, HOUR)


def test_a_replace_window_drops_what_the_provider_no_longer_sends() -> None:
    old = samples([0, 10, 20, 30], [60.0, 61.0, 62.0, 63.0])
    again = samples([10], [61.0])
    merged = merge(old, again, replace=[(HOUR + 5, HOUR + 25)])
    assert merged.ts_us.tolist() == [HOUR, HOUR + 10, HOUR + 30]


def test_regular_one_hertz_heart_rate_takes_well_under_a_byte_a_sample() -> None:
    rng = np.random.default_rng(7)
    hr = np.clip(60 + np.cumsum(rng.normal(0, 0.25, 3600)).round(0), 40, 180)
    chunk = Samples.of(HOUR + np.arange(3600) * 1_000_000, hr)
    assert len(encode(chunk, HOUR)) / 3600 < 1.0


def test_instants_outside_the_hour_or_unsorted_are_refused() -> None:
    with pytest.raises(ValidationError, match="inside the hour"):
        encode(Samples.of([HOUR + HOUR_US], [60.0]), HOUR)
    with pytest.raises(ValidationError, match="strictly increasing"):
        encode(Samples.of([HOUR + 5, HOUR + 1], [60.0, 61.0]), HOUR)


@given(st.lists(st.floats(-20_000, 20_000, allow_nan=False), min_size=1, max_size=2000))
@settings(max_examples=examples(100), deadline=None)
def test_an_ecg_waveform_round_trips_exactly(waveform) -> None:
    assert decode_waveform(encode_waveform(np.array(waveform))).tolist() == waveform
