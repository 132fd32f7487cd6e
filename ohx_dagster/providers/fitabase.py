"""Fitbit data exports in the Fitabase CSV layout (Fitbit's own export since the Web API shut down).

The files carry the participant's local wall-clock time (`M/D/YYYY h:mm:ss AM/PM`) with no zone, so
the zone is configuration (`OHX_FITABASE_TZ`, required: never guessed) and every record keeps the
offset it implies. The zone is part of the device id ("fitbit@America/Chicago"): the same file read
in another zone is another series, so its resources get other ids and never overwrite the first
reading's on a FHIR server; the Provenance of every published day names the zone too. Several
export directories may be given; a record found in two of them is one record (same identity).

Read: heartrate_seconds_merged.csv (heart rate, /min), hourlySteps_merged.csv (steps per hour),
weightLogInfo_merged.csv (weight, kg). dailyActivity_merged.csv is not read: its TotalSteps repeats
the hourly steps and would count them twice.

A directory is a local path or an object-store prefix (s3://bucket/exports/fitabase, see
ohx_dagster/config/locations.py), so a run in its own container reads the export without a shared
disk. An export file that is a symbolic link leading out of its directory is refused, and rows dated
outside the plausible dates (providers/bounds.py) are refused and counted in `refused`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Final, cast

import numpy as np
import pandas as pd

from ohx_dagster.config.locations import Location, kind, location, split_locations
from ohx_dagster.core.errors import ProviderError, ValidationError
from ohx_dagster.core.ids import check_user_id
from ohx_dagster.core.models import (
    AggregationLevel,
    HealthDataType,
    HealthSyncConfig,
    SyncFrequency,
)
from ohx_dagster.core.records import concat, dedupe, empty_batch, make_batch
from ohx_dagster.providers.base import ReadOnce
from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates, inside

NAME: Final = "fitabase"
SETTING: Final = "OHX_FITABASE_DIR"
TIME_FORMAT: Final = "%m/%d/%Y %I:%M:%S %p"
DEVICE: Final = "fitbit"


def device_id(zone: str) -> str:
    """The export's device, as read in this zone."""
    return f"{DEVICE}@{zone}"


@dataclass(frozen=True, slots=True)
class ExportFile:
    name: str
    data_type: HealthDataType
    time_column: str
    value_column: str
    unit: str
    duration_s: float | None


EXPORT_FILES: Final = (
    ExportFile(
        "heartrate_seconds_merged.csv", HealthDataType.HEART_RATE, "Time", "Value", "/min", None
    ),
    ExportFile(
        "hourlySteps_merged.csv", HealthDataType.STEPS, "ActivityHour", "StepTotal", "1", 3600.0
    ),
    ExportFile("weightLogInfo_merged.csv", HealthDataType.WEIGHT, "Date", "WeightKg", "kg", None),
)


def parse_dirs(value: str) -> list[Location]:
    """OHX_FITABASE_DIR: one directory, or several separated by the OS path separator; each a
    path or a URL (s3://bucket/prefix)."""
    return [location(part, SETTING) for part in split_locations(value)]


