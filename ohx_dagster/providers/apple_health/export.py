"""The streaming parse of export.xml: HealthKit samples as compact per-type columns.

Exports reach gigabytes, so the XML is streamed with ElementTree's pull parser (the engine of
`iterparse`), fed in pieces of at most PIECE bytes cut at line ends so every error names its line
(a file without line breaks is read in pieces all the same), and each top-level element is
cleared once read: the parse holds one element at a time, and the samples kept are compact
arrays (about 50 bytes per mapped sample), never the document. What the parser would have to
hold whole is bounded: MAX_PENDING bytes without an element starting or ending (one huge tag,
text or comment) and MAX_DESCENDANTS elements inside one top-level element are refused with
one line, so memory grows with the samples mapped, never with the shape of a hostile file.

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

A sample with `<MetadataEntry key="HKWasUserEntered" value="1"/>` was typed in by a person (in
the real export: the Health app's own "Add Data" entries, sourceName "Health"); its record gets
method "manual", every other one "device". `HKTimeZone` metadata (the IANA zone a device or app
recorded a sample in) is counted per zone for zone.py.

Not mapped: HKQuantityTypeIdentifierHeartRateVariabilitySDNN is a per-minute statistic of beat
intervals, not RR intervals (its beat list still yields heart rate). Every other type (distance,
energy, sleep, nutrition, Workouts, ActivitySummary, ...) is skipped and counted in the summary;
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

from ohx_dagster.errors import ProviderError, ValidationError
from ohx_dagster.models import HARD_LIMITS, HealthDataType
from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates
from ohx_dagster.records import make_batch
from ohx_dagster.units import accepted_units, to_canonical

NAME: Final = "apple_health"
QUANTITY_TYPES: Final[dict[str, HealthDataType]] = {
    "HKQuantityTypeIdentifierHeartRate": HealthDataType.HEART_RATE,
    "HKQuantityTypeIdentifierStepCount": HealthDataType.STEPS,
    "HKQuantityTypeIdentifierBodyMass": HealthDataType.WEIGHT,
    "HKQuantityTypeIdentifierBodyTemperature": HealthDataType.TEMPERATURE,
    "HKQuantityTypeIdentifierOxygenSaturation": HealthDataType.SPO2,
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
    """One (data type, unit)'s samples as compact arrays while the file streams: 27 bytes a
    heart rate (diastolic only for blood pressure, a duration only for steps)."""

    def __init__(self, data_type: HealthDataType) -> None:
        self.local_us = array("q")
        self.offset_min = array("h")
        self.value = array("d")
        self.diastolic = array("d") if data_type is HealthDataType.BLOOD_PRESSURE else None
        self.duration_s = array("d") if data_type is HealthDataType.STEPS else None
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
    """Turns the stream of elements into per-type columns and the summary."""

    def __init__(self, name: str, dates: PlausibleDates) -> None:
        self.name = name  # the file as messages name it: path, or "export.zip!member"
        self.refused = RefusedDates(dates)
        self.summary = ExportSummary()
        self.columns: dict[tuple[HealthDataType, str], _Columns] = {}
        self.devices: dict[str, int] = {}
        self.units_ok: set[tuple[HealthDataType, str]] = set()
        self.bp_halves: Counter[tuple[str, str, str, str]] = Counter()
        self.bp_children: Counter[tuple[str, str, str, str]] = Counter()

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
        return self.devices.setdefault(name, len(self.devices))

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
        columns.add(*args, **kwargs)  # type: ignore[arg-type]
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
        else:
            if element.tag == "ExportDate":
                self.summary.export_date = element.get("value", "")
            self.summary.other[element.tag] += 1

    def record(self, element: ET.Element, line: int, metadata: dict[str, str]) -> None:
        kind = element.get("type", "")
        self.summary.records[kind] += 1
        if len(element):
            self.beats(element, line, kind)
        if kind in (SYSTOLIC, DIASTOLIC):
            self.bp_halves[_bp_key(element)] += 1
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
            self.bp_children[_bp_key(child)] += 1
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

    def finish(self) -> None:
        self.summary.unpaired_blood_pressure = sum((self.bp_halves - self.bp_children).values())
        if not self.summary.records:
            other = ", ".join(f"{tag} {n}" for tag, n in sorted(self.summary.other.items()))
            raise ValidationError(
                "Record",
                0,
                "HealthKit samples (<Record> elements): this export holds none"
                + (f" (only {other})" if other else ""),
                where=self.name,
            )

    def observations(self) -> tuple[np.ndarray, np.ndarray]:
        """Every mapped sample's UTC instant (microseconds) and the offset its date carried."""
        if not self.columns:
            return np.empty(0, dtype="int64"), np.empty(0, dtype="int64")
        offsets = np.concatenate(
            [np.frombuffer(c.offset_min, dtype="int16") for c in self.columns.values()]
        ).astype("int64")
        local = np.concatenate(
            [np.frombuffer(c.local_us, dtype="int64") for c in self.columns.values()]
        )
        return local - offsets * _MINUTE_US, offsets


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
    stream: IO[bytes], name: str, dates: PlausibleDates, *, piece: int = PIECE
) -> ExportReader:
    """Stream one export.xml; the reader holds the samples per type and the summary, and counts
    the samples refused for their date.

    A file that is not a HealthKit export fails at its first element, before the rest of a
    possibly huge file is read; one with no <Record> fails at its end."""
    reader = ExportReader(name, dates)
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
    return reader


