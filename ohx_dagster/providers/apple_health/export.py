"""The streaming parse of export.xml: HealthKit samples as compact per-type columns.

Exports reach gigabytes, so the XML is streamed with ElementTree's pull parser (the engine of
`iterparse`), fed in pieces of at most PIECE bytes cut at line ends so every error names its line
(a file without line breaks is read in pieces all the same), and each top-level element is
cleared once read: the parse holds one element at a time, never the document. The samples are
kept in compact arrays for SPILL_BATCH of them at a time, then checked (a value no device gives
is noted, with its line) and written to a temporary SQLite file (spill.py), with their count per
UTC day and their zone evidence per quarter hour: memory is the same for 10 thousand samples or
20 million. What the parser would have to hold whole is bounded too: MAX_PENDING bytes without an
element starting or ending (one huge tag, text or comment), MAX_DESCENDANTS elements inside one
top-level element, MAX_KINDS element names, types and time zones, MAX_DEVICES devices and
MAX_OBSERVATIONS (quarter hour, UTC offset) pairs are refused with one line, so memory never
grows with the shape of a hostile file either.

A sample dated outside the plausible dates (bounds.py) is refused and counted, not kept: it
reaches neither the records nor the zone's evidence.

Mapped, one user per export; timestamps keep the offset the export wrote ("2017-01-07 10:05:13
+0200"; zone.py explains why that offset is not always the one the sample was taken under):

| HealthKit | data type |
|---|---|
| HKQuantityTypeIdentifierHeartRate (count/min) | heart_rate |
| InstantaneousBeatsPerMinute (children of HRV or heartbeat-series records) | heart_rate |
| HKQuantityTypeIdentifierStepCount (count, duration = end - start) | steps |
| HKQuantityTypeIdentifierBodyMass (kg, lb, g, st) | weight |
| HKQuantityTypeIdentifierBodyTemperature (degC, degF) | temperature |
| HKQuantityTypeIdentifierOxygenSaturation (%, stored as a fraction 0..1) | spo2 |
| HKCorrelationTypeIdentifierBloodPressure (Systolic + Diastolic children) | blood_pressure |
| HKQuantityTypeIdentifierRespiratoryRate (count/min) | respiratory_rate |
| HKQuantityTypeIdentifierHeartRateVariabilitySDNN (ms: the SDNN of the record's beats) | hrv_sdnn |
| HKCategoryTypeIdentifierSleepAnalysis (in bed, asleep, core, deep, REM, awake: sleep.py) | sleep |
| Workout (activity type, duration, distance, energy: workouts.py) | workout |

A sample with `<MetadataEntry key="HKWasUserEntered" value="1"/>` was typed in by a person (in
the real export: the Health app's own "Add Data" entries, sourceName "Health"); its record gets
method "manual", every other one "device". `HKTimeZone` metadata (the IANA zone a device or app
recorded a sample in) is counted per zone for zone.py.

An HRV record is a statistic of about a minute of beats (SDNN), published as that, never as RR
intervals; its beat list yields heart rate as before. Every other type (distance,
energy, nutrition, ActivitySummary, ...) is skipped and counted in the summary;
a mapped type with a unit we cannot convert, a value that is not a number, or a date without its
offset is an error naming the file, line, type and the value.

Duplicates: HealthKit exports the same walk from every source that saw it (iPhone and Watch,
or a phone and a Garmin via Connect). The record identity includes device_id, so both are kept,
as they should be for per-device data: a daily step total over all devices counts such walks
twice. A sample exported twice by the same device (same type and start) is one record.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import IO, Final, cast

import numpy as np
import pandas as pd

from ohx_dagster.core.errors import ProviderError, ValidationError
from ohx_dagster.core.models import HARD_LIMITS, HealthDataType
from ohx_dagster.core.records import make_batch
from ohx_dagster.core.units import accepted_units, to_canonical
from ohx_dagster.providers.apple_health.sleep import (
    NO_LENGTH,
    SLEEP_ANALYSIS,
    STAGE_UNIT,
    STAGES,
    sessions,
)
from ohx_dagster.providers.apple_health.spill import Spill
from ohx_dagster.providers.apple_health.workouts import HeldWorkout, read_workout
from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates

NAME: Final = "apple_health"
QUANTITY_TYPES: Final[dict[str, HealthDataType]] = {
    "HKQuantityTypeIdentifierHeartRate": HealthDataType.HEART_RATE,
    "HKQuantityTypeIdentifierStepCount": HealthDataType.STEPS,
    "HKQuantityTypeIdentifierBodyMass": HealthDataType.WEIGHT,
    "HKQuantityTypeIdentifierBodyTemperature": HealthDataType.TEMPERATURE,
    "HKQuantityTypeIdentifierOxygenSaturation": HealthDataType.SPO2,
    "HKQuantityTypeIdentifierRespiratoryRate": HealthDataType.RESPIRATORY_RATE,
    "HKQuantityTypeIdentifierHeartRateVariabilitySDNN": HealthDataType.HRV_SDNN,
    # HealthKit's blood glucose names no specimen: meters and typed values (the real export's
    # sources: ACCU-CHEK, One Drop, iGluco, mySugr, Health), so glucose in blood (SOURCE.md).
    "HKQuantityTypeIdentifierBloodGlucose": HealthDataType.BLOOD_GLUCOSE,
}
BLOOD_PRESSURE: Final = "HKCorrelationTypeIdentifierBloodPressure"
SYSTOLIC: Final = "HKQuantityTypeIdentifierBloodPressureSystolic"
DIASTOLIC: Final = "HKQuantityTypeIdentifierBloodPressureDiastolic"
BEAT: Final = "InstantaneousBeatsPerMinute"
USER_ENTERED: Final = "HKWasUserEntered"
TIME_ZONE: Final = "HKTimeZone"
DEVICE_ID_MAX: Final = 128  # the store's device_id column
EXPECTED_EXPORT: Final = "the export.xml or export.zip of the Health app's 'Export All Health Data'"

_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
# Beat times are local wall-clock times in the phone's locale: "6:14:48.94 PM", "08:33:44,67",
# "3:10:01.12\u202fAM".
_BEAT_TIME = re.compile(r"(\d{1,2}):(\d\d):(\d\d)(?:[.,](\d{1,6}))?\s*([AaPp][Mm])?")
_HARDWARE = re.compile(r"hardware:([^,>]+(?:,\d+)?)")
_DEVICE_NAME = re.compile(r"name:([^,>]+)")
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()
_DAY_US: Final = 86_400_000_000
_MINUTE_US: Final = 60_000_000
TIME_FORMAT: Final = "'YYYY-MM-DD hh:mm:ss +hhmm' (local time with its UTC offset)"
PIECE: Final = 1 << 20  # bytes read at a time; a line longer than this is fed in pieces
# A real export's largest element is a Workout or a beat list: kilobytes, a few hundred children.
MAX_PENDING: Final = 16 << 20
MAX_DESCENDANTS: Final = 100_000
# Samples parsed before they are checked and written to the spill file: about 3 MiB of arrays.
SPILL_BATCH: Final = 1 << 16
# The real export holds 60 element names, types and zones and 30 devices; HealthKit has about
# 200 types. A (quarter hour, offset) pair per quarter hour of every day since 2000 is 950,000.
MAX_KINDS: Final = 10_000
MAX_DEVICES: Final = 100_000
MAX_OBSERVATIONS: Final = 2_000_000
MAX_WORKOUTS: Final = 100_000  # a workout a day for 270 years
_BIN_US: Final = 15 * 60_000_000  # zone.py's quarter hours


@dataclass
class ExportSummary:
    """What the export held: elements per HealthKit type, and what became records."""

    records: Counter[str] = field(default_factory=Counter)  # top-level Record per type
    correlations: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)  # Workout, ActivitySummary, Me, ...
    skipped: Counter[str] = field(default_factory=Counter)  # Record types not mapped
    mapped: Counter[str] = field(default_factory=Counter)  # samples read per data type
    manual: Counter[str] = field(default_factory=Counter)  # of those, typed in (per data type)
    beats: int = 0  # InstantaneousBeatsPerMinute read as heart rate
    # Top-level systolic/diastolic records repeat their correlation's children (HealthKit's DTD);
    # halves with no blood-pressure correlation are counted here, not stored.
    unpaired_blood_pressure: int = 0
    time_zones: Counter[str] = field(default_factory=Counter)  # HKTimeZone values
    locale: str = ""  # <HealthData locale="en_US">
    export_date: str = ""  # <ExportDate value="2017-11-07 10:05:13 +0200">
    ecg_files: int = 0  # electrocardiograms/*.csv read
    lines: int = 0


def parse_moment(text: str | None) -> tuple[int, int] | None:
    """Local wall-clock microseconds since the epoch and the UTC offset in minutes, or None
    when the text is not a HealthKit export date."""
    match = _DATE.fullmatch(text or "")
    if match is None:
        return None
    try:
        day = _epoch_day(match[0][:10])
    except ValueError:
        return None
    h, m, s = int(match[4]), int(match[5]), int(match[6])
    offset = (int(match[8]) * 60 + int(match[9])) * (-1 if match[7] == "-" else 1)
    if h > 23 or m > 59 or s > 60 or abs(offset) > 18 * 60:
        return None
    return day * _DAY_US + ((h * 60 + m) * 60 + s) * 1_000_000, offset


class _Columns:
    """One (data type, unit)'s samples of the batch being parsed as compact arrays: 27 bytes a
    heart rate (diastolic only for blood pressure, a duration only for steps)."""

    def __init__(self, data_type: HealthDataType) -> None:
        self.local_us = array("q")
        self.offset_min = array("h")
        self.value = array("d")
        self.diastolic = array("d") if data_type is HealthDataType.BLOOD_PRESSURE else None
        timed = (HealthDataType.STEPS, HealthDataType.SLEEP)
        self.duration_s = array("d") if data_type in timed else None
        self.device = array("i")
        self.line = array("i")
        self.manual = array("b")

    def add(
        self,
        local_us: int,
        offset_min: int,
        value: float,
        device: int,
        line: int,
        *,
        diastolic: float = np.nan,
        duration_s: float = np.nan,
        manual: bool = False,
    ) -> None:
        self.local_us.append(local_us)
        self.offset_min.append(offset_min)
        self.value.append(value)
        if self.diastolic is not None:
            self.diastolic.append(diastolic)
        if self.duration_s is not None:
            self.duration_s.append(duration_s)
        self.device.append(device)
        self.line.append(line)
        self.manual.append(manual)


@lru_cache(maxsize=4096)
def device_id(source_name: str, device: str) -> str:
    """The app or device that wrote the sample, plus the hardware model when HealthKit names one
    ("Jonathan’s iPhone [iPhone8,1]"). The HKDevice pointer and software version are left out:
    they change from sample to sample and with every update, the device does not."""
    found = _HARDWARE.search(device) or _DEVICE_NAME.search(device)
    text = f"{source_name} [{found.group(1).strip()}]" if found else source_name
    return text[:DEVICE_ID_MAX]


@lru_cache(maxsize=65536)
def _epoch_day(text: str) -> int:
    return date(int(text[0:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_DAY


def _metadata(element: ET.Element) -> dict[str, str]:
    """The element's own MetadataEntry children (not those of nested records)."""
    return {
        child.get("key", ""): child.get("value", "")
        for child in element
        if child.tag == "MetadataEntry"
    }


