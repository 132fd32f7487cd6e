"""The `polar` source: Polar chest-strap and optical-sensor recordings from files.

The path is a folder of Polar Sensor Logger recordings (any number, any sensors), one of their
files, or the converted ECGLogger recording of ../shared/data/polar-h10; files.py has the layouts.

What becomes records:

- ECG file: one `ecg` record per continuous run of samples (a whole file, unless three or more
  samples are missing or the sensor clock resets), samples in uV, stamped with the phone time of
  its first sample. The sampling rate is measured on the sensor clock, first to last sample of the
  run, not taken as the 130 Hz the Polar SDK states for the H10: sensors run slightly off it (the
  real recording in ../shared/data/polar-h10 measures 130.161 Hz, another H10 130.061 Hz), and a
  0.12 % error over ten minutes puts the end of the waveform 0.74 s away from the heart rate and
  RR intervals measured with it. The converted recording is measured on its own clock the same way.
- HR file: a `heart_rate` record per row (bpm) at its phone time. An HR of 0 (no skin contact) is
  not a measurement: not stored, counted in the summary.
- RR file: an `rr_intervals` record per row (ms). Rows that share one phone time arrived in one
  Bluetooth notification: the last is stamped with that time, each earlier one with that time
  minus the intervals after it (the beats are consecutive), so every interval keeps its instant.
- ACC file: every line is read and checked, and nothing is stored: there is no data type for
  acceleration. The import summary gives the sample count and says so.
- HRV and breathing columns of newer HR files, and the RR fields of older HR rows: checked, not
  stored (no data type; RR intervals come from the RR file).
- PPG, PPI, GYRO, MAGN and MARKER files: not read; the summary lists them.

Time: Sensor Logger phone times are local wall-clock times without an offset, so the phone's zone
is configuration (`timezone`). Reading a Sensor Logger file without it is an error, never a guess
of UTC. The converted recording's epoch nanoseconds are UTC instants and need no zone.

Identity: the device id comes from the file name (`polar-h10-9EE99320`; `polar-h10` for the
converted recording, which names no sensor). The user is `user_id` when given, else the device id
(Sensor Logger) or the file's stem (converted). A recording's ECG, RR and heart rate therefore share
user and device, and the ECG and RR are stored and published with their heart rate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Final, cast

import numpy as np
import pandas as pd

from ohx_dagster.config.locations import Location, location
from ohx_dagster.config.locations import kind as location_kind
from ohx_dagster.core.errors import ConfigError, ValidationError
from ohx_dagster.core.ids import check_user_id
from ohx_dagster.core.models import (
    HARD_LIMITS,
    AggregationLevel,
    HealthDataType,
    HealthSyncConfig,
)
from ohx_dagster.core.records import concat, dedupe, make_batch
from ohx_dagster.core.units import to_canonical
from ohx_dagster.providers.base import ReadOnce
from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates, inside
from ohx_dagster.providers.polar.files import (
    CONVERTED_HEADER,
    HEADERS,
    MARKER_NAME,
    NAME_PATTERN,
    PolarFileError,
    SensorLoggerFile,
    Stream,
    check_header,
    continuous_runs,
    first_line,
    header_of,
    localize,
    measured_rate_hz,
    read_acc,
    read_converted,
    read_ecg,
    read_hr,
    read_rr,
)

NAME: Final = "polar"
CONVERTED_DEVICE: Final = "polar-h10"
_READ: Final = ", ".join(HEADERS)


@dataclass
class ImportSummary:
    """What the files held and what became records; `lines()` says it in words."""

    recordings: list[str] = field(default_factory=list)
    files: Counter[str] = field(default_factory=Counter)  # files read per layout
    rows: Counter[str] = field(default_factory=Counter)  # data rows read per layout
    records: Counter[str] = field(default_factory=Counter)  # records per data type
    not_stored: Counter[str] = field(default_factory=Counter)  # values checked, not stored
    no_contact: int = 0  # HR rows of 0 bpm
    ecg_runs: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why it was not read

    def lines(self) -> list[str]:
        out = [f"recordings: {', '.join(self.recordings)}"]
        out += [
            f"{kind}: {self.files[kind]} files, {n} rows" for kind, n in sorted(self.rows.items())
        ]
        out += [f"{kind}: {n} records" for kind, n in sorted(self.records.items())]
        if self.files["ECG"] or self.files["converted"]:
            out.append(f"ecg: {self.ecg_runs} continuous runs of samples, one record each")
        if self.no_contact:
            out.append(f"HR: {self.no_contact} rows of 0 bpm (no skin contact), not stored")
        for what, n in sorted(self.not_stored.items()):
            reason = "no data type for acceleration" if what == "ACC samples" else "no data type"
            out.append(f"{what}: {n} read to check the layout, not stored ({reason})")
        out += [f"not read: {name} ({why})" for name, why in sorted(self.skipped.items())]
        return out


def _check_range(stream: Stream, kind: HealthDataType, unit: str, column: str) -> np.ndarray:
    """The values in canonical units; a value no working device gives names its line."""
    canonical = to_canonical(kind.value, stream.values, unit)
    low, high = HARD_LIMITS[kind]
    bad = ~np.isfinite(canonical) | (canonical < low) | (canonical > high)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        stream.fail(
            row,
            f"{column} {stream.values[row]:g} is outside {low:g}..{high:g} {kind.canonical_unit}",
            f"a value a working sensor measures for {kind.value}",
        )
    return canonical


def _notification_times(stream: Stream) -> pd.DatetimeIndex:
    """RR rows sharing one arrival time: each is the arrival minus the intervals after it."""
    times = pd.Series(stream.times.asi8)
    group = (times != times.shift()).cumsum()
    rr = pd.Series(stream.values)
    later = rr.groupby(group).transform("sum") - rr.groupby(group).cumsum()
    return stream.times - pd.to_timedelta(later.to_numpy(), unit="ms")


class PolarFileSource(ReadOnce):
    """Polar recordings from a file or a folder; one user per sensor unless `user_id` is given.
    Samples dated outside `dates` (default: 2000-01-01 to tomorrow of the clock now) are refused
    and counted in `refused`; a file in the folder that is a symbolic link leading out of it is
    refused."""

    name = NAME

    def __init__(
        self,
        path: Location | str,
        *,
        timezone: str | None = None,
        user_id: str | None = None,
        dates: PlausibleDates | None = None,
    ) -> None:
        self.refused = RefusedDates(dates or PlausibleDates.at(datetime.now(UTC)))
        # A local path or an object-store URL (s3://bucket/exports/polar/...).
        self.path = location(path, "OHX_POLAR_CSV")
        if timezone is not None:
            HealthSyncConfig(user_id="tz-check", provider=NAME, timezone=timezone)  # validates
        self.timezone = timezone
        self.user_id = user_id or None
        self.logged: list[SensorLoggerFile] = []
        self.converted: list[Location] = []
        self.skipped: dict[str, str] = {}
        found = location_kind(self.path, "OHX_POLAR_CSV")
        if found == "file":
            self._add_file(self.path)
        elif found == "folder":
            self._add_folder(self.path)
        else:
            raise ValidationError(
                "OHX_POLAR_CSV",
                str(self.path),
                "a Polar recording file or a folder of Polar Sensor Logger recordings",
            )
        if self.logged and timezone is None:
            raise ConfigError(
                f"{self.logged[0].path.name}: Polar Sensor Logger phone times are local times "
                "without an offset; give the phone's IANA zone (timezone, e.g. 'Europe/Helsinki')"
            )

    def _add_logged(self, logged: SensorLoggerFile) -> None:
        check_header(
            logged.path,
            first_line(logged.path),
            ";",
            HEADERS[logged.stream],
            f"Polar Sensor Logger {logged.stream}",
        )
        self.logged.append(logged)

    def _add_file(self, path: Location) -> None:
        logged = SensorLoggerFile.parse(path)
        if logged is not None:
            if logged.stream not in HEADERS:
                raise ValidationError(
                    "OHX_POLAR_CSV",
                    path.name,
                    f"a Polar Sensor Logger {_READ} file or a recording's folder "
                    f"({logged.stream} has no data type here)",
                )
            self._add_logged(logged)
            return
        line = first_line(path)
        for stream, headers in HEADERS.items():
            if header_of(line, ";") in headers:
                raise PolarFileError(
                    path,
                    1,
                    f"a Polar Sensor Logger {stream} file renamed to {path.name!r}",
                    f"its original name {NAME_PATTERN}: the device id comes from it",
                )
        check_header(path, line, ",", (CONVERTED_HEADER,), "converted ECGLogger")
        self.converted.append(path)

    def _add_folder(self, folder: Location) -> None:
        entries: list[Location] = sorted(folder.iterdir(), key=str)
        for path in entries:
            path = inside(folder, path, "OHX_POLAR_CSV")
            logged = SensorLoggerFile.parse(path)
            if not path.is_file():
                self.skipped[path.name] = "a folder: not searched"
            elif logged is not None and logged.stream in HEADERS:
                self._add_logged(logged)
            elif logged is not None:
                self.skipped[path.name] = f"{logged.stream}: no data type for it here"
            elif MARKER_NAME.fullmatch(path.name):
                self.skipped[path.name] = "Sensor Logger markers: not read"
            elif path.name.startswith("Polar_"):
                raise ValidationError(
                    "file",
                    path.name,
                    f"a Polar Sensor Logger file name {NAME_PATTERN}",
                    where=str(folder),
                )
            else:
                self.skipped[path.name] = "not a Polar Sensor Logger file name"
        if not self.logged:
            raise ValidationError(
                "OHX_POLAR_CSV",
                str(folder),
                f"a folder holding a Polar Sensor Logger recording: {_READ} files named "
                f"{NAME_PATTERN}",
            )

    def _user(self, logged: SensorLoggerFile | None, path: Location) -> str:
        user = self.user_id or (logged.device_id if logged is not None else path.stem)
        try:  # the rule every entry point applies (ohx_dagster/core/ids.py)
            return check_user_id(user)
        except ValidationError as exc:
            where = f"the person of {path.name}: name another with user_id"
            raise ValidationError(exc.field, exc.value, exc.expected, where=where) from None

    @cached_property
    def _imported(self) -> tuple[pd.DataFrame, ImportSummary]:
        summary = ImportSummary(
            recordings=sorted(
                {f.recording for f in self.logged} | {p.name for p in self.converted}
            ),
            skipped=dict(self.skipped),
        )
        parts: list[pd.DataFrame] = []
        for path in self.converted:
            parts += self._read_converted(path, summary)
        for logged in self.logged:
            parts += self._read_logged(logged, summary)
        batch = self.refused.keep(dedupe(concat(parts)), str(self.path))
        batch = batch.sort_values(["user_id", "data_type", "ts"], ignore_index=True)
        # Counted by the data_type column's text (pandas types the index of counts as Hashable).
        summary.records.update(cast("dict[str, int]", batch["data_type"].value_counts().to_dict()))
        return batch, summary

    @property
    def records(self) -> pd.DataFrame:
        return self._imported[0]

    @property
    def summary(self) -> ImportSummary:
        return self._imported[1]

    def _local(self, stream: Stream) -> pd.DatetimeIndex:
        """UTC instants shown in the configured zone, so records keep the local offset."""
        return stream.times.tz_convert(self.timezone) if self.timezone else stream.times

    def _read_converted(self, path: Location, summary: ImportSummary) -> list[pd.DataFrame]:
        recording = read_converted(path)
        summary.files["converted"] += 1
        summary.rows["converted"] += len(recording.ecg.lines)
        common = {
            "provider": NAME,
            "user_id": self._user(None, path),
            "device_id": CONVERTED_DEVICE,
        }
        parts = self._ecg(recording.ecg, "mV", "ecg", common, summary, self._local(recording.ecg))
        for stream, kind, unit, column in (
            (recording.hr, HealthDataType.HEART_RATE, "bpm", "hr"),
            (recording.rr, HealthDataType.RR_INTERVALS, "ms", "rr"),
        ):
            values = _check_range(stream, kind, unit, column)
            parts.append(
                make_batch(
                    **common,
                    data_type=kind,
                    timestamps=self._local(stream),
                    values=values,
                    unit=kind.canonical_unit,
                )
            )
        return parts

    def _read_logged(self, logged: SensorLoggerFile, summary: ImportSummary) -> list[pd.DataFrame]:
        assert self.timezone is not None  # checked in __init__
        stream_name = logged.stream
        common = {
            "provider": NAME,
            "user_id": self._user(logged, logged.path),
            "device_id": logged.device_id,
        }
        summary.files[stream_name] += 1
        if stream_name == "ACC":
            samples = read_acc(logged.path)
            summary.rows["ACC"] += samples
            summary.not_stored["ACC samples"] += samples
            return []
        if stream_name == "ECG":
            stream = read_ecg(logged.path)
            summary.rows["ECG"] += len(stream.lines)
            stream = self._near_dates(stream, "ecg")
            local = localize(stream, self.timezone)
            return self._ecg(stream, "uV", "ecg [uV]", common, summary, local.times)
        if stream_name == "HR":
            heart_rate = read_hr(logged.path)
            stream = heart_rate.stream
            summary.rows["HR"] += len(stream.lines)
            summary.not_stored.update(heart_rate.extra)
            contact = stream.values != 0
            summary.no_contact += int((~contact).sum())
            stream = localize(self._near_dates(stream.where(contact), "heart_rate"), self.timezone)
            kind, unit, column, times = HealthDataType.HEART_RATE, "bpm", "HR [bpm]", None
        else:
            stream = read_rr(logged.path)
            summary.rows["RR"] += len(stream.lines)
            stream = localize(self._near_dates(stream, "rr_intervals"), self.timezone)
            kind, unit, column = HealthDataType.RR_INTERVALS, "ms", "RR-interval [ms]"
            times = _notification_times(stream)
        values = _check_range(stream, kind, unit, column)
        return [
            make_batch(
                **common,
                data_type=kind,
                timestamps=stream.times if times is None else times,
                values=values,
                unit=kind.canonical_unit,
            )
        ]

    def _near_dates(self, stream: Stream, kind: str) -> Stream:
        """The rows whose phone time lies within a day of the plausible dates; the others are
        refused before they are localized (9999-12-31 23:00 in a zone west of UTC is an instant
        of the year 10000, which no zone library can name). The exact cut is made in UTC."""
        dates, margin = self.refused.dates, pd.Timedelta(days=1)
        far = np.asarray(
            (stream.times < pd.Timestamp(dates.earliest) - margin)
            | (stream.times >= pd.Timestamp(dates.latest) + 2 * margin)
        )
        if not far.any():
            return stream
        row = int(np.flatnonzero(far)[0])
        example = f"{stream.times[row]} ({stream.path.name} line {stream.lines[row]})"
        self.refused.add(kind, int(far.sum()), example)
        return stream.where(~far)

    def _ecg(
        self,
        stream: Stream,
        unit: str,
        column: str,
        common: dict[str, str],
        summary: ImportSummary,
        starts: pd.DatetimeIndex,
    ) -> list[pd.DataFrame]:
        """One record per continuous run of samples, rate measured on the sensor's clock."""
        assert stream.clock_ns is not None
        _check_range(stream, HealthDataType.ECG, unit, column)
        parts = []
        for start, stop in continuous_runs(stream.clock_ns):
            if stop - start < 2:
                summary.not_stored["ECG samples alone between two gaps (no rate)"] += 1
                continue
            rate = measured_rate_hz(stream.clock_ns[start:stop])
            if not 50.0 <= rate <= 10_000.0:
                stream.fail(
                    start,
                    f"the {stop - start} ECG samples from here to line {stream.lines[stop - 1]} "
                    f"measure {rate:.3f} Hz on the sensor clock",
                    "50..10000 Hz (the H10 samples ECG at about 130 Hz)",
                )
            samples = stream.values[start:stop]
            parts.append(
                make_batch(
                    **common,
                    data_type=HealthDataType.ECG,
                    timestamps=starts[start : start + 1],
                    values=None,
                    unit=unit,
                    samples=[samples],
                    sampling_rate_hz=rate,
                    duration_s=len(samples) / rate,
                )
            )
            summary.ecg_runs += 1
        return parts

    def discover_users(self) -> list[HealthSyncConfig]:
        users = {self._user(f, f.path) for f in self.logged}
        users |= {self._user(None, p) for p in self.converted}
        return [
            HealthSyncConfig(
                user_id=user,
                provider=NAME,
                aggregation=AggregationLevel.INDIVIDUAL,
                timezone=self.timezone or "UTC",
            )
            for user in sorted(users)
        ]
