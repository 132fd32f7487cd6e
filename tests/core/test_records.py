"""Record batches: the same rules as HealthDataRecord, applied to whole arrays at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthDataRecord, HealthDataType
from ohx_dagster.core.records import (
    COLUMNS,
    IDENTITY,
    batch_from_records,
    concat,
    dedupe,
    empty_batch,
    label_codes,
    make_batch,
    records_from_batch,
    rows_by,
)

T0 = datetime(2016, 4, 1, 7, 0, tzinfo=UTC)
STAMPS = pd.date_range(T0, periods=4, freq="5s")


def batch(**overrides: object) -> pd.DataFrame:
    fields: dict[str, object] = {
        "provider": "fitabase",
        "user_id": "u1",
        "data_type": "heart_rate",
        "timestamps": STAMPS,
        "values": [60.0, 61.0, 62.0, 63.0],
        "unit": "/min",
    }
    fields.update(overrides)
    return make_batch(**fields)  # type: ignore[arg-type]


def test_make_batch_has_canonical_columns_units_and_utc_times() -> None:
    chicago = STAMPS.tz_convert("America/Chicago")
    frame = batch(data_type="weight", timestamps=chicago, values=[150, 151, 152, 153], unit="lb")
    assert list(frame.columns) == COLUMNS
    assert str(frame["ts"].dt.tz) == "UTC"
    assert (frame["ts"] == pd.Series(STAMPS)).all()
    assert (frame["unit"] == "kg").all()
    np.testing.assert_allclose(frame["value"], np.array([150, 151, 152, 153]) * 0.45359237)
    # The device's local offset is kept when the timestamps carry it (CDT is UTC-5 in April).
    assert frame["utc_offset_min"].tolist() == [-300] * 4
    assert batch()["utc_offset_min"].tolist() == [0] * 4
    assert batch(utc_offset_min=60)["utc_offset_min"].tolist() == [60] * 4


@pytest.mark.parametrize(
    ("overrides", "field", "row"),
    [
        ({"values": [60.0, np.nan, 62.0, 63.0]}, "value", 1),
        ({"values": [60.0, 61.0, 62.0, np.inf]}, "value", 3),
        ({"values": [60.0, 61.0, 400.0, 63.0]}, "value", 2),
        ({"values": [10.0, 61.0, 62.0, 63.0]}, "value", 0),
    ],
)
def test_bad_values_name_the_field_and_row(
    overrides: dict[str, object], field: str, row: int
) -> None:
    with pytest.raises(ValidationError) as caught:
        batch(**overrides)
    assert caught.value.field == field
    assert caught.value.where.endswith(f"row {row}")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"timestamps": STAMPS.tz_localize(None)}, "timestamp"),
        ({"unit": "mmol/L"}, "unit"),
        ({"values": [60.0, 61.0]}, "value"),
        ({"values": None}, "value"),
    ],
)
def test_bad_batches_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        batch(**overrides)
    assert caught.value.field == field


def test_unknown_data_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="glucose"):
        batch(data_type="glucose")


def test_blood_pressure_batch_checks_diastolic_below_systolic() -> None:
    ok = batch(
        data_type="blood_pressure",
        values=[16, 16, 16, 16],
        diastolic=[10, 10, 10, 10],
        unit="kPa",
    )
    assert (ok["diastolic"] < ok["value"]).all()
    with pytest.raises(ValidationError) as caught:
        batch(
            data_type="blood_pressure",
            values=[120, 120, 120, 120],
            diastolic=[80, 80, 120, 80],
            unit="mm[Hg]",
        )
    assert caught.value.field == "diastolic"
    assert caught.value.where.endswith("row 2")
    with pytest.raises(ValidationError) as caught:
        batch(data_type="blood_pressure", unit="mm[Hg]", values=[120] * 4)
    assert caught.value.field == "diastolic"


def test_ecg_batch_needs_samples_and_a_rate() -> None:
    one = {"timestamps": [T0], "values": None, "data_type": "ecg"}
    frame = batch(**one, unit="mV", samples=[[0.1, -0.2]], sampling_rate_hz=130.0)
    assert frame["samples"].iloc[0] == pytest.approx([100.0, -200.0])
    assert np.isnan(frame["value"].iloc[0])
    for overrides, field in [
        ({"samples": None, "sampling_rate_hz": 130.0}, "samples"),
        ({"samples": [[]], "sampling_rate_hz": 130.0}, "samples"),
        ({"samples": [[1.0, np.nan]], "sampling_rate_hz": 130.0}, "samples"),
        ({"samples": [[1.0]], "sampling_rate_hz": 20.0}, "sampling_rate_hz"),
    ]:
        with pytest.raises(ValidationError) as caught:
            batch(**one, unit="uV", **overrides)
        assert caught.value.field == field


def test_records_and_batches_convert_both_ways() -> None:
    records = [
        HealthDataRecord(
            provider="simulated",
            user_id="sim-001",
            data_type=HealthDataType.HEART_RATE,
            timestamp=T0 + timedelta(seconds=i),
            value=70.0 + i,
            unit="/min",
            utc_offset_min=60,
        )
        for i in range(3)
    ] + [
        HealthDataRecord(
            provider="simulated",
            user_id="sim-001",
            data_type=HealthDataType.ECG,
            timestamp=T0,
            value=None,
            unit="uV",
            samples=(1.0, 2.0, 3.0),
            sampling_rate_hz=250.0,
            duration_s=30.0,
        ),
        HealthDataRecord(
            provider="simulated",
            user_id="sim-001",
            data_type=HealthDataType.BLOOD_PRESSURE,
            timestamp=T0,
            value=120.0,
            diastolic=80.0,
            unit="mm[Hg]",
        ),
    ]
    frame = batch_from_records(records)
    assert list(frame.columns) == COLUMNS
    assert list(records_from_batch(frame)) == records
    assert batch_from_records([]).empty


def test_dedupe_keeps_the_last_of_each_identity() -> None:
    first = batch()
    second = batch(values=[90.0, 91.0, 92.0, 93.0], timestamps=STAMPS + pd.Timedelta(seconds=10))
    merged = dedupe(concat([first, empty_batch(), second]))
    assert len(merged) == 6  # 4 + 4 - 2 shared timestamps
    assert merged.set_index("ts")["value"].to_dict() == {
        STAMPS[0]: 60.0,
        STAMPS[1]: 61.0,
        STAMPS[2]: 90.0,
        STAMPS[3]: 91.0,
        STAMPS[3] + pd.Timedelta(seconds=5): 92.0,
        STAMPS[3] + pd.Timedelta(seconds=10): 93.0,
    }
    assert len(dedupe(concat([first, first.assign(device_id="other")]))) == 8
    assert concat([]).empty


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["oura", "withings"]),
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["heart_rate", "steps"]),
            st.integers(0, 5),  # seconds: few, so identities repeat
            st.sampled_from(["", "ring"]),
        ),
        max_size=40,
    )
)
def test_dedupe_is_drop_duplicates_keeping_the_last(rows) -> None:
    """The timestamp-first dedupe answers exactly as pandas' drop_duplicates(keep="last")."""
    frame = pd.DataFrame(rows, columns=["provider", "user_id", "data_type", "s", "device_id"])
    frame["ts"] = pd.to_datetime(frame.pop("s"), unit="s", utc=True).astype("datetime64[us, UTC]")
    frame["value"] = np.arange(len(frame), dtype="float64")  # which occurrence survived
    expected = frame.drop_duplicates(subset=IDENTITY, keep="last").reset_index(drop=True)
    pd.testing.assert_frame_equal(dedupe(frame), expected)


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["heart_rate", "steps", "ecg", "", "sim-watch-1"]), st.integers(1, 40)
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_label_codes_and_rows_by_read_a_column_as_hashing_every_row_does(runs, shuffle) -> None:
    """Runs of labels (a batch built type by type) or any order: the codes give back the column,
    and each label's rows are exactly the rows that hold it, in row order."""
    column = np.array([label for label, length in runs for _ in range(length)], dtype=object)
    if shuffle:
        column = np.random.default_rng(len(column)).permutation(column)
    codes, labels = label_codes(column)
    assert list(labels[codes]) == list(column)
    assert len(set(labels)) == len(labels)
    found = rows_by(column)
    assert set(found) == set(column)
    for label, rows in found.items():
        assert rows.tolist() == [i for i, v in enumerate(column) if v == label]
