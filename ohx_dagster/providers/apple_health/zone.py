"""The user's IANA time zone, inferred from what an export says about time.

Daily aggregates are per local calendar day, so the zone must follow daylight saving time; an
export names no zone for the user, but it holds three kinds of evidence:

1. Every sample's date carries a UTC offset, so each sample is an (instant, offset) observation.
   A zone fits when its offset at every observed instant equals the observed offset: +0100 in
   January and +0200 in July fit Europe/Berlin and not a fixed UTC+1.
2. HKTimeZone metadata: the IANA zone a device or app recorded a sample in.
3. The export's locale ("de_DE"): the user's country, so Europe/Berlin before Europe/Paris when
   both fit.

The offsets are not always evidence: in the real export of ../shared/data every date carries
+0200, the offset of its ExportDate (2017-11-07 +0200), while its HKTimeZone metadata says
Asia/Jerusalem, which was at +0300 from March to October 2017. The Health app wrote every date
with the offset of the moment of export; the instants are right, the offsets are not the
sample's. So when every export.xml offset equals the ExportDate's, the offsets only say what the
zone's offset was at the export, and an HKTimeZone zone that agrees with that wins.

Choice, first that applies:
- an HKTimeZone zone that fits every observation;
- the export-stamped case above: an HKTimeZone zone whose offset at the export date matches (and
  that fits the ECG recordings' own dates);
- any zone that fits every observation, ranked: the locale's country (zone.tab order, most
  populous first), then tzdb's zonenow.tab representative of its region (Europe/Paris for
  central Europe), then zone1970.tab, then by name;
- no zone fits (travel, contradictory devices): a fixed-offset zone for the most common offset
  (Etc/GMT-2 is UTC+2), which ignores DST; the reason says so and names the closest zone.

Observations are reduced to one per (15-minute bin, offset): tz transitions fall on quarter
hours, so a bin's first instant decides for the bin. The export's parse reduces its samples so
as it reads them (export.py: the first instant and the count of each), so the evidence grows with
the quarter hours an export spans, never with its samples. A zone is tested at the ends of every run
of equal offsets first (cheap, rejects most), then at every bin.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
import pandas as pd

_BIN_US: Final = 15 * 60_000_000
_MINUTE_US: Final = 60_000_000
# tzdb's geographic areas; the others (Etc/, US/, SystemV/, ...) are aliases or fixed offsets.
AREAS: Final = (
    "Africa/",
    "America/",
    "Antarctica/",
    "Arctic/",
    "Asia/",
    "Atlantic/",
    "Australia/",
    "Europe/",
    "Indian/",
    "Pacific/",
)
_COUNTRY = re.compile(r"_([A-Z]{2})(?:$|[^A-Za-z])")


@dataclass(frozen=True)
class ZoneChoice:
    """The zone for HealthSyncConfig.timezone, and why, in one line the importer can print."""

    zone: str
    fixed: bool  # a fixed-offset fallback (no DST), not a zone the evidence fits
    reason: str
    candidates: tuple[str, ...] = ()  # every zone that fits all observations, best first


@dataclass
class ZoneEvidence:
    """What an export says about time (see the module docstring)."""

    xml_utc_us: np.ndarray  # export.xml samples: UTC instants in microseconds
    xml_offset_min: np.ndarray  # and the offsets their dates carried
    # How many samples each stands for (the parse's first of a (15-minute bin, offset)); None: 1.
    xml_count: np.ndarray | None = None
    other_utc_us: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    other_offset_min: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    export_date: tuple[int, int] | None = None  # ExportDate: UTC microseconds, offset minutes
    time_zones: Counter[str] = field(default_factory=Counter)  # HKTimeZone values
    locale: str = ""


def format_offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _instant(utc_us: int) -> str:
    return pd.Timestamp(int(utc_us), unit="us", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def zone_offsets(zone: str, utc_us: np.ndarray) -> np.ndarray:
    """The zone's UTC offset in minutes at each instant."""
    instants = pd.DatetimeIndex(utc_us.astype("datetime64[us]")).tz_localize("UTC")
    local = instants.tz_convert(ZoneInfo(zone)).tz_localize(None).as_unit("us").asi8
    return (local - utc_us) // _MINUTE_US


