"""The embedded simulated provider: deterministic, physiologically plausible data for every type.

Each (user, type, UTC hour) is generated from its own seed, so any window, fetched in any order or
overlapping any other, yields exactly the same records: the simulator behaves like a provider API
with a fixed history. Nothing is returned after `now` (the simulator's clock).

Per user: heart rate every 1-5 s (everyone at `hr_hz`, OHX_SIMULATED_HR_HZ, when set) with a
day/night rhythm and activity bouts, steps per minute during waking hours, a nightly 5-minute
RR-interval session consistent with the heart rate, one 30 s ECG a day at 250-500 Hz with its heart
rate, blood pressure twice a day, weight and temperature each morning, SpO2 hourly at night,
respiratory rate every 5 minutes from midnight to 6, the SDNN and RMSSD of the nightly RR
session, a night's sleep with its stages ending between 6 and 7 in the morning, and an evening
run ending between 18 and 19.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd

from ohx_dagster.core.models import (
    AggregationLevel,
    DateRange,
    HealthDataType,
    HealthSyncConfig,
    SyncFrequency,
)
from ohx_dagster.core.records import concat, empty_batch, make_batch
from ohx_dagster.core.sessions import Stage
from ohx_dagster.core.times import HOUR_US, to_us

NAME: Final = "simulated"
HOUR: Final = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class SimulatedProfile:
    """What makes one simulated person different from another."""

    user_id: str
    timezone: str
    resting_hr: float
    hr_interval_s: int
    ecg_rate_hz: int
    weight_kg: float
    aggregation: AggregationLevel
    sync_frequency: SyncFrequency


_ZONES: Final = ("Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "UTC", "Pacific/Auckland")
_AGGREGATIONS: Final = (
    AggregationLevel.HOURLY,
    AggregationLevel.DAILY,
    AggregationLevel.INDIVIDUAL,
)
_FREQUENCIES: Final = (SyncFrequency.REALTIME, SyncFrequency.HOURLY, SyncFrequency.DAILY)


def profiles(count: int, seed: int = 7) -> list[SimulatedProfile]:
    rng = np.random.default_rng(seed)
    return [
        SimulatedProfile(
            user_id=f"sim-{i + 1:03d}",
            timezone=_ZONES[i % len(_ZONES)],
            resting_hr=float(rng.uniform(52, 72)),
            hr_interval_s=int(rng.choice([1, 2, 5, 5, 5])),
            ecg_rate_hz=int(rng.choice([250, 500])),
            weight_kg=float(rng.uniform(55, 100)),
            aggregation=_AGGREGATIONS[i % len(_AGGREGATIONS)],
            sync_frequency=_FREQUENCIES[i % len(_FREQUENCIES)],
        )
        for i in range(count)
    ]


def _rng(seed: int, user_id: str, data_type: str, hour_us: int) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}|{user_id}|{data_type}|{hour_us}".encode(), digest_size=8)
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def _local_hours(profile: SimulatedProfile, stamps: pd.DatetimeIndex) -> np.ndarray:
    """Local hour of day with minutes and seconds as its fraction (the wall clock converted
    once; each of pandas' hour, minute and second fields would convert it again)."""
    wall = stamps.tz_convert(profile.timezone).tz_localize(None).as_unit("us").asi8
    seconds = (wall // 1_000_000) % 86_400
    return seconds // 3600 + (seconds // 60 % 60) / 60.0 + (seconds % 60) / 3600.0


def _local_clocks(profile: SimulatedProfile, hours: np.ndarray) -> list[tuple[int, int]]:
    """(local hour of day, UTC offset in minutes) at the start of each UTC hour, converted at
    once (per hour and type, the conversions were a third of a fetch)."""
    if len(hours) == 0:
        return []
    utc = pd.DatetimeIndex(hours).as_unit("us")
    wall = utc.tz_convert(profile.timezone).tz_localize(None).asi8
    offsets = (wall - utc.tz_localize(None).asi8) // 60_000_000
    local_hours = (wall // 3_600_000_000) % 24
    return list(zip(local_hours.tolist(), offsets.tolist(), strict=True))


def _heart_rate_at(
    profile: SimulatedProfile, local_hour: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Resting rate, higher by day (circadian), with a slow random walk and rare activity bouts."""
    circadian = 8.0 * np.clip(np.sin((local_hour - 7.0) / 24.0 * 2 * np.pi) + 0.3, -1.0, 1.0)
    walk = np.cumsum(rng.normal(0.0, 0.25, local_hour.size))
    walk -= np.linspace(0.0, walk[-1] if walk.size else 0.0, local_hour.size)
    awake = (local_hour >= 7) & (local_hour < 22)
    bout = (
        awake * 25.0 * (rng.random() < 0.25) * np.exp(-((np.linspace(-2, 2, local_hour.size)) ** 2))
    )
    return np.clip(profile.resting_hr + circadian + walk + bout, 40.0, 185.0).round(0)


def _ecg_waveform(rate_hz: int, seconds: float, bpm: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic lead-I trace in microvolts: P, QRS and T waves as Gaussians at each beat."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    beat = 60.0 / bpm
    phase = np.mod(t, beat)
    wave = (
        120 * np.exp(-(((phase - 0.16 * beat) / 0.025) ** 2))
        + 1100 * np.exp(-(((phase - 0.30 * beat) / 0.010) ** 2))
        - 180 * np.exp(-(((phase - 0.33 * beat) / 0.008) ** 2))
        + 300 * np.exp(-(((phase - 0.55 * beat) / 0.045) ** 2))
    )
    return (wave + rng.normal(0.0, 15.0, t.size)).round(1)


# The local hours in which each type has data (the branches of `_hour` say the same).
_MEASURED_AT: Final[dict[HealthDataType, Callable[[int], bool]]] = {
    HealthDataType.HEART_RATE: lambda hour: True,
    HealthDataType.STEPS: lambda hour: 7 <= hour < 23,
    HealthDataType.RR_INTERVALS: lambda hour: hour == 3,
    HealthDataType.ECG: lambda hour: hour == 9,
    HealthDataType.BLOOD_PRESSURE: lambda hour: hour in (7, 20),
    HealthDataType.WEIGHT: lambda hour: hour == 7,
    HealthDataType.TEMPERATURE: lambda hour: hour == 7,
    HealthDataType.SPO2: lambda hour: hour < 6 or hour >= 23,
    HealthDataType.RESPIRATORY_RATE: lambda hour: hour < 6,
    HealthDataType.HRV_SDNN: lambda hour: hour == 3,
    HealthDataType.HRV_RMSSD: lambda hour: hour == 3,
    HealthDataType.INTERSTITIAL_GLUCOSE: lambda hour: True,
    HealthDataType.BLOOD_GLUCOSE: lambda hour: hour in (7, 19),
    HealthDataType.SLEEP: lambda hour: hour == 6,
    HealthDataType.WORKOUT: lambda hour: hour == 18,
}
# Local hours of the simulated meals: glucose rises after each and falls back within hours.
_MEALS: Final = (7.5, 12.5, 18.5)


def _glucose_at(local_hour: np.ndarray) -> np.ndarray:
    """mg/dL, without noise: fasting 95, a rise of 45 peaking 45 minutes after each meal and
    gone three hours later (a smooth function of the local time, so hours join up)."""
    level = np.full(local_hour.shape, 95.0)
    for meal in _MEALS:
        since = (local_hour - meal) % 24.0
        level += 45.0 * (since / 0.75) * np.exp(1.0 - since / 0.75) * (since < 4.0)
    return level


def _rr_session(profile: SimulatedProfile, hour: datetime, rng: np.random.Generator) -> pd.Series:
    """A nightly 5-minute HRV session: RR = 60000 / HR with respiratory sinus arrhythmia."""
    bpm = profile.resting_hr - 4.0
    count = int(300 * bpm / 60)
    base = 60_000.0 / bpm
    rsa = 40.0 * np.sin(np.arange(count) * 2 * np.pi / 4.5)
    rr = (base + rsa + rng.normal(0, 15, count)).round(0)
    stamps = (
        pd.Timestamp(hour) + pd.Timedelta(minutes=10) + pd.to_timedelta(np.cumsum(rr), unit="ms")
    )
    return pd.Series(rr, index=stamps)


def _night(rng: np.random.Generator) -> tuple[float, list[float]]:
    """A night's length in seconds and its stages as flattened (start, end, stage) triples:
    about 15 minutes falling asleep, then 90-minute cycles of light, deep and REM sleep (deep
    sleep shortening and REM lengthening through the night), now and then a few minutes awake."""
    length = float(round(rng.normal(7.5, 0.5) * 3600 / 30) * 30)
    stages: list[float] = []
    at = float(round(rng.uniform(5, 25)) * 60)
    stages += [0.0, at, float(Stage.AWAKE)]
    cycle = 0
    while at < length - 600:
        deep = max(0.0, 35 - 9 * cycle) * 60
        rem = min(40.0, 8 + 8 * cycle) * 60
        parts = [
            (Stage.LIGHT, 25 * 60),
            (Stage.DEEP, deep),
            (Stage.LIGHT, 20 * 60),
            (Stage.REM, rem),
        ]
        if rng.random() < 0.4:
            parts.append((Stage.AWAKE, float(round(rng.uniform(1, 6)) * 60)))
        for stage, seconds in parts:
            end = min(at + seconds, length)
            if end > at:
                stages += [at, end, float(stage)]
                at = end
        cycle += 1
    if at < length:
        stages += [at, length, float(Stage.AWAKE)]
    return length, stages


def _one_batch(parts: list[dict[str, Any]]) -> pd.DataFrame:
    """One type's hours as one batch: the rows the hours' own batches would give, in order, built
    and validated once (a batch per hour was most of a fetch's time)."""
    if not parts:
        return empty_batch()
    first = parts[0]
    stamps = [pd.DatetimeIndex(part["timestamps"]) for part in parts]
    sizes = [len(index) for index in stamps]
    values = (
        None
        if first["values"] is None
        else np.concatenate([np.asarray(part["values"], dtype="float64") for part in parts])
    )
    extra: dict[str, Any] = {}
    if "diastolic" in first:
        extra["diastolic"] = np.concatenate([np.asarray(p["diastolic"], "float64") for p in parts])
    if "samples" in first:
        extra["samples"] = [wave for part in parts for wave in part["samples"]]
    if "context" in first:
        extra["context"] = np.concatenate(
            [
                np.full(len(i), p["context"], dtype=object)
                for p, i in zip(parts, stamps, strict=True)
            ]
        )
    for name in ("duration_s", "sampling_rate_hz"):
        if name in first:
            extra[name] = (
                np.concatenate([np.broadcast_to(np.asarray(p[name], "float64"), len(i))
                                for p, i in zip(parts, stamps, strict=True)])
            )  # fmt: skip
    return make_batch(
        provider=first["provider"],
        user_id=first["user_id"],
        data_type=first["data_type"],
        timestamps=stamps[0].append(stamps[1:]) if len(stamps) > 1 else stamps[0],
        values=values,
        unit=first["unit"],
        device_id=first["device_id"],
        utc_offset_min=np.concatenate(
            [
                np.broadcast_to(np.asarray(part["utc_offset_min"]), size)
                for part, size in zip(parts, sizes, strict=True)
            ]
        ),
        **extra,
    )


class SimulatedSource:
    """Deterministic simulated provider (the embedded default)."""

    name = NAME

    def __init__(
        self,
        user_count: int = 3,
        *,
        seed: int = 7,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        hr_hz: float | None = None,
    ) -> None:
        self.seed = seed
        self.clock = clock
        # Heart-rate sample period of everyone (None: each profile's own 1-5 s).
        self.hr_period_us = None if hr_hz is None else round(1_000_000 / hr_hz)
        self.profiles = {p.user_id: p for p in profiles(user_count, seed)}

    def discover_users(self) -> list[HealthSyncConfig]:
        return [
            HealthSyncConfig(
                user_id=p.user_id,
                provider=NAME,
                aggregation=p.aggregation,
                sync_frequency=p.sync_frequency,
                timezone=p.timezone,
            )
            for p in self.profiles.values()
        ]

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int = 1000,
    ) -> pd.DataFrame:
        profile = self.profiles.get(user.user_id)
        end = min(window.end, self.clock())
        if profile is None or end <= window.start:
            return empty_batch()
        first_hour = window.start.replace(minute=0, second=0, microsecond=0)
        hours = pd.date_range(first_hour, end, freq="h", inclusive="left").to_pydatetime()
        clocks = _local_clocks(profile, hours)
        batches = []
        for kind in sorted(data_types):
            parts: Sequence[dict[str, Any] | None]
            if HealthDataType(kind) is HealthDataType.HEART_RATE:
                parts = self._heart_rate_hours(profile, hours, [offset for _, offset in clocks])
            else:
                measured = _MEASURED_AT[HealthDataType(kind)]
                parts = [
                    self._hour(profile, HealthDataType(kind), hour, local_hour, offset)
                    for hour, (local_hour, offset) in zip(hours, clocks, strict=True)
                    if measured(local_hour)
                ]
            batches.append(_one_batch([part for part in parts if part is not None]))
        batch = concat(batches)
        if batch.empty:
            return batch
        inside = (batch["ts"] >= window.start) & (batch["ts"] < end)
        return batch[inside].reset_index(drop=True)

    def _heart_rate_hours(
        self, profile: SimulatedProfile, hours: np.ndarray, offsets: Sequence[int]
    ) -> list[dict[str, Any]]:
        """make_batch's arguments for the hours of heart rate, as one part: the instants and their
        local times computed at once (per hour, that was most of a fetch's time), each hour's
        values from the hour's own random stream, as before."""
        if len(hours) == 0:
            return []
        period_us = self.hr_period_us or profile.hr_interval_s * 1_000_000
        per_hour = HOUR_US // period_us
        starts = np.array([to_us(hour) for hour in hours], dtype="int64")
        instants = (starts[:, None] + np.arange(per_hour, dtype="int64") * period_us).ravel()
        stamps = pd.DatetimeIndex(instants.astype("datetime64[us]")).tz_localize(UTC)
        local_hours = _local_hours(profile, stamps).reshape(len(hours), per_hour)
        kind = HealthDataType.HEART_RATE
        values = [
            _heart_rate_at(profile, local, _rng(self.seed, profile.user_id, kind.value, start))
            for local, start in zip(local_hours, starts.tolist(), strict=True)
        ]
        return [
            {
                "provider": NAME,
                "user_id": profile.user_id,
                "data_type": kind,
                "utc_offset_min": np.repeat(offsets, per_hour),
                "timestamps": stamps,
                "values": np.concatenate(values),
                "unit": "/min",
                "device_id": f"sim-watch-{profile.user_id}",
            }
        ]

    def _hour(
        self,
        profile: SimulatedProfile,
        kind: HealthDataType,
        hour: datetime,
        local_hour: int,
        offset_min: int,
    ) -> dict[str, Any] | None:
        """make_batch's arguments for one hour of one type but heart rate (None: nothing that
        hour); `local_hour` and `offset_min`: the hour's start on the person's clock."""
        if not _MEASURED_AT[kind](local_hour):
            return None
        hour_us = to_us(hour)
        rng = _rng(self.seed, profile.user_id, kind.value, hour_us)
        common = {
            "provider": NAME,
            "user_id": profile.user_id,
            "data_type": kind,
            "utc_offset_min": offset_min,
        }
        watch = f"sim-watch-{profile.user_id}"

        if kind is HealthDataType.STEPS:
            if not 7 <= local_hour < 23:
                return None
            stamps = pd.date_range(hour, periods=60, freq="min")
            walking = rng.random(60) < 0.3
            values = np.where(
                walking, rng.poisson(95, 60), rng.poisson(3, 60) * (rng.random(60) < 0.2)
            )
            return dict(
                **common,
                timestamps=stamps,
                values=values,
                unit="{steps}",
                device_id=watch,
                duration_s=60.0,
            )

        if kind is HealthDataType.RR_INTERVALS:
            if local_hour != 3:
                return None
            session = _rr_session(profile, hour, rng)
            return dict(
                **common,
                timestamps=session.index,
                values=session.to_numpy(),
                unit="ms",
                device_id=watch,
            )

        if kind in (HealthDataType.HRV_SDNN, HealthDataType.HRV_RMSSD):
            # A statistic of that night's RR session (drawn again from its own seed), at its end:
            # SDNN, or RMSSD (the root mean square of successive differences).
            rr_rng = _rng(self.seed, profile.user_id, HealthDataType.RR_INTERVALS.value, hour_us)
            session = _rr_session(profile, hour, rr_rng)
            if kind is HealthDataType.HRV_SDNN:
                value = float(session.std(ddof=1))
            else:
                value = float(np.sqrt(np.mean(np.diff(session.to_numpy()) ** 2)))
            return dict(
                **common,
                timestamps=[session.index[-1]],
                values=[round(value, 1)],
                unit="ms",
                device_id=watch,
            )

        if kind is HealthDataType.RESPIRATORY_RATE:
            # Every 5 minutes of the night, as a watch estimates it during sleep.
            stamps = pd.date_range(hour, periods=12, freq="5min")
            values = np.clip(rng.normal(14.5, 1.2, 12), 8, 24).round(1)
            return dict(**common, timestamps=stamps, values=values, unit="/min", device_id=watch)

        if kind is HealthDataType.INTERSTITIAL_GLUCOSE:
            # A CGM's reading every 5 minutes, whole mg/dL as sensors report them.
            stamps = pd.date_range(hour, periods=12, freq="5min")
            level = _glucose_at(_local_hours(profile, stamps))
            values = np.clip(level + rng.normal(0.0, 4.0, 12), 40, 400).round(0)
            return dict(
                **common,
                timestamps=stamps,
                values=values,
                unit="mg/dL",
                device_id=f"sim-cgm-{profile.user_id}",
            )

        if kind is HealthDataType.BLOOD_GLUCOSE:
            # A finger stick before breakfast (7:20) and after dinner (19:20), read by a meter.
            stamp = pd.DatetimeIndex([pd.Timestamp(hour) + pd.Timedelta(minutes=20)])
            level = _glucose_at(_local_hours(profile, stamp))[0]
            return dict(
                **common,
                timestamps=stamp,
                values=[round(float(level + rng.normal(0.0, 6.0)))],
                unit="mg/dL",
                device_id=f"sim-meter-{profile.user_id}",
            )

        if kind is HealthDataType.SLEEP:
            # The night that ends between 6:00 and 6:59, stamped at its end (core/sessions.py).
            length, stages = _night(rng)
            woke = pd.Timestamp(hour) + pd.Timedelta(minutes=float(rng.uniform(0, 59)))
            woke = woke.floor("s")
            rows = np.asarray(stages).reshape(-1, 3)
            asleep = rows[rows[:, 2] != Stage.AWAKE]
            return dict(
                **common,
                timestamps=[woke],
                values=[float((asleep[:, 1] - asleep[:, 0]).sum())],
                unit="s",
                device_id=watch,
                duration_s=length,
                samples=[stages],
            )

        if kind is HealthDataType.WORKOUT:
            # An evening run that ends between 18:00 and 18:59, stamped at its end: 25 to 50
            # minutes at about 10 kcal and 160 m a minute, its heart rate from the person's rest.
            minutes = float(round(rng.uniform(25, 50)))
            ended = (pd.Timestamp(hour) + pd.Timedelta(minutes=float(rng.uniform(0, 59)))).floor(
                "s"
            )
            mean = round(profile.resting_hr + 75 + float(rng.normal(0, 5)))
            energy, metres = minutes * rng.uniform(9, 11), minutes * rng.uniform(140, 180)
            measures = [
                round(energy, 1),
                round(metres),
                float(mean),
                float(mean + rng.integers(10, 25)),
            ]
            return dict(
                **common,
                timestamps=[ended],
                values=[minutes],
                unit="min",
                device_id=watch,
                duration_s=minutes * 60 + float(round(rng.uniform(0, 120))),  # and a pause
                samples=[measures],
                context="running",
            )

        if kind is HealthDataType.ECG:
            if local_hour != 9:
                return None
            start = pd.Timestamp(hour) + pd.Timedelta(minutes=15)
            bpm = float(
                _heart_rate_at(profile, _local_hours(profile, pd.DatetimeIndex([start])), rng)[0]
            )
            wave = _ecg_waveform(profile.ecg_rate_hz, 30.0, bpm, rng)
            return dict(
                **common,
                timestamps=[start],
                values=None,
                unit="uV",
                device_id=watch,
                samples=[wave],
                sampling_rate_hz=float(profile.ecg_rate_hz),
                duration_s=30.0,
            )

        if kind is HealthDataType.BLOOD_PRESSURE:
            if local_hour not in (7, 20):
                return None
            systolic = round(float(rng.normal(122, 8)))
            diastolic = round(float(min(rng.normal(79, 6), systolic - 25)))
            return dict(
                **common,
                timestamps=[pd.Timestamp(hour) + pd.Timedelta(minutes=30)],
                values=[systolic],
                diastolic=[diastolic],
                unit="mm[Hg]",
                device_id=f"sim-cuff-{profile.user_id}",
            )

        if kind is HealthDataType.WEIGHT:
            if local_hour != 7:
                return None
            value = round(profile.weight_kg + float(rng.normal(0, 0.3)), 1)
            return dict(
                **common,
                timestamps=[pd.Timestamp(hour) + pd.Timedelta(minutes=2)],
                values=[value],
                unit="kg",
                device_id=f"sim-scale-{profile.user_id}",
            )

        if kind is HealthDataType.TEMPERATURE:
            if local_hour != 7:
                return None
            value = round(float(rng.normal(36.6, 0.2)), 2)
            return dict(
                **common,
                timestamps=[pd.Timestamp(hour) + pd.Timedelta(minutes=5)],
                values=[value],
                unit="Cel",
                device_id=f"sim-thermometer-{profile.user_id}",
            )

        if kind is HealthDataType.SPO2:
            if not (local_hour < 6 or local_hour >= 23):
                return None
            value = float(np.clip(round(float(rng.normal(96.5, 1.0))), 88, 100))
            return dict(
                **common,
                timestamps=[pd.Timestamp(hour) + pd.Timedelta(minutes=30)],
                values=[value],
                unit="%",
                device_id=watch,
            )

        raise AssertionError(f"unhandled data type {kind}")