def _localize(
    file: Location, column: pd.Series, zone: str, dates: PlausibleDates
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The wall-clock times as instants in `zone`, and which lie outside the plausible dates.

    Times more than a day outside are refused before they are localized: 12/31/9999 11 PM in
    America/Chicago is an instant of the year 10000, which no zone library can name."""
    parsed = pd.to_datetime(column, format=TIME_FORMAT, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValidationError(
            "time", column.iloc[row], "M/D/YYYY h:mm:ss AM/PM", where=f"{file}, data row {row + 1}"
        )
    index = pd.DatetimeIndex(parsed)
    margin = pd.Timedelta(days=1)
    far = np.asarray(
        (index < pd.Timestamp(dates.earliest) - margin)
        | (index >= pd.Timestamp(dates.latest) + 2 * margin)
    )
    if far.any():
        # NaT: localized as NaT (a DatetimeIndex's where is one; pandas-stubs says Index).
        index = cast(pd.DatetimeIndex, index.where(~far))
    # The hour repeated when clocks go back is read as the first (daylight) one; the hour that
    # does not exist when clocks go forward is moved forward. Both are how Fitbit devices log.
    stamps = index.tz_localize(
        zone, ambiguous=np.ones(len(index), dtype=bool), nonexistent="shift_forward"
    )
    return stamps, far | dates.outside(stamps)


def read_export_file(
    path: Location, spec: ExportFile, zone: str, refused: RefusedDates
) -> pd.DataFrame:
    """One export CSV as a validated record batch; errors name the file, row and column. Rows
    dated outside the plausible dates are left out and counted in `refused`."""
    try:
        with path.open("rb") as stream:
            table = pd.read_csv(stream, dtype={"Id": "string"}, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ProviderError(f"{path}: not a readable CSV export ({exc})") from exc
    missing = {"Id", spec.time_column, spec.value_column} - set(table.columns)
    if missing:
        raise ValidationError(
            "columns", sorted(missing), f"present in {spec.name}", where=str(path)
        )
    table = table.dropna(how="all")
    if table.empty:
        return empty_batch()
    values = pd.to_numeric(table[spec.value_column], errors="coerce")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ValidationError(
            spec.value_column,
            table[spec.value_column].iloc[row],
            "a number",
            where=f"{path}, data row {row + 1}",
        )
    stamps, outside = _localize(path, table[spec.time_column], zone, refused.dates)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        example = f"{table[spec.time_column].iloc[row]} ({path}, data row {row + 1})"
        refused.add(spec.data_type.value, int(outside.sum()), example)
        keep = ~outside
        table, values, stamps = table[keep], values[keep], stamps[keep]
        if table.empty:
            return empty_batch()
    offsets = (stamps.tz_convert(zone).map(lambda t: t.utcoffset().total_seconds() // 60)).astype(
        "int64"
    )
    parts = []
    for user_id, rows in table.groupby("Id", sort=True).indices.items():
        try:
            check_user_id(str(user_id), "Id")  # the rule every entry point applies
        except ValidationError as exc:
            where = f"{path}, data row {int(rows[0]) + 1}"
            raise ValidationError(exc.field, exc.value, exc.expected, where=where) from None
        parts.append(
            make_batch(
                provider=NAME,
                user_id=str(user_id),
                data_type=spec.data_type,
                timestamps=stamps[rows],
                values=values.to_numpy()[rows],
                unit=spec.unit,
                device_id=device_id(zone),
                utc_offset_min=offsets[rows],
                duration_s=spec.duration_s,
            )
        )
    return concat(parts)


class FitabaseSource(ReadOnce):
    """Reads one or more Fitabase export directories once and serves windows from memory."""

    name = NAME

    def __init__(
        self,
        directories: Sequence[Location | str],
        timezone: str,
        *,
        dates: PlausibleDates | None = None,
    ) -> None:
        # Rows dated outside these (default: 2000-01-01 to tomorrow of the clock now) are refused.
        self.refused = RefusedDates(dates or PlausibleDates.at(datetime.now(UTC)))
        if not directories:
            raise ValidationError(SETTING, "", "one or more export directories")
        self.directories = [location(d, SETTING) for d in directories]
        # The export files each directory holds, found once, when the source is made.
        self.files: list[tuple[Location, ExportFile]] = []
        for directory in self.directories:
            if kind(directory, SETTING) != "folder":
                raise ValidationError(
                    SETTING, str(directory), "an existing directory (or s3:// prefix)"
                )
            held = [(directory / s.name, s) for s in EXPORT_FILES]
            held = [
                (inside(directory, path, SETTING), spec)
                for path, spec in held
                if kind(path, SETTING) == "file"
            ]
            if not held:
                names = [s.name for s in EXPORT_FILES]
                raise ValidationError(
                    SETTING,
                    str(directory),
                    f"a Fitabase export holding {', '.join(names[:-1])} or {names[-1]}",
                )
            self.files += held
        HealthSyncConfig(user_id="tz-check", provider=NAME, timezone=timezone)  # validates the zone
        self.timezone = timezone

    @cached_property
    def records(self) -> pd.DataFrame:
        parts = [
            read_export_file(path, spec, self.timezone, self.refused) for path, spec in self.files
        ]
        batch = dedupe(concat(parts))
        if batch.empty and self.refused.total:
            raise ValidationError(
                SETTING,
                ":".join(str(d) for d in self.directories),
                "data rows dated inside the plausible dates",
                where=self.refused.line(),
            )
        if batch.empty:  # headers and nothing else: an export cut short, never "0 people"
            raise ValidationError(
                SETTING,
                ":".join(str(d) for d in self.directories),
                "data rows in its export files",
                where=", ".join(str(path) for path, _ in self.files) + " hold none",
            )
        return batch.sort_values(["user_id", "data_type", "ts"], ignore_index=True)

    def discover_users(self) -> list[HealthSyncConfig]:
        return [
            HealthSyncConfig(
                user_id=user_id,
                provider=NAME,
                aggregation=AggregationLevel.HOURLY,
                sync_frequency=SyncFrequency.DAILY,
                timezone=self.timezone,
            )
            for user_id in sorted(self.records["user_id"].unique())
        ]