class Observations:
    """(instant, offset) pairs, one per 15-minute bin and offset, sorted by instant. `count`:
    how many samples each given pair stands for (default 1)."""

    def __init__(
        self, utc_us: np.ndarray, offset_min: np.ndarray, count: np.ndarray | None = None
    ) -> None:
        utc_us = np.asarray(utc_us, dtype="int64")
        offset_min = np.asarray(offset_min, dtype="int64")
        counts = np.ones(len(utc_us), dtype="int64") if count is None else np.asarray(count)
        self.count = int(counts.sum())
        key = (utc_us // _BIN_US) * 4096 + (offset_min + 2048)
        order = np.lexsort((utc_us, key))
        first = np.ones(len(order), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        keep = order[first]
        starts = np.flatnonzero(first)
        weights = (
            np.add.reduceat(counts[order], starts) if len(order) else np.zeros(0, dtype="int64")
        )
        by_time = np.argsort(utc_us[keep], kind="stable")
        self.utc_us = utc_us[keep][by_time]
        self.offset_min = offset_min[keep][by_time]
        self.weight = weights[by_time]  # samples each bin stands for
        # The first and last observation of every run of equal offsets.
        change = np.flatnonzero(np.diff(self.offset_min) != 0)
        last = max(len(self.utc_us) - 1, 0)
        self.ends = np.unique(np.concatenate([[0, last], change, change + 1])).astype("int64")

    def __len__(self) -> int:
        return len(self.utc_us)

    def fits(self, zone: str) -> bool:
        if not len(self):
            return True
        ends = self.ends
        if not np.array_equal(zone_offsets(zone, self.utc_us[ends]), self.offset_min[ends]):
            return False
        return bool(np.array_equal(zone_offsets(zone, self.utc_us), self.offset_min))

    def matched(self, zone: str) -> int:
        """How many samples the zone explains."""
        return int(self.weight[zone_offsets(zone, self.utc_us) == self.offset_min].sum())

    def other_offsets(self, zone: str) -> str:
        """The zone's own offsets where they differ from the observed ones: '5121 at +0300'."""
        theirs = zone_offsets(zone, self.utc_us)
        wrong = theirs != self.offset_min
        counts: Counter[int] = Counter()
        for offset, weight in zip(theirs[wrong].tolist(), self.weight[wrong].tolist(), strict=True):
            counts[offset] += weight
        return ", ".join(f"{n} at {format_offset(o)}" for o, n in sorted(counts.items()))

    def first_mismatch(self, zone: str) -> str:
        wrong = np.flatnonzero(zone_offsets(zone, self.utc_us) != self.offset_min)
        if not wrong.size:
            return ""
        i = int(wrong[0])
        return (
            f"{_instant(int(self.utc_us[i]))} says {format_offset(int(self.offset_min[i]))}, "
            f"{zone} {format_offset(int(zone_offsets(zone, self.utc_us[i : i + 1])[0]))}"
        )

    def describe(self) -> str:
        """'+0100 x120, +0200 x240 (2024-01-01..2024-10-27)'."""
        if not len(self):
            return "no timestamps"
        counts: Counter[int] = Counter()
        for offset, weight in zip(self.offset_min.tolist(), self.weight.tolist(), strict=True):
            counts[offset] += weight
        parts = ", ".join(f"{format_offset(o)} x{n}" for o, n in sorted(counts.items()))
        span = f"{_instant(int(self.utc_us[0]))[:10]}..{_instant(int(self.utc_us[-1]))[:10]}"
        return f"{parts} ({span})"


@cache
def zone_names() -> tuple[str, ...]:
    return tuple(sorted(z for z in available_timezones() if z.startswith(AREAS)))


def _tab(name: str) -> list[tuple[str, str]]:
    """(country codes, zone) rows of a tzdb table, from the pinned tzdata package."""
    text = resources.files("tzdata").joinpath("zoneinfo", name).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            columns = line.split("\t")
            rows.append((columns[0], columns[2]))
    return rows


@cache
def _rankings() -> tuple[dict[str, list[str]], dict[str, int], dict[str, int]]:
    by_country: dict[str, list[str]] = {}
    for countries, zone in _tab("zone.tab"):
        by_country.setdefault(countries, []).append(zone)
    now = {zone: i for i, (_, zone) in enumerate(_tab("zonenow.tab"))}
    z1970 = {zone: i for i, (_, zone) in enumerate(_tab("zone1970.tab"))}
    return by_country, now, z1970


def country_of(locale: str) -> str:
    found = _COUNTRY.search(locale)
    return found[1] if found else ""


def rank(zones: Iterable[str], time_zones: Counter[str], country: str) -> list[str]:
    by_country, now, z1970 = _rankings()
    local = by_country.get(country, [])
    last = 10**6

    def key(zone: str) -> tuple[int, int, int, int, str]:
        return (
            -time_zones.get(zone, 0),
            local.index(zone) if zone in local else last,
            now.get(zone, last),
            z1970.get(zone, last),
            zone,
        )

    return sorted(zones, key=key)


def _why(zone: str, time_zones: Counter[str], locale: str, country: str) -> str:
    by_country, now, _ = _rankings()
    if time_zones.get(zone):
        return f"named by HKTimeZone metadata ({time_zones[zone]} samples)"
    if zone in by_country.get(country, []):
        return f"a zone of the export's locale {locale}"
    if zone in now:
        return "tzdb's representative of its region (zonenow.tab)"
    return "first by name"


def is_zone(zone: str) -> bool:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def fixed_zone(minutes: int) -> str | None:
    """The Etc zone of a whole-hour offset (Etc/GMT-2 is UTC+2, POSIX signs), else None."""
    if minutes % 60 or not -12 <= minutes // 60 <= 14:
        return None
    hours = minutes // 60
    return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def infer_zone(evidence: ZoneEvidence) -> ZoneChoice:
    """The zone of the export's user, and why (see the module docstring)."""
    xml_count = (
        np.ones(len(evidence.xml_utc_us), dtype="int64")
        if evidence.xml_count is None
        else evidence.xml_count
    )
    all_obs = Observations(
        np.concatenate([evidence.xml_utc_us, evidence.other_utc_us]),
        np.concatenate([evidence.xml_offset_min, evidence.other_offset_min]),
        np.concatenate([xml_count, np.ones(len(evidence.other_utc_us), dtype="int64")]),
    )
    country = country_of(evidence.locale)
    named = Counter({z: n for z, n in evidence.time_zones.items() if is_zone(z)})
    fitting = rank((z for z in zone_names() if all_obs.fits(z)), named, country)
    described = f"{all_obs.count} timestamps: {all_obs.describe()}"
    if not len(all_obs):
        if named:
            (zone, n), *_ = named.most_common()
            return ZoneChoice(zone, False, f"{zone}: named by HKTimeZone metadata ({n} samples)")
        return ZoneChoice("UTC", True, "UTC: the export holds no timestamp to infer a zone from")

    best = fitting[0] if fitting else ""
    if best and named.get(best):
        return ZoneChoice(
            best,
            False,
            f"{best}: named by HKTimeZone metadata ({named[best]} samples) and consistent with "
            f"all {described}",
            tuple(fitting),
        )

    xml_offsets = set(np.unique(evidence.xml_offset_min).tolist())
    if named and evidence.export_date and xml_offsets == {evidence.export_date[1]}:
        at_export = Observations(
            np.concatenate([[evidence.export_date[0]], evidence.other_utc_us]),
            np.concatenate([[evidence.export_date[1]], evidence.other_offset_min]),
        )
        for zone in rank(named, named, country):
            if not at_export.fits(zone):
                continue
            xml = Observations(evidence.xml_utc_us, evidence.xml_offset_min, xml_count)
            offset = format_offset(evidence.export_date[1])
            return ZoneChoice(
                zone,
                False,
                f"{zone}: named by HKTimeZone metadata ({named[zone]} samples); all {xml.count} "
                f"export.xml dates carry the ExportDate's offset {offset}, which {zone} had at "
                f"the export, so they tell nothing about DST (by {zone}'s rules "
                f"{xml.count - xml.matched(zone)} of them were not at {offset}: "
                f"{xml.other_offsets(zone) or 'none'})",
                tuple(fitting),
            )

    if fitting:
        others = f"; {len(fitting) - 1} other zones fit too" if len(fitting) > 1 else ""
        return ZoneChoice(
            best,
            False,
            f"{best}: its offsets match all {described}; chosen as "
            f"{_why(best, named, evidence.locale, country)}{others}",
            tuple(fitting),
        )

    counts: Counter[int] = Counter()
    for offset, weight in zip(all_obs.offset_min.tolist(), all_obs.weight.tolist(), strict=True):
        counts[offset] += weight
    common = counts.most_common(1)[0][0]
    matched = {zone: all_obs.matched(zone) for zone in zone_names()}
    most = max(matched.values())
    closest = rank([z for z, n in matched.items() if n == most], named, country)[0]
    near = (
        f"the closest, {closest}, matches {most} of {all_obs.count} "
        f"(first mismatch: {all_obs.first_mismatch(closest)})"
    )
    fixed = fixed_zone(common)
    if fixed is None:
        return ZoneChoice(
            closest,
            False,
            f"{closest}: no IANA zone matches all {described}; {near}; no fixed-offset zone "
            f"exists for {format_offset(common)}, so the closest zone is used",
        )
    return ZoneChoice(
        fixed,
        True,
        f"{fixed}: no IANA zone matches all {described}; {near}; using the fixed offset "
        f"{format_offset(common)} of most samples, which ignores daylight saving time",
    )
