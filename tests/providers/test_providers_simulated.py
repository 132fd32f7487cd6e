"""The simulated provider: deterministic, plausible, every type, nothing from the future."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ohx_dagster.core.models import DateRange, HealthDataType
from ohx_dagster.core.records import records_from_batch
from ohx_dagster.providers.base import WindowReader
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.sync.quality import implausible_values, recordings_without_heart_rate

NOW = datetime(2025, 1, 10, tzinfo=UTC)
DAY = DateRange(datetime(2025, 1, 5, tzinfo=UTC), datetime(2025, 1, 6, tzinfo=UTC))


def source(users: int = 3, seed: int = 7, now: datetime = NOW) -> SimulatedSource:
    return SimulatedSource(users, seed=seed, clock=lambda: now)


@pytest.fixture(scope="module")
def day_of_data() -> pd.DataFrame:
    sim = source()
    return pd.concat(
        [sim.fetch(u, list(HealthDataType), DAY, batch_size=1000) for u in sim.discover_users()],
        ignore_index=True,
    )


def test_users_are_deterministic_and_varied() -> None:
    users = source(5).discover_users()
    assert [u.user_id for u in users] == ["sim-001", "sim-002", "sim-003", "sim-004", "sim-005"]
    assert users == source(5).discover_users()
    assert len({u.timezone for u in users}) == 5
    assert {u.aggregation.value for u in users} == {"individual", "hourly", "daily"}
    assert isinstance(source(), WindowReader)


def test_all_eight_types_every_day_for_every_user(day_of_data: pd.DataFrame) -> None:
    for user_id, rows in day_of_data.groupby("user_id"):
        assert set(rows["data_type"]) == {t.value for t in HealthDataType}, user_id
        counts = rows["data_type"].value_counts()
        assert counts["ecg"] == 1 and counts["weight"] == 1 and counts["temperature"] == 1
        assert counts["blood_pressure"] == 2
    assert (day_of_data["ts"] >= pd.Timestamp(DAY.start)).all()
    assert (day_of_data["ts"] < pd.Timestamp(DAY.end)).all()


def test_values_are_plausible_and_valid_records(day_of_data: pd.DataFrame) -> None:
    assert implausible_values(day_of_data) == {}
    sparse = day_of_data[~day_of_data["data_type"].isin(["heart_rate", "steps", "rr_intervals"])]
    assert len(list(records_from_batch(sparse))) == len(sparse)  # every rule re-checked


def test_heart_rate_every_one_to_five_seconds_with_a_day_night_rhythm(
    day_of_data: pd.DataFrame,
) -> None:
    sim = source()
    for user in sim.discover_users():
        hr = day_of_data[
            (day_of_data["user_id"] == user.user_id) & (day_of_data["data_type"] == "heart_rate")
        ]
        steps = hr["ts"].diff().dropna().dt.total_seconds().unique()
        assert len(steps) == 1 and 1 <= steps[0] <= 5
        local_hour = hr["ts"].dt.tz_convert(user.timezone).dt.hour
        night = hr.loc[local_hour.between(1, 4), "value"].mean()
        afternoon = hr.loc[local_hour.between(13, 16), "value"].mean()
        assert afternoon > night + 5, user.user_id


def test_rr_intervals_are_consistent_with_the_heart_rate(day_of_data: pd.DataFrame) -> None:
    for user_id, rows in day_of_data.groupby("user_id"):
        rr = rows[rows["data_type"] == "rr_intervals"]
        hr = rows[rows["data_type"] == "heart_rate"]
        around = hr[(hr["ts"] >= rr["ts"].min()) & (hr["ts"] <= rr["ts"].max())]
        assert len(rr) > 200
        assert abs(60_000 / rr["value"].mean() - around["value"].mean()) < 12, user_id
        # RR sessions are back-to-back beats: consecutive stamps are one interval apart.
        gaps = rr["ts"].diff().dropna().dt.total_seconds().to_numpy() * 1000
        np.testing.assert_allclose(gaps, rr["value"].to_numpy()[1:], atol=1)


def test_ecg_is_30_seconds_at_250_or_500_hz_with_its_heart_rate(day_of_data: pd.DataFrame):
    ecg = day_of_data[day_of_data["data_type"] == "ecg"]
    assert len(ecg) == 3
    for row in ecg.itertuples():
        assert row.sampling_rate_hz in (250.0, 500.0)
        assert len(row.samples) == 30 * row.sampling_rate_hz
        assert row.duration_s == 30.0
        assert 500 < max(row.samples) < 2000  # an R wave of about a millivolt, in microvolts
    assert recordings_without_heart_rate(day_of_data) == []


def test_any_window_gives_the_same_records() -> None:
    user = source().discover_users()[1]
    kinds = [HealthDataType.HEART_RATE, HealthDataType.STEPS]
    start = datetime(2025, 1, 5, 12, 17, 3, tzinfo=UTC)
    whole = source().fetch(user, kinds, DateRange(start, start + timedelta(hours=3)), batch_size=1)
    first = source().fetch(user, kinds, DateRange(start, start + timedelta(hours=2)), batch_size=1)
    second = source().fetch(
        user, kinds, DateRange(start + timedelta(hours=1), start + timedelta(hours=3)), batch_size=1
    )
    merged = (
        pd.concat([first, second])
        .drop_duplicates(["data_type", "ts"])
        .sort_values(["data_type", "ts"], ignore_index=True)
    )
    pd.testing.assert_frame_equal(merged, whole.sort_values(["data_type", "ts"], ignore_index=True))
    other_seed = source(seed=8).fetch(
        user, kinds, DateRange(start, start + timedelta(hours=1)), batch_size=1
    )
    assert not np.array_equal(other_seed["value"].to_numpy()[:100], whole["value"].to_numpy()[:100])


def test_nothing_after_the_simulators_clock() -> None:
    now = datetime(2025, 1, 5, 10, 30, tzinfo=UTC)
    user = source().discover_users()[0]
    batch = source(now=now).fetch(user, [HealthDataType.HEART_RATE], DAY, batch_size=1000)
    assert batch["ts"].max() < pd.Timestamp(now)
    assert batch["ts"].max() >= pd.Timestamp(now) - pd.Timedelta(seconds=5)
    later = DateRange(now + timedelta(hours=1), now + timedelta(hours=2))
    assert source(now=now).fetch(user, list(HealthDataType), later, batch_size=1).empty


def test_one_heart_rate_sample_rate_for_everyone_when_set() -> None:
    """OHX_SIMULATED_HR_HZ (scripts/bench uses 1): every person's heart rate at that rate, the
    other types and the values' rhythm as without it."""
    per_profile = source(5).fetch(source(5).discover_users()[0], [HealthDataType.HEART_RATE], DAY)
    for hz, per_day in ((1, 86_400), (0.5, 43_200), (4, 345_600)):
        sim = SimulatedSource(5, clock=lambda: NOW, hr_hz=hz)
        for user in sim.discover_users():
            rows = sim.fetch(user, list(HealthDataType), DAY)
            heart = rows[rows["data_type"] == "heart_rate"]
            assert len(heart) == per_day
            steps = np.diff(heart["ts"].dt.as_unit("us").astype("int64").to_numpy())
            assert set(steps.tolist()) == {round(1_000_000 / hz)}
            assert implausible_values(rows) == {}
    assert len(per_profile) < 86_400  # unset: the profile's own 1-5 s


