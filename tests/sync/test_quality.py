"""quality.recordings_without_heart_rate against a brute-force reading of its rule: an ECG or RR
record is reported exactly when the same person has no heart rate within 60 s of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.records import concat, make_batch
from ohx_dagster.sync.quality import recordings_without_heart_rate

T0 = datetime(2026, 11, 19, tzinfo=UTC)
UNITS = {"heart_rate": "/min", "rr_intervals": "ms"}


def batch(user: str, kind: str, seconds: list[int]):
    stamps = [T0 + timedelta(seconds=s) for s in sorted(set(seconds))]
    if kind == "ecg":
        return make_batch(provider="p", user_id=user, data_type=kind, timestamps=stamps,
                          values=None, unit="uV", samples=[[1.0, 2.0]] * len(stamps),
                          sampling_rate_hz=250.0)  # fmt: skip
    value = 70.0 if kind == "heart_rate" else 800.0
    return make_batch(provider="p", user_id=user, data_type=kind, timestamps=stamps,
                      values=[value] * len(stamps), unit=UNITS[kind])  # fmt: skip


@settings(max_examples=examples(150), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["heart_rate", "heart_rate", "ecg", "rr_intervals"]),
            st.lists(st.integers(0, 400), min_size=1, max_size=4),
        ),
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_reported_exactly_without_heart_rate_within_a_minute(parts, random) -> None:
    records = concat([batch(*part) for part in parts])
    if len(records):  # any row order, as a source may give
        records = records.sample(frac=1, random_state=random.randint(0, 1000))
    expected = []
    for user in sorted(set(records["user_id"])):
        mine = records[records["user_id"] == user]
        beats = mine.loc[mine["data_type"] == "heart_rate", "ts"].tolist()
        for kind, ts in zip(mine["data_type"], mine["ts"], strict=True):
            if kind in ("ecg", "rr_intervals") and not any(
                abs(ts - beat) <= timedelta(seconds=60) for beat in beats
            ):
                expected.append(f"{user} {kind} at {ts.isoformat()}")
    assert recordings_without_heart_rate(records) == expected
