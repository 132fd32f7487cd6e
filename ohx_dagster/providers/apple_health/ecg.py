"""Apple Watch ECG app recordings: the electrocardiograms/ecg_<date>.csv files of an export.

The layout of the files (the sources of each fact: SOURCE.md beside this module):

    Name,<the person's name>
    Date of Birth,"<their date of birth>"
    Recorded Date,2024-01-24 07:04:49 +0800
    Classification,Heart Rate Below 50
    Symptoms,
    Software Version,1.90
    Device,"Watch5,1"
    Sample Rate,512.508 hertz
    <blank>
    <blank>
    Lead,Lead I
    Unit,µV
    <blank>
    -1.25
    -0.322
    ...                         one voltage per line, about 30 s of them

A header line is `key,value`; a value holding a comma is quoted ("Watch5,1"). The number of
blank lines between the parts varies with the ECG app's version, so blank lines are skipped and
the samples start at the first line that is a number. Samples may carry a decimal comma
("-265,868"). The name and date of birth are never read into a record.

A recording becomes one ECG record exactly as a Polar H10 recording does: the samples in uV,
the sampling rate from "Sample Rate", the timestamp and its offset from "Recorded Date" (the
start of the recording), duration = samples / rate, the device from "Device"
("Apple Watch [Watch5,1]"). Any problem (no sample rate, unknown unit, a sample that is not a
number, ...) is an error naming the file, the line and the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HARD_LIMITS, HealthDataType
from ohx_dagster.core.records import concat, make_batch
from ohx_dagster.core.units import to_canonical
from ohx_dagster.providers.apple_health.export import (
    NAME,
    TIME_FORMAT,
    device_id,
    parse_moment,
)

WATCH: Final = "Apple Watch"
# The unit line's value -> the unit make_batch converts from. The real files write MICRO SIGN
# (U+00B5); GREEK SMALL LETTER MU (U+03BC) and "uV" are the same unit typed otherwise.
UNITS: Final[dict[str, str]] = {"\u00b5V": "uV", "\u03bcV": "uV", "uV": "uV", "mV": "mV"}
_SAMPLE = re.compile(r"[+-]?\d+(?:[.,]\d+)?")
_RATE = re.compile(r"(\d+(?:[.,]\d+)?) ?(?:hertz|hz)", re.IGNORECASE)
_MIN_RATE, _MAX_RATE = 50.0, 10_000.0  # make_batch's bounds for ecg


@dataclass(frozen=True, eq=False)
class EcgRecording:
    """One ECG app recording, read and checked."""

    name: str  # the file, as messages name it
    ts: pd.Timestamp  # UTC, the start of the recording
    utc_offset_min: int  # the offset "Recorded Date" carried
    sampling_rate_hz: float
    samples_uv: np.ndarray
    device: str  # the hardware model of the "Device" line ("Watch5,1"), "" when absent
    classification: str  # the ECG app's finding ("Sinus Rhythm", "Heart Rate Below 50", ...)
    symptoms: str
    software_version: str
    lead: str

    @property
    def duration_s(self) -> float:
        return len(self.samples_uv) / self.sampling_rate_hz

    @property
    def device_id(self) -> str:
        return device_id(WATCH, f"hardware:{self.device}" if self.device else "")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('""', '"')
    return value


def read_ecg(data: bytes, name: str) -> EcgRecording:
    """Parse one ECG CSV (its bytes); `name` is how errors name the file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            "encoding", f"byte {exc.start}", "UTF-8 text (an ECG app CSV)", where=name
        ) from None
    header: dict[str, tuple[str, int]] = {}
    values: list[str] = []
    lines: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if _SAMPLE.fullmatch(line):
            values.append(line)
            lines.append(number)
        elif values:
            raise ValidationError(
                "sample", line, "a number per line, like '-65.732'", where=f"{name}, line {number}"
            )
        else:
            key, _, value = line.partition(",")
            header.setdefault(key.strip(), (_unquote(value.strip()), number))
    if not values:
        raise ValidationError(
            "samples", 0, "voltages after the header, one number per line", where=name
        )
    first = lines[0]

    def field(key: str, example: str) -> tuple[str, int]:
        if key not in header:
            raise ValidationError(
                key,
                None,
                f"a '{key},{example}' line before the samples",
                where=f"{name}, line {first}",
            )
        return header[key]

    date_text, date_line = field("Recorded Date", "2024-01-24 07:04:49 +0800")
    moment = parse_moment(date_text)
    if moment is None:
        raise ValidationError(
            "Recorded Date", date_text, TIME_FORMAT, where=f"{name}, line {date_line}"
        )
    rate_text, rate_line = field("Sample Rate", "512.508 hertz")
    rate_match = _RATE.fullmatch(rate_text)
    rate = float(rate_match[1].replace(",", ".")) if rate_match else np.nan
    if not _MIN_RATE <= rate <= _MAX_RATE:
        raise ValidationError(
            "Sample Rate",
            rate_text,
            f"a rate in hertz like '512.508 hertz', {_MIN_RATE:g}..{_MAX_RATE:g}",
            where=f"{name}, line {rate_line}",
        )
    unit_text, unit_line = field("Unit", "\u00b5V")
    unit = UNITS.get(unit_text)
    if unit is None:
        raise ValidationError(
            "Unit", unit_text, f"one of {sorted(UNITS)}", where=f"{name}, line {unit_line}"
        )
    samples = to_canonical(
        HealthDataType.ECG.value, np.array([v.replace(",", ".") for v in values], float), unit
    )
    low, high = HARD_LIMITS[HealthDataType.ECG]
    bad = np.flatnonzero((samples < low) | (samples > high))
    if bad.size:
        row = int(bad[0])
        raise ValidationError(
            "sample",
            values[row],
            f"{low:g}..{high:g} uV for ecg",
            where=f"{name}, line {lines[row]}",
        )
    local_us, offset = moment
    return EcgRecording(
        name=name,
        ts=pd.Timestamp(local_us - offset * 60_000_000, unit="us", tz="UTC"),
        utc_offset_min=offset,
        sampling_rate_hz=rate,
        samples_uv=samples,
        device=header.get("Device", ("", 0))[0],
        classification=header.get("Classification", ("", 0))[0],
        symptoms=header.get("Symptoms", ("", 0))[0],
        software_version=header.get("Software Version", ("", 0))[0],
        lead=header.get("Lead", ("", 0))[0],
    )


def ecg_batch(recordings: Iterable[EcgRecording], user_id: str) -> pd.DataFrame:
    """The recordings as ECG records, one each, as the Polar source builds them."""
    return concat(
        make_batch(
            provider=NAME,
            user_id=user_id,
            data_type=HealthDataType.ECG,
            timestamps=pd.DatetimeIndex([r.ts]),
            values=None,
            unit="uV",
            device_id=r.device_id,
            utc_offset_min=r.utc_offset_min,
            samples=[r.samples_uv],
            sampling_rate_hz=r.sampling_rate_hz,
            duration_s=r.duration_s,
        )
        for r in recordings
    )
