"""The apple_health source: one export (export.xml or export.zip) is one user's records."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ohx_dagster.errors import ValidationError
from ohx_dagster.ids import check_user_id
from ohx_dagster.locations import Location, kind, location
from ohx_dagster.models import (
    AggregationLevel,
    HealthSyncConfig,
    SyncFrequency,
)
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
from ohx_dagster.providers.apple_health.zone import ZoneChoice, ZoneEvidence, infer_zone, is_zone
from ohx_dagster.providers.base import ReadOnce
from ohx_dagster.providers.bounds import PlausibleDates, RefusedDates
from ohx_dagster.records import concat, dedupe

SETTING = "OHX_APPLE_HEALTH_EXPORT"


class AppleHealthSource(ReadOnce):
    """One export = one user: OHX_APPLE_HEALTH_USER, else the export's parent folder name.

    `timezone` overrides the inferred zone (an IANA name); `zone` says which zone the user gets
    and why, for the importer to print. Samples dated outside `dates` (default: 2000-01-01 to
    tomorrow of the clock when the source is made) are refused and counted in `refused`."""

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
        try:  # the rule every entry point applies (ohx_dagster/ids.py)
            self.user_id = check_user_id(user_id or folder.name)
        except ValidationError as exc:
            where = f"the person of {self.path}: name another with OHX_APPLE_HEALTH_USER or --user"
            raise ValidationError(exc.field, exc.value, exc.expected, where=where) from None

    @cached_property
    def _parsed(self) -> tuple[ExportReader, list[EcgRecording]]:
        with open_export(self.path) as files:
            with files.xml() as stream:
                reader = parse_export(stream, files.xml_name, self.dates)
            recordings = []
            for name in files.ecg_names():
                recording = read_ecg(files.read(name), name)
                if self.dates.outside(pd.DatetimeIndex([recording.ts])).any():
                    reader.refused.add("ecg", 1, f"{recording.ts.isoformat()} ({name})")
                else:
                    recordings.append(recording)
        reader.summary.ecg_files = len(recordings)
        return reader, recordings

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
        return self._parsed[1]

    @cached_property
    def records(self) -> pd.DataFrame:
        reader, recordings = self._parsed
        # A generator, so the per-type batches are freed once concatenated (peak memory).
        batches = (batch(reader, self.user_id, key) for key in sorted(reader.columns))
        records = dedupe(concat(itertools.chain(batches, [ecg_batch(recordings, self.user_id)])))
        if records.empty and reader.refused.total:
            raise ValidationError(
                "records",
                0,
                "samples dated inside the plausible dates",
                where=reader.refused.line(),
            )
        if records.empty:
            held = ", ".join(f"{t} {n}" for t, n in reader.summary.records.most_common(5))
            raise ValidationError(
                "records",
                0,
                f"samples of a type this source reads ({', '.join(sorted(QUANTITY_TYPES))}, "
                "blood pressure, beat lists) or electrocardiograms/*.csv",
                where=f"{reader.name} holds {sum(reader.summary.records.values())} Records: {held}",
            )
        return records.sort_values(["data_type", "ts", "device_id"], ignore_index=True)

    @cached_property
    def zone(self) -> ZoneChoice:
        if self.timezone is not None:
            return ZoneChoice(self.timezone, False, f"{self.timezone}: given by configuration")
        _ = self.records  # an export without records fails here, before any zone is guessed
        reader, recordings = self._parsed
        xml_utc_us, xml_offset_min = reader.observations()
        stamp = parse_moment(reader.summary.export_date)
        return infer_zone(
            ZoneEvidence(
                xml_utc_us=xml_utc_us,
                xml_offset_min=xml_offset_min,
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