class ExportReader:
    """Turns the stream of elements into the spill file's samples and the summary."""

    def __init__(self, name: str, dates: PlausibleDates, *, spill_batch: int = SPILL_BATCH) -> None:
        self.name = name  # the file as messages name it: path, or "export.zip!member"
        self.refused = RefusedDates(dates)
        self.summary = ExportSummary()
        self.spill = Spill()
        self.spill_batch = spill_batch
        # The batch being parsed, per (type, unit); every (type, unit) read, by its number in the
        # spill; of those, the first value and the first diastolic no device gives.
        self.columns: dict[tuple[HealthDataType, str], _Columns] = {}
        self.keys: dict[tuple[HealthDataType, str], int] = {}
        self.invalid: dict[tuple[HealthDataType, str], dict[str, ValidationError]] = {}
        self.pending = 0  # samples and blood-pressure halves in the batch
        self.devices: dict[str, int] = {}
        self.units_ok: set[tuple[HealthDataType, str]] = set()
        # Blood-pressure halves of the batch: (type, sourceName, startDate, value, child).
        self.pressure: list[tuple[str, str, str, str, int]] = []
        # Workouts, few (a daily one is 365 a year): kept as read, in memory (workouts.py).
        self.workouts: list[HeldWorkout] = []

    def close(self) -> None:
        """Delete the spill file."""
        self.spill.close()

    def where(self, line: int, kind: str) -> str:
        return f"{self.name}, line {line}, {kind}"

    def moment(self, text: str | None, name: str, line: int, kind: str) -> tuple[int, int]:
        """Local wall-clock microseconds since the epoch and the UTC offset in minutes."""
        found = parse_moment(text)
        if found is None:
            raise ValidationError(name, text, TIME_FORMAT, where=self.where(line, kind))
        return found

    def number(self, text: str | None, name: str, line: int, kind: str) -> float:
        try:
            value = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValidationError(name, text, "a number", where=self.where(line, kind)) from None
        return value

    def check_unit(self, data_type: HealthDataType, unit: str, line: int, kind: str) -> None:
        if (data_type, unit) in self.units_ok:
            return
        if unit not in accepted_units(data_type.value):
            raise ValidationError(
                "unit",
                unit,
                f"a unit for {data_type.value}: one of {accepted_units(data_type.value)}",
                where=self.where(line, kind),
            )
        self.units_ok.add((data_type, unit))

    def device(self, element: ET.Element) -> int:
        name = device_id(element.get("sourceName", ""), element.get("device", ""))
        found = self.devices.get(name)
        if found is None:
            if len(self.devices) >= MAX_DEVICES:
                raise ValidationError(
                    "device",
                    name,
                    f"at most {MAX_DEVICES:,} devices and apps writing samples (a real export "
                    "names dozens)",
                    where=self.name,
                )
            found = self.devices[name] = len(self.devices)
        return found

    def add(
        self, data_type: HealthDataType, unit: str, *args: float, **kwargs: float | bool
    ) -> None:
        local_us, offset_min = int(args[0]), int(args[1])
        if not self.refused.dates.holds_us(local_us - offset_min * _MINUTE_US):
            day = date.fromordinal(_EPOCH_DAY + local_us // _DAY_US)
            line = int(args[4])
            self.refused.add(data_type.value, 1, f"{day} ({self.where(line, data_type.value)})")
            return
        columns = self.columns.get((data_type, unit))
        if columns is None:
            columns = self.columns[(data_type, unit)] = _Columns(data_type)
            self.keys.setdefault((data_type, unit), len(self.keys))
        columns.add(*args, **kwargs)  # type: ignore[arg-type]
        self.pending += 1
        self.summary.mapped[data_type.value] += 1
        if kwargs.get("manual"):
            self.summary.manual[data_type.value] += 1

    def element(self, element: ET.Element, line: int) -> None:
        """One child of <HealthData>, complete."""
        metadata = _metadata(element) if len(element) else {}
        zone = metadata.get(TIME_ZONE)
        if zone:
            self.summary.time_zones[zone] += 1
        if element.tag == "Record":
            self.record(element, line, metadata)
        elif element.tag == "Correlation":
            self.correlation(element, line, metadata)
        elif element.tag == "Workout":
            self.workout(element, line, metadata)
        else:
            if element.tag == "ExportDate":
                self.summary.export_date = element.get("value", "")
            self.summary.other[element.tag] += 1
        summary = self.summary
        kinds = (
            len(summary.records)
            + len(summary.correlations)
            + len(summary.other)
            + len(summary.time_zones)
        )
        if kinds > MAX_KINDS:
            raise ValidationError(
                "element",
                f"{kinds:,} kinds",
                f"at most {MAX_KINDS:,} element names, sample types and HKTimeZone zones "
                "(HealthKit has about 200 types)",
                where=self.where(line, f"<{element.tag}>"),
            )
        if self.pending >= self.spill_batch:
            self.flush()

    def record(self, element: ET.Element, line: int, metadata: dict[str, str]) -> None:
        kind = element.get("type", "")
        self.summary.records[kind] += 1
        if len(element):
            self.beats(element, line, kind)
        if kind in (SYSTOLIC, DIASTOLIC):
            self.pressure.append((*_bp_key(element), 0))
            self.pending += 1
            return
        if kind == SLEEP_ANALYSIS:
            self.sleep(element, line, metadata)
            return
        data_type = QUANTITY_TYPES.get(kind)
        if data_type is None:
            self.summary.skipped[kind] += 1
            return
        unit = element.get("unit", "")
        self.check_unit(data_type, unit, line, kind)
        value = self.number(element.get("value"), "value", line, kind)
        if data_type is HealthDataType.SPO2 and unit == "%" and value <= 1.0:
            # HealthKit's percent unit holds a fraction (0.97 is 97 %); apps that wrote 97
            # are read as percent. No one has an SpO2 of 1 %, so the two cannot be confused.
            unit = "1"
        start, offset = self.moment(element.get("startDate"), "startDate", line, kind)
        duration = np.nan
        if data_type is HealthDataType.STEPS:
            end, end_offset = self.moment(element.get("endDate"), "endDate", line, kind)
            duration = ((end - end_offset * _MINUTE_US) - (start - offset * _MINUTE_US)) / 1e6
            if duration < 0:
                raise ValidationError(
                    "endDate",
                    element.get("endDate"),
                    "not before startDate",
                    where=self.where(line, kind),
                )
        self.add(
            data_type,
            unit,
            start,
            offset,
            value,
            self.device(element),
            line,
            duration_s=duration,
            manual=metadata.get(USER_ENTERED) == "1",
        )

    def sleep(self, element: ET.Element, line: int, metadata: dict[str, str]) -> None:
        """A sleep analysis record: an interval stamped at its end (sleep.py makes nights of
        them), its stage as its value."""
        kind = SLEEP_ANALYSIS
        text = element.get("value", "")
        stage = STAGES.get(text)
        if stage is None:
            raise ValidationError(
                "value", text, f"one of {sorted(STAGES)}", where=self.where(line, kind)
            )
        start, offset = self.moment(element.get("startDate"), "startDate", line, kind)
        end, end_offset = self.moment(element.get("endDate"), "endDate", line, kind)
        duration = ((end - end_offset * _MINUTE_US) - (start - offset * _MINUTE_US)) / 1e6
        if duration == 0:
            self.summary.skipped[NO_LENGTH] += 1
            return
        if not 0 < duration <= 86_400:
            raise ValidationError(
                "endDate",
                element.get("endDate"),
                "after startDate, within a day of it",
                where=self.where(line, kind),
            )
        self.add(
            HealthDataType.SLEEP,
            STAGE_UNIT,
            end,
            end_offset,
            float(stage),
            self.device(element),
            line,
            duration_s=duration,
            manual=metadata.get(USER_ENTERED) == "1",
        )

    def workout(self, element: ET.Element, line: int, metadata: dict[str, str]) -> None:
        where = self.where(line, "Workout")
        start, offset = self.moment(element.get("startDate"), "startDate", line, "Workout")
        end, end_offset = self.moment(element.get("endDate"), "endDate", line, "Workout")
        start_utc, end_utc = start - offset * _MINUTE_US, end - end_offset * _MINUTE_US
        if not self.refused.dates.holds_us(end_utc):
            day = date.fromordinal(_EPOCH_DAY + end // _DAY_US)
            self.refused.add("workout", 1, f"{day} ({where})")
            return
        device = self.device(element)
        held = read_workout(element, start_utc, end_utc, end_offset, device, where)
        if len(self.workouts) >= MAX_WORKOUTS:
            raise ValidationError(
                "Workout", len(self.workouts), f"at most {MAX_WORKOUTS:,} workouts", where=where
            )
        manual = metadata.get(USER_ENTERED) == "1"
        self.workouts.append(held._replace(manual=manual))
        self.summary.mapped["workout"] += 1
        if manual:
            self.summary.manual["workout"] += 1

    def beats(self, element: ET.Element, line: int, kind: str) -> None:
        """InstantaneousBeatsPerMinute children: a time of day (the sample's local clock) each."""
        beats = list(element.iter(BEAT))
        if not beats:
            return
        start, offset = self.moment(element.get("startDate"), "startDate", line, kind)
        midnight = start - start % _DAY_US
        device = self.device(element)
        for beat in beats:
            text = beat.get("time", "")
            match = _BEAT_TIME.fullmatch(text.strip())
            if match is None:
                raise ValidationError(
                    "time",
                    text,
                    "a time of day like '6:14:48.94 PM' or '18:14:48,94'",
                    where=self.where(line, f"{kind} {BEAT}"),
                )
            hour = int(match[1])
            if match[5]:
                hour = hour % 12 + (12 if match[5].lower() == "pm" else 0)
            fraction = int((match[4] or "0").ljust(6, "0"))
            moment = (
                midnight + ((hour * 60 + int(match[2])) * 60 + int(match[3])) * 10**6 + fraction
            )
            if moment < start - 3_600_000_000:  # the series ran past local midnight
                moment += _DAY_US
            bpm = self.number(beat.get("bpm"), "bpm", line, f"{kind} {BEAT}")
            self.add(HealthDataType.HEART_RATE, "count/min", moment, offset, bpm, device, line)
            self.summary.beats += 1

    def correlation(self, element: ET.Element, line: int, metadata: dict[str, str]) -> None:
        kind = element.get("type", "")
        self.summary.correlations[kind] += 1
        if kind != BLOOD_PRESSURE:
            return
        halves: dict[str, float] = {}
        manual = metadata.get(USER_ENTERED) == "1"
        data_type = HealthDataType.BLOOD_PRESSURE
        for child in element.iter("Record"):
            child_kind = child.get("type", "")
            if child_kind not in (SYSTOLIC, DIASTOLIC):
                continue
            unit = child.get("unit", "")
            self.check_unit(data_type, unit, line, child_kind)
            value = self.number(child.get("value"), "value", line, child_kind)
            halves[child_kind] = float(to_canonical(data_type.value, value, unit))
            self.pressure.append((*_bp_key(child), 1))
            self.pending += 1
            manual = manual or _metadata(child).get(USER_ENTERED) == "1"
        if len(halves) != 2:
            raise ValidationError(
                "Correlation",
                sorted(halves),
                "a systolic and a diastolic Record",
                where=self.where(line, kind),
            )
        start, offset = self.moment(element.get("startDate"), "startDate", line, kind)
        self.add(
            data_type,
            data_type.canonical_unit,
            start,
            offset,
            halves[SYSTOLIC],
            self.device(element),
            line,
            diastolic=halves[DIASTOLIC],
            manual=manual,
        )

    def flush(self) -> None:
        """The batch checked and written to the spill file, with its counts per UTC day and its
        zone evidence per (quarter hour, offset); then a new batch."""
        utc_parts, offset_parts = [], []
        with self.spill.batch():
            for key, columns in self.columns.items():
                if not len(columns.line):
                    continue
                values, diastolic = self._checked(key, columns)
                offsets = np.frombuffer(columns.offset_min, dtype="int16").astype("int64")
                utc_us = np.frombuffer(columns.local_us, dtype="int64") - offsets * _MINUTE_US
                written = {
                    "utc_us": utc_us,
                    "offset_min": offsets,
                    "value": values,
                    "diastolic": diastolic,
                    "duration_s": None
                    if columns.duration_s is None
                    else np.frombuffer(columns.duration_s),
                    "device": np.frombuffer(columns.device, dtype="int32"),
                    "manual": np.frombuffer(columns.manual, dtype="int8"),
                    "line": np.frombuffer(columns.line, dtype="int32"),
                }
                self.spill.write(self.keys[key], written)
                utc_parts.append(utc_us)
                offset_parts.append(offsets)
            if utc_parts:
                utc_us, offsets = np.concatenate(utc_parts), np.concatenate(offset_parts)
                days, counts = np.unique(utc_us // _DAY_US, return_counts=True)
                self.spill.count_days(days, counts)
                # One observation per (quarter hour, offset): its first instant, its count.
                code = (utc_us // _BIN_US) * 4096 + (offsets + 2048)
                order = np.lexsort((utc_us, code))
                code = code[order]
                first = np.ones(len(code), dtype=bool)
                first[1:] = code[1:] != code[:-1]
                starts = np.flatnonzero(first)
                counts = np.diff(np.append(starts, len(code)))
                kept = order[starts]
                self.spill.observe(code[starts], offsets[kept], utc_us[kept], counts)
            if self.pressure:
                self.spill.pressure(self.pressure)
        self.columns = {}
        self.pressure = []
        self.pending = 0

    def _checked(
        self, key: tuple[HealthDataType, str], columns: _Columns
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The batch's values in canonical units, and its diastolic values; the first value and
        the first diastolic of the (type, unit) that no device gives are noted, with their line
        (`check` raises them once the whole export is read, as before anything is stored)."""
        data_type, unit = key
        if unit == STAGE_UNIT:  # stages, each one of STAGES: nothing to convert or bound
            return np.frombuffer(columns.value), None
        values = to_canonical(data_type.value, np.frombuffer(columns.value), unit)
        diastolic = None if columns.diastolic is None else np.frombuffer(columns.diastolic)
        low, high = HARD_LIMITS[data_type]
        noted = self.invalid.setdefault(key, {})
        for name, array_ in (("value", values), ("diastolic", diastolic)):
            if array_ is None or name in noted:
                continue
            bad = ~np.isfinite(array_) | (array_ < low) | (array_ > high)
            if name == "diastolic":
                bad |= array_ >= values
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                noted[name] = ValidationError(
                    name,
                    float(array_[row]),
                    f"{low:g}..{high:g} {data_type.canonical_unit} for {data_type.value}"
                    + (" and < systolic" if name == "diastolic" else ""),
                    where=self.where(columns.line[row], f"{data_type.value} in {unit!r}"),
                )
        return values, diastolic

    def finish(self) -> None:
        self.flush()
        # Every device's name by its number, as an object array: indexing it shares the str
        # objects (np.full or astype(object) would make one str per row: 13 MB per 250k samples).
        self.device_names = np.array(list(self.devices), dtype=object)
        self.summary.unpaired_blood_pressure = self.spill.unpaired_pressure()
        if not self.summary.records and not self.workouts:
            other = ", ".join(f"{tag} {n}" for tag, n in sorted(self.summary.other.items()))
            raise ValidationError(
                "Record",
                0,
                "HealthKit samples (<Record> elements): this export holds none"
                + (f" (only {other})" if other else ""),
                where=self.name,
            )
        observed = self.spill.count_observations()
        if observed > MAX_OBSERVATIONS:
            raise ValidationError(
                "startDate",
                f"{observed:,} (quarter hour, UTC offset) pairs",
                f"at most {MAX_OBSERVATIONS:,}: samples of one quarter hour carry one offset, "
                "or two where the clocks change",
                where=self.name,
            )

    def check(self) -> None:
        """Every (type, unit)'s values were in canonical bounds: the first that was not, in the
        order of the (type, unit)s, is an error naming its line, before any record is stored."""
        for key in sorted(self.keys):
            noted = self.invalid.get(key, {})
            if noted:
                raise noted.get("value") or noted["diastolic"]

    def observations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mapped samples' zone evidence: per (quarter hour, UTC offset) the first UTC instant
        (microseconds), the offset and how many samples carried it."""
        return self.spill.observations()


def _bp_key(element: ET.Element) -> tuple[str, str, str, str]:
    return tuple(element.get(k, "") for k in ("type", "sourceName", "startDate", "value"))  # type: ignore[return-value]


def pieces(stream: IO[bytes], size: int = PIECE) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes): the stream's lines, a line longer than `size` in several pieces.

    Read by `size`, never by line: a file without line breaks is one "line" of any length."""
    line = 1
    while chunk := stream.read(size):
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            yield line, part + b"\n"
            line += 1
        if parts[-1]:
            yield line, parts[-1]


def parse_export(
    stream: IO[bytes],
    name: str,
    dates: PlausibleDates,
    *,
    piece: int = PIECE,
    spill_batch: int = SPILL_BATCH,
) -> ExportReader:
    """Stream one export.xml; the reader holds the samples in its spill file (closed with it) and
    the summary, and counts the samples refused for their date.

    A file that is not a HealthKit export fails at its first element, before the rest of a
    possibly huge file is read; one with no <Record> fails at its end. A file that fails leaves
    no spill file behind."""
    reader = ExportReader(name, dates, spill_batch=spill_batch)
    try:
        _read(reader, stream, name, piece)
    except BaseException:
        reader.close()
        raise
    return reader


def _read(reader: ExportReader, stream: IO[bytes], name: str, piece: int) -> None:
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    starts: list[int] = []  # line of each open element's start tag
    line = 0
    pending = 0  # bytes fed since an element last started or ended
    descendants = 0  # elements inside the top-level element being read
    try:
        for line, text in pieces(stream, piece):
            parser.feed(text)
            pending += len(text)
            # Only start and end events were asked for: each holds an element.
            events = cast("Iterator[tuple[str, ET.Element]]", parser.read_events())
            for event, element in events:
                pending = 0
                if event == "start":
                    starts.append(line)
                    if len(starts) > 2:
                        descendants += 1
                        if descendants > MAX_DESCENDANTS:
                            raise ValidationError(
                                "element",
                                f"<{element.tag}>",
                                f"at most {MAX_DESCENDANTS:,} elements inside one child of "
                                "<HealthData> (a real export's largest holds hundreds)",
                                where=f"{name}, from line {starts[1]}",
                            )
                    if root is None:
                        root = element
                        if root.tag != "HealthData":
                            raise ValidationError(
                                "root element",
                                f"<{root.tag}>",
                                f"<HealthData>, the root of {EXPECTED_EXPORT}",
                                where=f"{name}, line {line}",
                            )
                        reader.summary.locale = root.get("locale", "")
                    continue
                start_line = starts.pop()
                if len(starts) != 1:  # only HealthData's children are read (and cleared)
                    continue
                reader.element(element, start_line)
                root.clear()  # type: ignore[union-attr]
                descendants = 0
            if pending > MAX_PENDING:
                raise ValidationError(
                    "element",
                    f"{pending:,} bytes without a tag ending",
                    f"tags, text and comments of at most {MAX_PENDING >> 20} MiB each, as in "
                    f"{EXPECTED_EXPORT}",
                    where=f"{name}, line {line}",
                )
        parser.close()
    except ET.ParseError as exc:
        row, column = exc.position
        if root is None:
            raise ProviderError(
                f"{name}: not an Apple Health export.xml (XML error at line {row}, column "
                f"{column}: {exc}); expected {EXPECTED_EXPORT}"
            ) from exc
        raise ProviderError(
            f"{name}: not a complete Apple Health export (XML error at line {row}, "
            f"column {column}: {exc}); export it again from the Health app"
        ) from exc
    reader.summary.lines = line
    reader.finish()


def batch(
    reader: ExportReader, user_id: str, key: tuple[HealthDataType, str], rows: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Samples of one (data type, unit) read from the spill file (Spill.read) as a validated
    record batch in canonical units."""
    data_type, unit = key
    if unit == STAGE_UNIT:
        return sessions(rows, reader.device_names, user_id, NAME)
    return make_batch(
        provider=NAME,
        user_id=user_id,
        data_type=data_type,
        timestamps=pd.DatetimeIndex(rows["utc_us"].astype("datetime64[us]")).tz_localize("UTC"),
        values=rows["value"],
        unit=data_type.canonical_unit,
        device_id=reader.device_names[rows["device"]],
        utc_offset_min=rows["offset_min"].astype("int64"),
        diastolic=rows["diastolic"] if data_type is HealthDataType.BLOOD_PRESSURE else None,
        duration_s=rows["duration_s"] if data_type is HealthDataType.STEPS else None,
        # Indexing an object array shares its two str objects.
        method=np.array(["device", "manual"], dtype=object)[rows["manual"]],
    )