def test_the_rate_setting_reaches_the_source_and_rejects_what_it_cannot_do() -> None:
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.core.errors import ConfigError
    from ohx_dagster.definitions import build_definitions

    assert Settings.from_env({}).simulated_hr_hz is None
    settings = Settings.from_env({"OHX_SIMULATED_HR_HZ": "1", "OHX_HOME": "/tmp/ohx-hz"})
    resources = build_definitions(settings).resources
    assert resources["sources"].simulated_hr_hz == 1.0
    source_ = resources["sources"].get("simulated")
    assert source_.reader.hr_period_us == 1_000_000
    for text in ("fast", "0", "-1", "3", "2000"):
        with pytest.raises(ConfigError) as failed:
            Settings.from_env({"OHX_SIMULATED_HR_HZ": text})
        assert "OHX_SIMULATED_HR_HZ" in str(failed.value) and "\n" not in str(failed.value)


def test_hrv_readings_are_the_sdnn_and_rmssd_of_the_nights_rr_session(day_of_data) -> None:
    """Each night's two HRV readings are exactly the SDNN and the RMSSD of that night's stored RR
    intervals, and the FHIR face keeps them apart: SDNN is LOINC 80404-7, RMSSD this project's
    own code, never 80404-7."""
    from ohx_dagster.core.models import HealthSyncConfig
    from ohx_dagster.core.times import to_us
    from ohx_dagster.fhir.measurements import measurement_observation

    for user_id, person in day_of_data.groupby("user_id"):
        rr = person[person["data_type"] == "rr_intervals"]["value"].to_numpy()
        assert rr.size > 100, user_id
        sdnn = person[person["data_type"] == "hrv_sdnn"]
        rmssd = person[person["data_type"] == "hrv_rmssd"]
        assert len(sdnn) == len(rmssd) == 1, user_id
        assert sdnn["value"].iloc[0] == round(float(np.std(rr, ddof=1)), 1)
        assert rmssd["value"].iloc[0] == round(float(np.sqrt(np.mean(np.diff(rr) ** 2))), 1)
        assert sdnn["value"].iloc[0] != rmssd["value"].iloc[0]
        config = HealthSyncConfig(user_id=str(user_id), provider="simulated", fhir_patient_id="p")
        codings = {}
        for row in (sdnn, rmssd):
            record = row.iloc[0].to_dict() | {"ts_us": to_us(row["ts"].iloc[0]), "diastolic": None}
            resource = measurement_observation(record, config)
            codings[record["data_type"]] = resource["code"]["coding"]
            assert resource["valueQuantity"]["code"] == "ms"
        assert codings["hrv_sdnn"][0]["system"] == "http://loinc.org"
        assert codings["hrv_sdnn"][0]["code"] == "80404-7"
        assert all(c["code"] != "80404-7" for c in codings["hrv_rmssd"])
        assert codings["hrv_rmssd"][0]["system"] == "urn:ohx:fhir:heart-rate-variability"


