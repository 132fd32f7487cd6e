"""The domain model validates on construction; every error names the field that is wrong."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import (
    AggregationLevel,
    DateRange,
    HealthDataRecord,
    HealthDataType,
    HealthSyncConfig,
    SyncFrequency,
    default_patient_id,
)

T0 = datetime(2016, 4, 1, 7, 0, tzinfo=UTC)


def heart_rate(**overrides: object) -> HealthDataRecord:
    fields: dict[str, object] = {
        "provider": "fitabase",
        "user_id": "2022484408",
        "data_type": HealthDataType.HEART_RATE,
        "timestamp": T0,
        "value": 72.0,
        "unit": "/min",
    }
    fields.update(overrides)
    return HealthDataRecord(**fields)  # type: ignore[arg-type]


def test_seed_enums_have_the_seed_members() -> None:
    # Types are added (the table of data types), never renamed or removed: stored rows name them.
    assert {t.value for t in HealthDataType} >= {
        "heart_rate",
        "steps",
        "rr_intervals",
        "ecg",
        "blood_pressure",
        "weight",
        "temperature",
        "spo2",
    }
    assert {a.value for a in AggregationLevel} == {"individual", "hourly", "daily"}
    assert {f.value for f in SyncFrequency} == {"realtime", "hourly", "daily"}


def test_valid_record_is_stored_in_utc_with_its_local_offset() -> None:
    chicago = timezone(timedelta(hours=-5))
    record = heart_rate(timestamp=datetime(2016, 4, 1, 2, 0, tzinfo=chicago))
    assert record.timestamp == datetime(2016, 4, 1, 7, 0, tzinfo=UTC)
    assert record.timestamp.utcoffset() == timedelta(0)
    assert record.utc_offset_min == -300
    assert record.identity == ("fitabase", "2022484408", "heart_rate", record.timestamp, "")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"unit": "bpm"}, "unit"),  # a provider unit on the canonical constructor
        ({"unit": "kg"}, "unit"),
        ({"timestamp": datetime(2016, 4, 1, 7, 0)}, "timestamp"),
        ({"timestamp": "2016-04-01T07:00:00Z"}, "timestamp"),
        ({"value": math.nan}, "value"),
        ({"value": math.inf}, "value"),
        ({"value": 19.0}, "value"),
        ({"value": 301.0}, "value"),
        ({"value": None}, "value"),
        ({"value": True}, "value"),
        ({"value": "72"}, "value"),
        ({"data_type": "glucose"}, "data_type"),
        ({"provider": ""}, "provider"),
        ({"user_id": ""}, "user_id"),
        ({"diastolic": 60.0}, "diastolic"),
        ({"duration_s": -1.0}, "duration_s"),
        ({"duration_s": math.nan}, "duration_s"),
    ],
)
def test_invalid_record_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        heart_rate(**overrides)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}=")


def test_naive_timestamp_message_says_naive() -> None:
    with pytest.raises(ValidationError, match=r"timestamp=.*timezone-aware.*naive"):
        heart_rate(timestamp=datetime(2016, 4, 1, 7, 0))


def test_out_of_range_message_states_the_limits_and_unit() -> None:
    with pytest.raises(ValidationError, match=r"value=400\.0: expected 20\.\.300 /min"):
        heart_rate(value=400.0)


def blood_pressure(systolic: float, diastolic: float | None) -> HealthDataRecord:
    return HealthDataRecord(
        provider="withings",
        user_id="u1",
        data_type=HealthDataType.BLOOD_PRESSURE,
        timestamp=T0,
        value=systolic,
        diastolic=diastolic,
        unit="mm[Hg]",
    )


def test_blood_pressure_carries_systolic_and_diastolic() -> None:
    record = blood_pressure(120, 80)
    assert (record.value, record.diastolic) == (120.0, 80.0)


@pytest.mark.parametrize(("systolic", "diastolic"), [(120, 120), (120, 121), (90, 140)])
def test_blood_pressure_diastolic_must_be_below_systolic(systolic: float, diastolic: float) -> None:
    with pytest.raises(ValidationError, match="< systolic") as caught:
        blood_pressure(systolic, diastolic)
    assert caught.value.field == "diastolic"


def test_blood_pressure_without_diastolic_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        blood_pressure(120, None)
    assert caught.value.field == "diastolic"


def ecg(**overrides: object) -> HealthDataRecord:
    fields: dict[str, object] = {
        "provider": "simulated",
        "user_id": "sim-001",
        "data_type": "ecg",
        "timestamp": T0,
        "value": None,
        "unit": "uV",
        "samples": (10.0, -20.5, 1100.0),
        "sampling_rate_hz": 250.0,
        "duration_s": 30.0,
    }
    fields.update(overrides)
    return HealthDataRecord(**fields)  # type: ignore[arg-type]


def test_ecg_carries_samples_and_sampling_rate() -> None:
    record = ecg(samples=[1, 2, 3])
    assert record.samples == (1.0, 2.0, 3.0)
    assert record.data_type is HealthDataType.ECG
    assert record.value is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"samples": ()}, "samples"),
        ({"samples": None}, "samples"),
        ({"samples": (1.0, math.nan)}, "samples"),
        ({"samples": (1.0, 200_000.0)}, "samples"),
        ({"sampling_rate_hz": None}, "sampling_rate_hz"),
        ({"sampling_rate_hz": 10.0}, "sampling_rate_hz"),
        ({"sampling_rate_hz": math.nan}, "sampling_rate_hz"),
        ({"value": 1.0}, "value"),
        ({"unit": "mV"}, "unit"),
    ],
)
def test_invalid_ecg_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ecg(**overrides)
    assert caught.value.field == field


def test_create_converts_provider_units_to_canonical() -> None:
    weight = HealthDataRecord.create(
        provider="withings",
        user_id="u1",
        data_type="weight",
        timestamp=T0,
        value=150.0,
        unit="lb",
    )
    assert weight.unit == "kg"
    assert weight.value == pytest.approx(68.0388555)
    bp = HealthDataRecord.create(
        provider="withings",
        user_id="u1",
        data_type="blood_pressure",
        timestamp=T0,
        value=16.0,
        unit="kPa",
        diastolic=10.6,
    )
    assert bp.value == pytest.approx(120.0098, abs=1e-3)
    assert bp.diastolic == pytest.approx(79.5065, abs=1e-3)
    trace = HealthDataRecord.create(
        provider="polar",
        user_id="u1",
        data_type="ecg",
        timestamp=T0,
        value=None,
        unit="mV",
        samples=[0.5, -0.25],
        sampling_rate_hz=130.0,
    )
    assert trace.samples == (500.0, -250.0)
    assert trace.unit == "uV"


def test_create_rejects_an_unknown_unit_even_without_a_value() -> None:
    with pytest.raises(ValidationError) as caught:
        HealthDataRecord.create(
            provider="polar",
            user_id="u1",
            data_type="ecg",
            timestamp=T0,
            value=None,
            unit="furlongs",
            samples=None,
            sampling_rate_hz=130.0,
        )
    assert caught.value.field == "unit"


def test_create_rejects_a_converted_value_out_of_range() -> None:
    with pytest.raises(ValidationError) as caught:
        HealthDataRecord.create(
            provider="p", user_id="u", data_type="temperature", timestamp=T0, value=212, unit="degF"
        )
    assert caught.value.field == "value"
    assert caught.value.value == pytest.approx(100.0)


def test_date_range_is_half_open_and_normalized_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    window = DateRange(datetime(2016, 4, 1, 2, 0, tzinfo=plus2), datetime(2016, 4, 2, tzinfo=UTC))
    assert window.start == datetime(2016, 4, 1, 0, 0, tzinfo=UTC)
    assert window.start.tzinfo is UTC
    assert window.contains(window.start)
    assert not window.contains(window.end)
    assert window.duration == timedelta(days=1)
    assert window.intersect(DateRange(window.end, window.end + timedelta(hours=1))) is None
    inner = window.intersect(
        DateRange(datetime(2016, 3, 31, tzinfo=UTC), datetime(2016, 4, 1, 6, tzinfo=UTC))
    )
    assert inner == DateRange(window.start, datetime(2016, 4, 1, 6, tzinfo=UTC))


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (datetime(2016, 4, 1), datetime(2016, 4, 2, tzinfo=UTC), "start"),
        (datetime(2016, 4, 1, tzinfo=UTC), datetime(2016, 4, 2), "end"),
        (datetime(2016, 4, 2, tzinfo=UTC), datetime(2016, 4, 1, tzinfo=UTC), "end"),
    ],
)
def test_date_range_errors_name_the_field(start: datetime, end: datetime, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DateRange(start, end)
    assert caught.value.field == field


def test_sync_config_defaults_and_round_trip() -> None:
    config = HealthSyncConfig(
        user_id="2022484408",
        provider="fitabase",
        enabled_types=frozenset({"heart_rate", "steps"}),  # type: ignore[arg-type]
        aggregation="daily",  # type: ignore[arg-type]
        timezone="America/Chicago",
    )
    assert config.enabled_types == {HealthDataType.HEART_RATE, HealthDataType.STEPS}
    assert config.aggregation is AggregationLevel.DAILY
    assert config.sync_frequency is SyncFrequency.HOURLY
    assert config.lookback_days == 30
    assert config.link_heart_rate_to == {HealthDataType.ECG, HealthDataType.RR_INTERVALS}
    assert config.fhir_patient_id == default_patient_id(config)
    other = HealthSyncConfig(user_id="other", provider="fitabase")
    assert other.fhir_patient_id != config.fhir_patient_id
    assert HealthSyncConfig.from_json(config.to_json()) == config
    assert HealthSyncConfig(user_id="u", provider="p").enabled_types == set(HealthDataType)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"aggregation": "weekly"}, "aggregation"),
        ({"sync_frequency": "yearly"}, "sync_frequency"),
        ({"enabled_types": frozenset({"glucose"})}, "enabled_types"),
        ({"retention_days": 0}, "retention_days"),
        ({"retention_days": True}, "retention_days"),
        ({"lookback_days": 1.5}, "lookback_days"),
        ({"user_id": ""}, "user_id"),
        ({"provider": ""}, "provider"),
    ],
)
def test_invalid_sync_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {"user_id": "u1", "provider": "fitbit", **overrides}
    with pytest.raises(ValidationError) as caught:
        HealthSyncConfig(**fields)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_config_from_json_rejects_unknown_keys() -> None:
    data = HealthSyncConfig(user_id="u1", provider="fitbit").to_json()
    data["time_zone"] = "UTC"
    with pytest.raises(ValidationError, match="time_zone") as caught:
        HealthSyncConfig.from_json(data)
    assert caught.value.field == "config"
