"""Polar recording files as the apps write them, read into arrays with every line checked.

Two layouts are read; SOURCE.md beside this file names the source of every fact below.

Polar Sensor Logger (an Android app on the Polar SDK, not made by Polar) writes one text file per
stream of a recording, named `Polar_<model>_<device id>_<yyyymmdd>_<hhmmss>_<STREAM>.txt`
(`Polar_H10_9EE99320_20240326_173049_ECG.txt`), `;`-separated, one header line:

| stream | header |
|---|---|
| ECG | `Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]` |
| HR (older) | `Phone timestamp;HR [bpm]` |
| HR (newer) | `Phone timestamp;HR [bpm];HRV [ms];Breathing interval [rpm];` |
| RR | `Phone timestamp;RR-interval [ms]` |
| ACC | `Phone timestamp;sensor timestamp [ns];X [mg];Y [mg];Z [mg]` |

- `Phone timestamp` is the phone's local wall-clock time when the data arrived,
  `2022-04-25T11:39:36.978`: always three fractional digits, never an offset.
- `sensor timestamp [ns]` counts from 2000-01-01 on the sensor's own clock: the local wall-clock
  time once a phone has set it, else from a default (an H10 restarts at 2019-01-01 whenever it
  shuts down). Only its steps are used: they measure the sampling rate and show gaps.
- `timestamp [ms]` has no documented meaning: checked to be a number, not used.
- HR rows are ragged: a row may stop after `HR [bpm]`; the older layout's extra fields are RR
  intervals; an HR of 0 means no skin contact. A row may end with one extra `;`.
- Numbers follow the phone's locale: `12,1` and `12.1` are both read (the separator is `;`).
- PPG, PPI, GYRO, MAGN and MARKER files have no data type here and are not read.

Converted ECGLogger recording (../shared/data/polar-h10): one comma-separated file with the header
`time_ns,time_utc,ecg,hr,rr`, a row per ECG sample: Unix-epoch nanoseconds, the same instant as
ISO-8601 UTC (not read), the ECG in mV, heart rate (bpm) and RR (ms) on the rows that carry them.

Any departure is one `PolarFileError` line naming the file, the line and what was expected.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Final, NoReturn

import numpy as np
import pandas as pd

from ohx_dagster.config.locations import Location
from ohx_dagster.core.errors import ValidationError

NAME_PATTERN: Final = "Polar_<model>_<device id>_<yyyymmdd>_<hhmmss>_<STREAM>.txt"
_SENSOR_LOGGER_NAME: Final = re.compile(
    r"Polar_(?P<model>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_(?P<device>[0-9A-Fa-f]{8})"
    r"_(?P<date>\d{8})_(?P<time>\d{6})_(?P<stream>[A-Z0-9]+)\.txt"
)
MARKER_NAME: Final = re.compile(r"MARKER_\d{8}_\d{6}\.txt")

PHONE: Final = "Phone timestamp"
ECG_HEADER: Final = (PHONE, "sensor timestamp [ns]", "timestamp [ms]", "ecg [uV]")
HR_HEADERS: Final = (
    (PHONE, "HR [bpm]", "HRV [ms]", "Breathing interval [rpm]"),
    (PHONE, "HR [bpm]"),
)
RR_HEADER: Final = (PHONE, "RR-interval [ms]")
ACC_HEADER: Final = (PHONE, "sensor timestamp [ns]", "X [mg]", "Y [mg]", "Z [mg]")
HEADERS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "ECG": (ECG_HEADER,),
    "HR": HR_HEADERS,
    "RR": (RR_HEADER,),
    "ACC": (ACC_HEADER,),
}
CONVERTED_HEADER: Final = ("time_ns", "time_utc", "ecg", "hr", "rr")

PHONE_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%f"
# A clock step over this many typical steps (three or more samples missing), or one that does not
# go forward (a sensor clock reset), ends a continuous run of ECG samples.
GAP_STEPS: Final = 4.0
_NUMBER: Final = r"[+-]?\d+(?:[.,]\d+)?(?:[eE][+-]?\d+)?"
_INT64_MAX: Final = str(np.iinfo(np.int64).max)


class PolarFileError(ValidationError):
    """A Polar file that is not in its layout: `<file> line <n>: <problem> (expected <what>)`."""

    def __init__(self, path: Location, line: int, problem: str, expected: str) -> None:
        super().__init__(path.name, f"line {line}", expected)
        self.path = path
        self.line = line
        self.problem = problem
        self.args = (f"{path.name} line {line}: {problem} (expected {expected})",)


def _show(text: str) -> str:
    """A value quoted for an error line, shortened: a binary file's 'line' can be megabytes."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass(frozen=True, slots=True)