def test_glucose_is_a_cgms_five_minute_readings_and_two_finger_sticks(day_of_data) -> None:
    """Every simulated person wears a CGM (a whole mg/dL reading every 5 minutes, in its range,
    higher after each meal than before breakfast) and pricks a finger twice a day; the FHIR face
    codes them as the CGM IG and US Core do (99504-3 in interstitial fluid, 2339-0 in blood)."""
    from ohx_dagster.core.models import HealthSyncConfig
    from ohx_dagster.core.times import to_us
    from ohx_dagster.fhir.measurements import measurement_observation

    for user_id, person in day_of_data.groupby("user_id"):
        cgm = person[person["data_type"] == "interstitial_glucose"].sort_values("ts")
        assert len(cgm) == 288, user_id  # the UTC day, every 5 minutes
        assert (cgm["ts"].diff().dropna() == pd.Timedelta(minutes=5)).all()
        values = cgm["value"].to_numpy()
        assert (values == values.round()).all() and values.min() >= 40 and values.max() <= 400
        assert set(cgm["unit"]) == {"mg/dL"} and cgm["device_id"].str.startswith("sim-cgm").all()
        zone = source().profiles[str(user_id)].timezone
        local = cgm["ts"].dt.tz_convert(zone)
        hour = local.dt.hour + local.dt.minute / 60
        fasting = values[((hour >= 5) & (hour < 7)).to_numpy()].mean()
        after_lunch = values[((hour >= 13) & (hour < 13.75)).to_numpy()].mean()
        assert after_lunch > fasting + 20, user_id
        meters = person[person["data_type"] == "blood_glucose"]
        assert len(meters) == 2, user_id
        assert implausible_values(person) == {}
        config = HealthSyncConfig(user_id=str(user_id), provider="simulated", fhir_patient_id="p")
        row = meters.iloc[0].to_dict()
        resource = measurement_observation(
            row | {"ts_us": to_us(row["ts"]), "diastolic": None}, config
        )
        assert resource["code"]["coding"][0] == {
            "system": "http://loinc.org",
            "code": "2339-0",
            "display": "Glucose [Mass/volume] in Blood",
        }
        assert resource["category"][0]["coding"][0]["code"] == "laboratory"
        assert resource["valueQuantity"]["code"] == "mg/dL"
        assert resource["valueQuantity"]["value"] == row["value"]
