"""The apple_health source: one export (export.xml or export.zip) is one user's records."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ohx_dagster.config.locations import Location, kind, location
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.ids import check_user_id
from ohx_dagster.core.models import (
    AggregationLevel,
    DateRange,
    HealthDataType,
    HealthSyncConfig,
    SyncFrequency,
)
from ohx_dagster.core.records import concat, dedupe, empty_batch, select
from ohx_dagster.core.times import DAY_US, to_us
from ohx_dagster.providers.apple_health.archive import open_export
from ohx_dagster.providers.apple_health.ecg import EcgRecording, ecg_batch, read_ecg
from ohx_dagster.providers.apple_health.export import (
    NAME,
    QUANTITY_TYPES,
    ExportReader,
    ExportSummary,
    batch,
    parse_export,
    parse_moment,
)
from ohx_dagster.providers.apple_health.workouts import HeldWorkout, workouts_batch
from ohx_dagster.providers.apple_health.zone import ZoneChoice, ZoneEvidence, infer_zone, is_zone
from ohx_dagster.providers.base import ReadOnce
from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates

SETTING = "OHX_APPLE_HEALTH_EXPORT"
_EPOCH = date(1970, 1, 1)


class HeldEcg(NamedTuple):
    """What stays in memory of an ECG recording between the reads of its samples."""

    name: str
    ts: pd.Timestamp
    utc_offset_min: int


class AppleHealthSource(ReadOnce):
    """One export = one user: OHX_APPLE_HEALTH_USER, else the export's parent folder name.

    `timezone` overrides the inferred zone (an IANA name); `zone` says which zone the user gets
    and why, for the importer to print. Samples dated outside `dates` (default: 2000-01-01 to
    tomorrow of the clock when the source is made) are refused and counted in `refused`.

    The export is read once, when first asked, into a temporary file (spill.py) that the
    windows of a sync are read from: `close()` deletes it (so does garbage collection)."""

    name = NAME

    def __init__(
        self,
        path: Location | str,
        *,
        user_id: str | None = None,
        timezone: str | None = None,
        dates: PlausibleDates | None = None,
    ) -> None:
        self.dates = dates or PlausibleDates.at(datetime.now(UTC))
        # A local path or an object-store URL (s3://bucket/exports/ada/export.zip).
        self.path = location(path, SETTING)
        if kind(self.path, SETTING) != "file":
            raise ValidationError(SETTING, str(self.path), "an export.xml or export.zip file")
        if timezone is not None and not is_zone(timezone):
            raise ValidationError("timezone", timezone, "an IANA time zone name")
        self.timezone = timezone
        folder = self.path.resolve().parent if isinstance(self.path, Path) else self.path.parent
        try:  # the rule every entry point applies (ohx_dagster/core/ids.py)
            self.user_id = check_user_id(user_id or folder.name)
        except ValidationError as exc:
            where = f"the person of {self.path}: name another with OHX_APPLE_HEALTH_USER or --user"
            raise ValidationError(exc.field, exc.value, exc.expected, where=where) from None

    @cached_property
    def _parsed(self) -> tuple[ExportReader, list[HeldEcg]]:
        """The export read and checked: its samples in the spill file, and each ECG recording
        kept as its name, start and offset only. A recording is read again when a window asks
        for it, so memory does not grow with how many recordings the export holds (about 120 KB
        of samples each)."""
        with open_export(self.path) as files:
            with files.xml() as stream:
                reader = parse_export(stream, files.xml_name, self.dates)
            try:
                kept = []
                for name in files.ecg_names():
                    recording = read_ecg(files.read(name), name)
                    if self.dates.outside(pd.DatetimeIndex([recording.ts])).any():
                        reader.refused.add("ecg", 1, f"{recording.ts.isoformat()} ({name})")
                    else:
                        kept.append(HeldEcg(name, recording.ts, recording.utc_offset_min))
            except BaseException:
                reader.close()
                raise
        reader.summary.ecg_files = len(kept)
        return reader, kept

    @cached_property
    def _nights(self) -> pd.DataFrame:
        """Every night of the export, grouped once (sleep.py reads all of a device's intervals
        to find where a night ends); each window selects its own."""
        reader = self._parsed[0]
        return concat(
            batch(reader, self.user_id, key, reader.spill.read(reader.keys[key]))
            for key in self._checked
            if key[0] is HealthDataType.SLEEP
        )

    def _workouts(self, held: list[HeldWorkout]) -> pd.DataFrame:
        return workouts_batch(held, self._parsed[0].device_names, self.user_id, NAME)

    def _recordings(self, names: Iterable[str]) -> list[EcgRecording]:
        """These ECG recordings, read from the export again (each was checked when it was
        first read)."""
        wanted = list(names)
        if not wanted:
            return []
        with open_export(self.path) as files:
            files.ecg_names()  # an unzipped export's folder is listed before a file is read
            return [read_ecg(files.read(name), name) for name in wanted]

    def close(self) -> None:
        """Delete the export's spill file, when it was read (asking again reads it again)."""
        parsed = self.__dict__.pop("_parsed", None)
        self.__dict__.pop("_checked", None)
        self.__dict__.pop("_nights", None)
        self.__dict__.pop("records", None)
        if parsed is not None:
            parsed[0].close()

    @property
    def refused(self) -> RefusedDates:
        """The samples refused for their date (the export is read when first asked)."""
        return self._parsed[0].refused

    @property
    def summary(self) -> ExportSummary:
        return self._parsed[0].summary

    @property
    def ecg_recordings(self) -> list[EcgRecording]:
        """The ECG app recordings with what records do not hold (classification, symptoms)."""
        return self._recordings(held.name for held in self._parsed[1])

    @cached_property
    def _checked(self) -> list[tuple[HealthDataType, str]]:
        """Every (type, unit) the export holds, in the order records are built, its values
        checked (a bad value fails here, before anything is stored)."""
        reader, _ = self._parsed
        reader.check()
        return sorted(reader.keys)

    def _nothing(self) -> ValidationError:
        reader = self._parsed[0]
        if reader.refused.total:
            return ValidationError(
                "records",
                0,
                "samples dated inside the plausible dates",
                where=reader.refused.line(),
            )
        held = ", ".join(f"{t} {n}" for t, n in reader.summary.records.most_common(5))
        return ValidationError(
            "records",
            0,
            f"samples of a type this source reads ({', '.join(sorted(QUANTITY_TYPES))}, "
            "blood pressure, beat lists) or electrocardiograms/*.csv",
            where=f"{reader.name} holds {sum(reader.summary.records.values())} Records: {held}",
        )

    def held_days(self) -> list[date]:
        """The UTC days holding a record, sorted, read from the spill file's count per day (no
        records are built); an export holding none is an error."""
        return sorted(self.day_sizes())

    def day_sizes(self) -> dict[date, int]:
        """The records of each UTC day holding some (what a sync call of those days stores, at
        most; less where a sample repeats another); an export holding none is an error."""
        self._checked  # noqa: B018 (a bad value fails here)
        days, counts = self._parsed[0].spill.days()
        sizes = dict(zip(days.tolist(), counts.tolist(), strict=True))
        for held in self._parsed[1]:
            day = held.ts.value // 1000 // DAY_US
            sizes[day] = sizes.get(day, 0) + 1
        for workout in self._parsed[0].workouts:
            sizes[workout.end_us // DAY_US] = sizes.get(workout.end_us // DAY_US, 0) + 1
        if not sizes:
            raise self._nothing()
        return {_EPOCH + timedelta(days=n): sizes[n] for n in sorted(sizes)}

    def held_types(self) -> frozenset[HealthDataType]:
        """The data types the export holds records of."""
        types = {data_type for data_type, _ in self._checked}
        if self._parsed[0].workouts:
            types.add(HealthDataType.WORKOUT)
        return frozenset(types | ({HealthDataType.ECG} if self._parsed[1] else set()))

    @cached_property
    def records(self) -> pd.DataFrame:
        """Every record of the export (a sync reads windows of it through `fetch`, which
        builds the window's records alone: the export's samples stay compact columns)."""
        reader, _ = self._parsed
        recordings = self.ecg_recordings
        # A generator, so the per-type batches are freed once concatenated (peak memory).
        batches = (
            batch(reader, self.user_id, key, reader.spill.read(reader.keys[key]))
            for key in self._checked
        )
        others = [ecg_batch(recordings, self.user_id), self._workouts(reader.workouts)]
        records = dedupe(concat(itertools.chain(batches, others)))
        if records.empty:
            raise self._nothing()
        return records.sort_values(["data_type", "ts", "device_id"], ignore_index=True)

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int = 1000,
    ) -> pd.DataFrame:
        """The window's records, built from the spill file's samples of that window alone: the
        same rows as selecting them from `records` (ReadOnce.fetch), in the same order."""
        if user.user_id != self.user_id:
            return empty_batch()
        reader, held = self._parsed
        wanted = {HealthDataType(t) for t in data_types}
        start, end = to_us(window.start), to_us(window.end)
        parts = []
        for key in self._checked:
            if key[0] in wanted:
                if key[0] is HealthDataType.SLEEP:
                    parts.append(select(self._nights, self.user_id, [HealthDataType.SLEEP], window))
                    continue
                rows = reader.spill.read(reader.keys[key], start, end)
                if rows["utc_us"].size:
                    parts.append(batch(reader, self.user_id, key, rows))
        if HealthDataType.ECG in wanted:
            inside = [ecg.name for ecg in held if window.start <= ecg.ts < window.end]
            parts.append(ecg_batch(self._recordings(inside), self.user_id))
        if HealthDataType.WORKOUT in wanted:
            parts.append(self._workouts([w for w in reader.workouts if start <= w.end_us < end]))
        found = dedupe(concat(parts))
        return found.sort_values(["data_type", "ts", "device_id"], ignore_index=True)

    @cached_property
    def zone(self) -> ZoneChoice:
        if self.timezone is not None:
            return ZoneChoice(self.timezone, False, f"{self.timezone}: given by configuration")
        self.held_days()  # an export without records fails here, before any zone is guessed
        reader, recordings = self._parsed
        xml_utc_us, xml_offset_min, xml_count = reader.observations()
        stamp = parse_moment(reader.summary.export_date)
        return infer_zone(
            ZoneEvidence(
                xml_utc_us=xml_utc_us,
                xml_offset_min=xml_offset_min,
                xml_count=xml_count,
                other_utc_us=np.array([r.ts.value // 1000 for r in recordings], dtype="int64"),
                other_offset_min=np.array([r.utc_offset_min for r in recordings], dtype="int64"),
                export_date=None if stamp is None else (stamp[0] - stamp[1] * 60_000_000, stamp[1]),
                time_zones=reader.summary.time_zones,
                locale=reader.summary.locale,
            )
        )

    def discover_users(self) -> list[HealthSyncConfig]:
        return [
            HealthSyncConfig(
                user_id=self.user_id,
                provider=NAME,
                aggregation=AggregationLevel.HOURLY,
                sync_frequency=SyncFrequency.DAILY,
                timezone=self.zone.zone,
            )
        ]