class SensorLoggerFile:
    """One stream file of a Polar Sensor Logger recording, known by its name."""

    path: Location
    model: str  # "H10", "Sense" (Verity Sense), "OH1": the sensor's Bluetooth name
    device: str  # the sensor's 8-hex-digit device id
    started: str  # yyyymmdd_hhmmss, phone local time
    stream: str  # ECG, HR, RR, ACC, PPG, ...

    @classmethod
    def parse(cls, path: Location) -> SensorLoggerFile | None:
        found = _SENSOR_LOGGER_NAME.fullmatch(path.name)
        if found is None:
            return None
        return cls(
            path,
            found["model"],
            found["device"].upper(),
            f"{found['date']}_{found['time']}",
            found["stream"],
        )

    @property
    def device_id(self) -> str:
        return f"polar-{self.model.lower().replace('_', '-')}-{self.device}"

    @property
    def recording(self) -> str:
        return f"Polar_{self.model}_{self.device}_{self.started}"


def _decode(path: Location, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolarFileError(
            path, line, f"byte {data[exc.start]:#04x} is not UTF-8 text", "a text file"
        ) from None


def first_line(path: Location) -> str | None:
    """The header line alone (layouts are told apart and checked before a file is read); None
    for an empty file."""
    with path.open("rb") as stream:
        # read + split, not readline(size): an object-store file (fsspec) has no sized readline.
        raw = stream.read(65536)
    end = raw.find(b"\n")
    raw = raw if end < 0 else raw[: end + 1]
    return _decode(path, raw).rstrip("\r\n") if raw else None


def header_of(line: str | None, sep: str) -> tuple[str, ...]:
    """The header's fields; one trailing separator is allowed (newer HR files end with `;`)."""
    return tuple((line or "").strip().removesuffix(sep).split(sep))


def check_header(
    path: Location, line: str | None, sep: str, headers: tuple[tuple[str, ...], ...], what: str
) -> tuple[str, ...]:
    fields = header_of(line, sep)
    for header in headers:
        if fields == header:
            return header
    expected = " or ".join(repr(sep.join(h)) for h in headers)
    if line is None:
        raise PolarFileError(path, 1, "the file is empty", f"the header {expected}")
    raise PolarFileError(path, 1, f"header {_show(line)} is not a {what} header", expected)


@dataclass(frozen=True, slots=True)
class Table:
    """A file's data rows split into fields (strings; None past a short row's end)."""

    path: Location
    sep: str
    header: tuple[str, ...]
    fields: pd.DataFrame
    counts: np.ndarray  # fields per row
    lines: np.ndarray  # line number of each row in the file (the header is line 1)

    def __len__(self) -> int:
        return len(self.lines)

    def fail(self, row: int, problem: str, expected: str) -> NoReturn:
        raise PolarFileError(self.path, int(self.lines[row]), problem, expected)

    def name(self, index: int) -> str:
        return self.header[index] if index < len(self.header) else f"field {index + 1}"

    def text(self, index: int) -> pd.Series:
        if index >= self.fields.shape[1]:
            return pd.Series([""] * len(self), dtype=object)
        return self.fields[index].fillna("").str.strip()

    def require_fields(self, minimum: int, maximum: int | None) -> None:
        """Every row holds minimum..maximum fields, plus at most one empty one (a trailing sep)."""
        counts = self.counts
        ok = counts >= minimum
        if maximum is not None:
            trailing = np.zeros(len(counts), dtype=bool)
            over = counts == maximum + 1
            if over.any():
                trailing[over] = self.fields[maximum].to_numpy()[over] == ""
            ok &= (counts <= maximum) | trailing
        bad = np.flatnonzero(~ok)
        if bad.size:
            row = int(bad[0])
            if maximum is None:
                span = f"{minimum} or more"
            elif maximum == minimum:
                span = str(minimum)
            else:
                span = f"{minimum} to {maximum}"
            self.fail(
                row,
                f"{counts[row]} field{'' if counts[row] == 1 else 's'}",
                f"{span} fields separated by {self.sep!r} as in the header "
                f"{self.sep.join(self.header)!r}",
            )

    def numbers(self, index: int, *, required: bool = True) -> np.ndarray:
        """Field `index` as float64 (decimal point or comma); NaN where optional and empty."""
        text = self.text(index)
        empty = (text == "").to_numpy()
        valid = text.str.fullmatch(_NUMBER).to_numpy(dtype=bool)
        bad = ~valid & (True if required else ~empty)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = text.iloc[row]
            if value:
                problem = f"{self.name(index)} {_show(value)} is not a number"
            else:
                problem = f"{self.name(index)} is empty"
            self.fail(row, problem, "a number such as 812, 12.1 or 12,1")
        values = np.full(len(self), np.nan)
        values[valid] = text[valid].str.replace(",", ".", regex=False).astype("float64")
        return values

    def integers(self, index: int) -> np.ndarray:
        """Field `index` as int64 (nanosecond clocks: 19 digits, beyond float64's precision)."""
        text = self.text(index)
        bad = ~text.str.fullmatch(r"\d{1,19}").to_numpy(dtype=bool)
        bad |= ((text.str.len() == 19) & (text > _INT64_MAX)).to_numpy(dtype=bool)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            self.fail(
                row,
                f"{self.name(index)} {_show(text.iloc[row])} is not a whole number",
                "a count of nanoseconds such as 768149460000000000",
            )
        return text.astype("int64").to_numpy()

    def phone_times(self, index: int = 0) -> pd.DatetimeIndex:
        """Phone timestamps as naive local times; the zone is configuration, not in the file."""
        text = self.text(index)
        parsed = pd.to_datetime(text, format=PHONE_FORMAT, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            self.fail(
                row,
                f"{self.name(index)} {_show(text.iloc[row])} is not a phone time",
                "local time as YYYY-MM-DDThh:mm:ss.mmm, without an offset",
            )
        return pd.DatetimeIndex(parsed).as_unit("us")


def read_table(path: Location, sep: str, headers: tuple[tuple[str, ...], ...], what: str) -> Table:
    text = _decode(path, path.read_bytes())
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()  # the newline ending the last row, and blank lines after it
    header = check_header(path, lines[0] if text else None, sep, headers, what)
    body = pd.Series(lines[1:], dtype=object).str.removesuffix("\r")
    counts: np.ndarray
    if body.empty:
        fields = pd.DataFrame(index=body.index)
        counts = np.zeros(0, dtype=np.int64)
    else:
        fields = body.str.split(sep, expand=True, regex=False)
        counts = body.str.count(re.escape(sep)).to_numpy() + 1
    return Table(path, sep, header, fields, counts, np.arange(2, len(body) + 2))


@dataclass(frozen=True, slots=True)
class Stream:
    """One file's rows: line numbers, times (naive local for Sensor Logger), values."""

    path: Location
    lines: np.ndarray
    times: pd.DatetimeIndex
    values: np.ndarray
    clock_ns: np.ndarray | None = None  # the sensor's clock per sample (ECG)

    def fail(self, row: int, problem: str, expected: str) -> NoReturn:
        raise PolarFileError(self.path, int(self.lines[row]), problem, expected)

    def where(self, keep: np.ndarray) -> Stream:
        clock = None if self.clock_ns is None else self.clock_ns[keep]
        return Stream(self.path, self.lines[keep], self.times[keep], self.values[keep], clock)


def _logger(path: Location, stream: str) -> Table:
    return read_table(path, ";", HEADERS[stream], f"Polar Sensor Logger {stream}")


def read_ecg(path: Location) -> Stream:
    table = _logger(path, "ECG")
    table.require_fields(4, 4)
    table.numbers(2)  # timestamp [ms]: meaning undocumented, a number all the same
    return Stream(path, table.lines, table.phone_times(), table.numbers(3), table.integers(1))


@dataclass(frozen=True, slots=True)
class HeartRate:
    stream: Stream  # bpm, 0 where the sensor had no skin contact
    extra: dict[str, int]  # values read from the columns that are not stored, per column


def read_hr(path: Location) -> HeartRate:
    table = _logger(path, "HR")
    newer = len(table.header) == 4
    # Newer: HRV and breathing may be missing from a row; older: any number of RR intervals follow.
    table.require_fields(2, 4 if newer else None)
    extra: dict[str, int] = {}
    for index in range(2, int(table.counts.max(initial=2))):
        values = table.numbers(index, required=False)
        name = table.name(index) if newer else "RR-interval in an HR row"
        extra[name] = extra.get(name, 0) + int(np.isfinite(values).sum())
    stream = Stream(path, table.lines, table.phone_times(), table.numbers(1))
    return HeartRate(stream, {k: v for k, v in extra.items() if v})


def read_rr(path: Location) -> Stream:
    table = _logger(path, "RR")
    table.require_fields(2, 2)
    return Stream(path, table.lines, table.phone_times(), table.numbers(1))


def read_acc(path: Location) -> int:
    """Checks every line of an accelerometer file; returns its sample count (not stored)."""
    table = _logger(path, "ACC")
    table.require_fields(5, 5)
    table.phone_times()
    table.integers(1)
    for index in (2, 3, 4):
        table.numbers(index)
    return len(table)


@dataclass(frozen=True, slots=True)
class Converted:
    """The converted ECGLogger recording, rows in time order."""

    ecg: Stream  # mV, with the file's own clock (epoch ns per sample)
    hr: Stream  # bpm, rows that carry one
    rr: Stream  # ms, rows that carry one


def read_converted(path: Location) -> Converted:
    table = read_table(path, ",", (CONVERTED_HEADER,), "converted ECGLogger")
    table.require_fields(5, 5)
    time_ns = table.integers(0)
    order = np.argsort(time_ns, kind="stable")
    times = pd.DatetimeIndex(pd.to_datetime(time_ns[order] // 1000, unit="us", utc=True))
    lines = table.lines[order]
    ecg = Stream(path, lines, times, table.numbers(2)[order], time_ns[order])
    columns = []
    for index in (3, 4):
        values = table.numbers(index, required=False)[order]
        keep = np.isfinite(values)
        columns.append(Stream(path, lines[keep], times[keep], values[keep]))
    return Converted(ecg, *columns)


def localize(stream: Stream, zone: str) -> Stream:
    """Phone wall-clock times as instants in the phone's zone. The hour repeated when clocks go
    back is told apart by the order of the rows; a time that names no instant or two is an error
    (it means the zone is not the phone's)."""
    naive = stream.times
    probe = naive.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    times = probe
    if probe.isna().any():
        try:
            times = naive.tz_localize(zone, ambiguous="infer", nonexistent="raise")
        except ValueError:
            row = int(np.flatnonzero(probe.isna())[0])
            stream.fail(
                row,
                f"phone time {naive[row].strftime(PHONE_FORMAT)[:-3]} is skipped or repeated by "
                f"a clock change in {zone}",
                "the zone the phone was set to during the recording",
            )
    return Stream(stream.path, stream.lines, times, stream.values, stream.clock_ns)


def continuous_runs(clock_ns: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) row ranges in which the sensor clock steps forward without a gap."""
    if len(clock_ns) < 2:
        return [(0, len(clock_ns))] if len(clock_ns) else []
    steps = np.diff(clock_ns)
    forward = steps[steps > 0]
    typical = float(np.median(forward)) if forward.size else 0.0
    breaks = np.flatnonzero((steps <= 0) | (steps > GAP_STEPS * typical)) + 1
    edges = [0, *breaks.tolist(), len(clock_ns)]
    return list(itertools.pairwise(edges))


def measured_rate_hz(clock_ns: np.ndarray) -> float:
    """Samples per second on the clock that stamped them: (n - 1) steps over first to last."""
    return float((len(clock_ns) - 1) * 1e9 / (clock_ns[-1] - clock_ns[0]))