@dataclass(frozen=True, slots=True)
class Checked:
    """One (data type, unit)'s samples validated, in canonical units, with their UTC instants:
    what a window's records are built from (8 or 16 bytes a sample beside the columns)."""

    utc_us: np.ndarray
    values: np.ndarray
    diastolic: np.ndarray | None  # blood pressure only


def check(reader: ExportReader, key: tuple[HealthDataType, str]) -> Checked:
    """One (data type, unit)'s columns validated in canonical units: a value no device gives is
    an error naming its line, before any record of the export is stored."""
    data_type, unit = key
    columns = reader.columns[key]
    values = to_canonical(data_type.value, np.frombuffer(columns.value), unit)
    diastolic = None if columns.diastolic is None else np.frombuffer(columns.diastolic)
    low, high = HARD_LIMITS[data_type]
    for name, array_ in (("value", values), ("diastolic", diastolic)):
        if array_ is None:
            continue
        bad = ~np.isfinite(array_) | (array_ < low) | (array_ > high)
        if name == "diastolic":
            bad |= array_ >= values
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValidationError(
                name,
                float(array_[row]),
                f"{low:g}..{high:g} {data_type.canonical_unit} for {data_type.value}"
                + (" and < systolic" if name == "diastolic" else ""),
                where=reader.where(columns.line[row], f"{data_type.value} in {unit!r}"),
            )
    offsets = np.frombuffer(columns.offset_min, dtype="int16").astype("int64")
    utc_us = np.frombuffer(columns.local_us, dtype="int64") - offsets * _MINUTE_US
    return Checked(utc_us, values, diastolic)


def batch(
    reader: ExportReader,
    user_id: str,
    key: tuple[HealthDataType, str],
    checked: Checked | None = None,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """One (data type, unit)'s columns (`rows` of them, default all) as a validated record
    batch in canonical units."""
    data_type, _ = key
    columns = reader.columns[key]
    checked = checked or check(reader, key)
    take = slice(None) if rows is None else rows
    offsets = np.frombuffer(columns.offset_min, dtype="int16")[take].astype("int64")
    utc_us = checked.utc_us[take]
    names = np.array(list(reader.devices), dtype=object)
    # Indexing an object array shares its two str objects (np.full or astype(object) would
    # make one str per row: 13 MB per 250k samples).
    manual = np.frombuffer(columns.manual, "int8")[take]
    method = np.array(["device", "manual"], dtype=object)[manual]
    return make_batch(
        provider=NAME,
        user_id=user_id,
        data_type=data_type,
        timestamps=pd.DatetimeIndex(utc_us.astype("datetime64[us]")).tz_localize("UTC"),
        values=checked.values[take],
        unit=data_type.canonical_unit,
        device_id=names[np.frombuffer(columns.device, dtype="int32")[take]],
        utc_offset_min=offsets,
        diastolic=None if checked.diastolic is None else checked.diastolic[take],
        duration_s=None if columns.duration_s is None else np.frombuffer(columns.duration_s)[take],
        method=method,
    )
