"""A person's local calendar days and hours: the unit of every daily aggregate and of publishing.

Day partition D publishes, for each person, their local day D: from the midnight that ended their
day D-1 to the midnight that ends day D, each in the zone that day was lived in
(`HealthSyncConfig.zone_on`). So:

- on a daylight-saving change a day has 23 or 25 hours (23.5 or 24.5 on Lord Howe Island), and a
  zone 30 or 45 minutes off UTC (Asia/Kolkata, Asia/Kathmandu, Pacific/Chatham) has days and
  hours that do not begin on a UTC hour;
- when the zone changes between D-1 and D (a move, a trip, a corrected setting), day D begins
  where D-1 ended: it is shorter or longer than usual, and no instant belongs to two days or to
  none. The days tile time for every person, whatever their zone history.

Where a provider dates each record with the offset it was taken at (`RECORD_OFFSETS`: Google
Health's readings, Oura's daily summaries, Withings' measures, Dexcom's readings from its apps,
and the nights and workouts of Oura, Withings and Google Health, stamped at their end with its
offset), that offset says the record's local day and hour, whatever the person's zone setting:
a weigh-in at 23:30-05:00 is on that day even for a person whose setting still says UTC. Each
record has one offset, so it is still in exactly one day and one hour. Other records (Oura's
heart rate is UTC only; Withings' intraday series, Dexcom's receivers and every export carry no
offset of their own) follow the zone history.

Worked example (docs/sync.md): a person in America/New_York, day 2026-11-20, is
[2026-11-20T05:00Z, 2026-11-21T05:00Z): nineteen hours of UTC day 20 and five of UTC day 21.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from ohx_dagster.core.models import HealthSyncConfig, zone_name_on
from ohx_dagster.core.times import DAY_US, HOUR_US, from_us, to_us

# Every UTC offset and every daylight-saving change on Earth falls on a quarter hour.
QUARTER_HOUR_US: Final = HOUR_US // 4
ONE_DAY: Final = timedelta(days=1)
MINUTE_US: Final = 60_000_000
EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()

# Types whose every record the provider dates with the offset it was taken at (each provider's
# SOURCE.md): Google Health's samples and intervals (`sampleTime.utcOffset`,
# `interval.startUtcOffset`; its daily types carry a date alone and follow the zone history), Oura's
# daily summaries, sleep HRV samples (`timestamp` with its offset) and sleep periods
# (`bedtime_end` with its offset), Withings' getmeas
# measures (the answer's `timezone`), Dexcom's glucose readings from its apps (`displayTime`
# with its offset; a receiver's reading has none and follows the zone history, as `own` allows).
# Heart rate from Oura (UTC only) and Withings (intraday, no zone) is not here.
RECORD_OFFSETS: Final[dict[str, frozenset[str]]] = {
    "dexcom": frozenset({"interstitial_glucose"}),
    "google_health": frozenset(
        {"heart_rate", "steps", "weight", "spo2", "blood_glucose", "sleep", "workout"}
    ),
    "oura": frozenset({"steps", "spo2", "hrv_rmssd", "sleep", "workout"}),
    "withings": frozenset({"weight", "blood_pressure", "spo2", "temperature", "sleep", "workout"}),
}


@dataclass(frozen=True, slots=True)
class Calendar:
    """The zones a person lived in: `changes` are (first day, zone) in order, the last one still
    in force; none: `timezone` always."""

    timezone: str
    changes: tuple[tuple[str, str], ...] = ()
    # The types whose records carry their own offset at this person's provider (RECORD_OFFSETS).
    own_offsets: frozenset[str] = frozenset()

    @classmethod
    def of(cls, config: HealthSyncConfig | ZoneInfo | Calendar) -> Calendar:
        if isinstance(config, Calendar):
            return config
        if isinstance(config, ZoneInfo):
            return cls(str(config.key))
        own = RECORD_OFFSETS.get(config.provider, frozenset())
        return cls(config.timezone, config.zone_changes, own)

    def by_zone(self) -> Calendar:
        """This calendar without records' own offsets: the zone history alone."""
        return Calendar(self.timezone, self.changes) if self.own_offsets else self

    def zone_on(self, day: date) -> ZoneInfo:
        return ZoneInfo(zone_name_on(self.timezone, self.changes, day))

    def day_window(self, day: date) -> tuple[int, int]:
        """Local day `day` as UTC microseconds [start, end)."""
        return _day_window(self, day)

    def hour_bounds(self, day: date) -> np.ndarray:
        """The local hours of day `day` as UTC microseconds: bounds[i] .. bounds[i + 1] is one
        hour of the wall clock (a 25-hour day has 26 bounds; a half-hour DST change gives a
        half hour)."""
        return _hour_bounds(self, day)

    def offset_min(self, moment_us: int, day: date) -> int:
        """The UTC offset, in minutes, a moment of day `day` is written with."""
        offset = from_us(moment_us).astimezone(self.zone_on(day)).utcoffset()
        return int(offset.total_seconds() // 60) if offset is not None else 0

    def day_of(self, moment_us: int) -> date:
        """The local day an instant belongs to."""
        guess = from_us(moment_us).date()
        for day in (guess - ONE_DAY, guess, guess + ONE_DAY, guess + 2 * ONE_DAY):
            start, end = self.day_window(day)
            if start <= moment_us < end:
                return day
        raise AssertionError(f"no local day holds {moment_us}")  # the days tile time

    def days_spanned(self, start_us: int, end_us: int) -> list[date]:
        """Every local day that holds an instant of [start, end)."""
        if end_us <= start_us:
            return []
        first, last = self.day_of(start_us), self.day_of(end_us - 1)
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    def days_of(self, ts_us: np.ndarray) -> np.ndarray:
        """The local day of each instant, as date ordinals (int64)."""
        if not ts_us.size:
            return np.zeros(0, dtype="int64")
        first = self.day_of(int(ts_us.min()))
        last = self.day_of(int(ts_us.max()))
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        starts = np.array([self.day_window(d)[0] for d in days], dtype="int64")
        position = np.searchsorted(starts, ts_us, side="right") - 1
        return first.toordinal() + position.astype("int64")

    def hours_of(self, ts_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of the local hour of each instant, as UTC microseconds."""
        if not ts_us.size:
            empty = np.zeros(0, dtype="int64")
            return empty, empty
        days = self.days_spanned(int(ts_us.min()), int(ts_us.max()) + 1)
        bounds = np.unique(np.concatenate([self.hour_bounds(d) for d in days]))
        at = np.searchsorted(bounds, ts_us, side="right") - 1
        return bounds[at], bounds[at + 1]

    # -- records: their own offset where the provider gives one, else the zone history --------

    def own(self, data_type: str, offsets_min: np.ndarray) -> np.ndarray:
        """Which records of this type are dated by their own offset (`offsets_min` as float,
        NaN where a record has none)."""
        if data_type not in self.own_offsets:
            return np.zeros(offsets_min.shape, dtype=bool)
        return ~np.isnan(offsets_min)

    def record_days(self, data_type: str, ts_us: np.ndarray, offsets_min: np.ndarray) -> np.ndarray:
        """The local day of each record (date ordinals)."""
        own = self.own(data_type, offsets_min)
        days = np.zeros(ts_us.shape, dtype="int64")
        if own.any():
            days[own] = own_days(ts_us[own], offsets_min[own])
        if not own.all():
            days[~own] = self.days_of(ts_us[~own])
        return days

    def in_day(
        self, data_type: str, ts_us: np.ndarray, offsets_min: np.ndarray, day: date
    ) -> np.ndarray:
        """Which records are in local day `day`."""
        if data_type not in self.own_offsets:
            start, end = self.day_window(day)
            return (ts_us >= start) & (ts_us < end)
        return self.record_days(data_type, ts_us, offsets_min) == day.toordinal()

    def record_hours(
        self, data_type: str, ts_us: np.ndarray, offsets_min: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, offset in minutes) of each record's local hour."""
        own = self.own(data_type, offsets_min)
        starts, ends = self.hours_of(ts_us) if not own.all() else (ts_us.copy(), ts_us.copy())
        offsets = np.zeros(ts_us.shape, dtype="int64")
        if (~own).any():
            # One offset per local hour, not per record: a day has about 24 of them.
            hours, each = np.unique(starts[~own], return_inverse=True)
            days = [date.fromordinal(d) for d in self.days_of(hours).tolist()]
            found = [self.offset_min(s, d) for s, d in zip(hours.tolist(), days, strict=True)]
            offsets[~own] = np.asarray(found, dtype="int64")[each]
        if own.any():
            shift = offsets_min[own].astype("int64") * MINUTE_US
            local = ts_us[own] + shift
            starts[own] = local - local % HOUR_US - shift
            ends[own] = starts[own] + HOUR_US
            offsets[own] = offsets_min[own].astype("int64")
        return starts, ends, offsets


def own_days(ts_us: np.ndarray, offsets_min: np.ndarray) -> np.ndarray:
    """The local date (ordinal) of each instant on the clock of its own offset."""
    local = ts_us + offsets_min.astype("int64") * MINUTE_US
    return local // DAY_US + EPOCH_ORDINAL


def own_day_bounds(day: date, offset_min: int) -> tuple[int, int]:
    """Day `day` on a clock `offset_min` off UTC, as UTC microseconds [start, end)."""
    start = (day.toordinal() - EPOCH_ORDINAL) * DAY_US - offset_min * MINUTE_US
    return start, start + DAY_US


def any_zone_days(start_us: int, end_us: int) -> list[date]:
    """Every date some clock on Earth (UTC-12 .. UTC+14) shows during [start, end)."""
    first = from_us(start_us - 12 * HOUR_US).date()
    last = from_us(max(end_us, start_us + 1) - 1 + 14 * HOUR_US).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def midnight_us(day: date, zone: ZoneInfo) -> int:
    """The first instant of `day` on the zone's wall clock (a day a DST gap starts at 00:00
    begins at the first wall time that exists)."""
    return to_us(datetime.combine(day, time(), tzinfo=zone))


@lru_cache(maxsize=200_000)
def _day_window(calendar: Calendar, day: date) -> tuple[int, int]:
    return midnight_us(day, calendar.zone_on(day - ONE_DAY)), midnight_us(
        day + ONE_DAY, calendar.zone_on(day)
    )


@lru_cache(maxsize=20_000)
def _hour_bounds(calendar: Calendar, day: date) -> np.ndarray:
    start, end = _day_window(calendar, day)
    zone = calendar.zone_on(day)
    instants = np.arange(start, end, QUARTER_HOUR_US, dtype="int64")
    # Wall-clock hour of each quarter hour, told apart by its offset (the repeated 01:00 of a
    # 25-hour day is two hours).
    keys = []
    for moment in instants.tolist():
        local = from_us(moment).astimezone(zone)
        keys.append((local.date(), local.hour, local.utcoffset()))
    changes = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    bounds = np.array([start, *instants[changes].tolist(), end], dtype="int64")
    bounds.flags.writeable = False
    return bounds
