"""Which FHIR resources one day partition publishes for a bucket of people, from data read once.

Per person, for their local day of the partition's date (ohx_dagster/core/localdays.py: the day they
lived, 23 to 25 hours, in the zone they lived it in):
- their Patient (unless the clinical system named them: then its Patient is referenced);
- heart rate, steps and RR series: one Observation (valueSampledData) per stored chunk (one
  type, device and UTC hour; a chunk their local midnight cuts is published as its two parts,
  each in its own day);
- every sparse measurement (blood pressure, weight, temperature, SpO2) as its own Observation at
  its exact time;
- every sleep session that ended in their local day, as its own Observation (fhir/sleep.py), and
  every workout, as the Physical Activity IG's panel of its measures (fhir/workouts.py);
- hourly aggregates of their local hours and the daily aggregate of their local day, per their
  preference, each `derivedFrom` every series and measurement it summarises;
- resting heart rate of their local day (LOINC 40443-4), from the heart rate the provider says
  was taken at rest or asleep, when it says so (Oura's `source`);
- CGM summaries of their local day and of the 14 days ending with it, when they wore a CGM that
  day (ohx_dagster/fhir/cgm.py);
- ECG: waveform Observation + DiagnosticReport linking the heart rate and RR recorded with it;
- a Device for each device of theirs a resource names, with the DeviceAssociation to them;
- a Provenance naming every resource above, the source, the Dagster run and this software.

Every sample is published in exactly one partition, its person's local day, so references stay
inside the partition's output: every partition's output resolves on its own and a delivery never
refers to a resource not delivered yet.

Readings a shared device cannot attribute (method "ambiguous": a Withings weigh-in that "may
belong to another user") are kept in the store but published only when the operator says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd

from ohx_dagster.core.localdays import Calendar, own_day_bounds
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import row_dicts
from ohx_dagster.core.times import HOUR_US, utc_day
from ohx_dagster.fhir.cgm import cgm_summaries
from ohx_dagster.fhir.common import device, is_clinical_patient, patient, reference
from ohx_dagster.fhir.ecg import ecg_reports
from ohx_dagster.fhir.measurements import (
    measurement_key,
    measurement_observations,
    measurement_rows,
)
from ohx_dagster.fhir.observations import aggregate_observations
from ohx_dagster.fhir.provenance import provenance
from ohx_dagster.fhir.resting import resting_heart_rate
from ohx_dagster.fhir.series import chunk_observation, series_reference
from ohx_dagster.fhir.sleep import sleep_observations
from ohx_dagster.fhir.workouts import workout_observations
from ohx_dagster.storage.record_tables import Chunk
from ohx_dagster.sync.fetch import LINK_MARGIN

LINK_MARGIN_US: Final = int(LINK_MARGIN.total_seconds() * 1_000_000)
AMBIGUOUS: Final = "ambiguous"


def read_window(day: date) -> DateRange:
    """What one partition's publishing reads: the hours a local calendar day of its date reaches
    in any zone (UTC-12 .. UTC+14, a change between them included)."""
    window = utc_day(day)
    return DateRange(window.start - timedelta(hours=14), window.end + timedelta(hours=12))


@dataclass
class BucketData:
    """A bucket of people's data around one day partition, as read from the store in one go."""

    provider: str
    day: date
    configs: Mapping[str, HealthSyncConfig]
    chunks: Sequence[Chunk]
    sparse: pd.DataFrame  # measurements and ECG recordings
    # CGM readings of the 13 days before the read window: the 14-day summary's (fhir/cgm.py).
    history: Sequence[Chunk] = ()

    def without_ambiguous(self) -> BucketData:
        """The data minus readings that may belong to someone else (unless published by choice)."""
        chunks = []
        for chunk in self.chunks:
            keep = chunk.samples.method != AMBIGUOUS
            if keep.all():
                chunks.append(chunk)
            elif keep.any():
                samples = chunk.samples.take(np.flatnonzero(keep))
                chunks.append(Chunk(chunk.user_id, chunk.data_type, chunk.device_id,
                                    chunk.hour_us, samples))  # fmt: skip
        sparse = self.sparse
        if not sparse.empty:
            sparse = sparse[sparse["method"] != AMBIGUOUS].reset_index(drop=True)
        return BucketData(self.provider, self.day, self.configs, chunks, sparse, self.history)

    def calendars(self) -> dict[str, Calendar]:
        return {u: Calendar.of(c) for u, c in self.configs.items()}

    def _midnight(self, calendar: Calendar, chunk: Chunk, keep: np.ndarray) -> int:
        """Where the partition's day begins for these samples: the person's local midnight, on
        the clock of the samples' own offset when they carry one."""
        if chunk.data_type not in calendar.own_offsets or not keep.any():
            return calendar.day_window(self.day)[0]
        offset = int(chunk.samples.utc_offset_min[np.flatnonzero(keep)[0]])
        return own_day_bounds(self.day, offset)[0]

    def in_day(self) -> tuple[list[Chunk], pd.DataFrame]:
        """What the partition publishes: each person's readings of their local day (the part of
        a chunk their local midnight cuts that falls inside it)."""
        calendars = self.calendars()
        chunks = []
        for chunk in self.chunks:
            calendar = calendars.get(chunk.user_id)
            if calendar is None:
                continue
            if chunk.data_type not in calendar.own_offsets:
                first, last = calendar.day_window(self.day)
                if first <= chunk.hour_us and chunk.hour_us + HOUR_US <= last:
                    chunks.append(chunk)
                    continue
                if chunk.hour_us >= last or chunk.hour_us + HOUR_US <= first:
                    continue
            samples = chunk.samples
            offsets = samples.utc_offset_min.astype("float64")
            keep = calendar.in_day(chunk.data_type, samples.ts_us, offsets, self.day)
            part = day_part(chunk, keep, self._midnight(calendar, chunk, keep))
            if part is not None:
                chunks.append(part)
        if self.sparse.empty:
            return chunks, self.sparse
        inside = np.zeros(len(self.sparse), dtype=bool)
        stamps = self.sparse["ts"].dt.as_unit("us").astype("int64").to_numpy()
        offsets = self.sparse["utc_offset_min"].to_numpy(dtype="float64", na_value=np.nan)
        users = self.sparse["user_id"].to_numpy(dtype=object)
        kinds = self.sparse["data_type"].to_numpy(dtype=object)
        for user_id, kind in dict.fromkeys(zip(users.tolist(), kinds.tolist(), strict=True)):
            if user_id in calendars:
                rows = np.flatnonzero((users == user_id) & (kinds == kind))
                inside[rows] = calendars[user_id].in_day(
                    kind, stamps[rows], offsets[rows], self.day
                )
        return chunks, self.sparse[inside].reset_index(drop=True)


def day_part(chunk: Chunk, keep: np.ndarray, midnight_us: int) -> Chunk | None:
    """The samples of a chunk a local midnight cuts that are in the day (`keep`), as a chunk
    that starts at the later of its hour and the day's first midnight, so the two parts have ids
    of their own, whichever samples are stored yet (a part is a part even while the other
    part's samples have not arrived)."""
    at = np.flatnonzero(keep)
    if not at.size:
        return None
    samples = chunk.samples if at.size == keep.size else chunk.samples.take(at)
    return Chunk(chunk.user_id, chunk.data_type, chunk.device_id,
                 max(chunk.hour_us, midnight_us), samples)  # fmt: skip


class PartitionIndex:
    """Which readings the partition publishes: (person, type) -> sorted [(start, end, reference)],
    so aggregates and ECG reports point only at resources of the same output."""

    def __init__(
        self,
        provider: str,
        chunks: Sequence[Chunk],
        measurements: pd.DataFrame,
        configs: Mapping[str, HealthSyncConfig],
    ) -> None:
        def generation(user_id: str) -> int:
            return configs[user_id].link_generation

        self.entries: dict[tuple[str, str], list[tuple[int, int, dict[str, str]]]] = defaultdict(
            list
        )
        for chunk in chunks:
            ref = series_reference(provider, chunk.user_id, chunk.data_type, chunk.hour_us,
                                   chunk.device_id, generation(chunk.user_id))  # fmt: skip
            # A chunk's hour; a part a midnight cut begins inside it and ends with it.
            end = (chunk.hour_us // HOUR_US + 1) * HOUR_US
            self.entries[(chunk.user_id, chunk.data_type)].append((chunk.hour_us, end, ref))
        for row in row_dicts(measurements):
            key = measurement_key(provider, row["user_id"], row["data_type"], row["ts_us"],
                                  row["device_id"], generation(row["user_id"]))  # fmt: skip
            self.entries[(row["user_id"], row["data_type"])].append(
                (int(row["ts_us"]), int(row["ts_us"]) + 1, reference("Observation", key))
            )
        for entries in self.entries.values():
            entries.sort(key=lambda e: (e[0], e[2]["reference"]))

    def references(self, user_id: str, data_type: str, start: int, end: int) -> list[dict]:
        return [
            ref
            for first, last, ref in self.entries.get((user_id, data_type), ())
            if first < end and last > start
        ]

    def derived_from(self, row: Any) -> list[dict[str, str]]:
        return self.references(
            row["user_id"], row["data_type"], int(row["bucket_start_us"]), int(row["bucket_end_us"])
        )

    def linked(self, user_id: str, start: int, end: int) -> list[dict[str, str]]:
        """The heart rate and RR series recorded around an ECG."""
        window = (start - LINK_MARGIN_US, end + LINK_MARGIN_US)
        return [
            *self.references(user_id, HealthDataType.HEART_RATE.value, *window),
            *self.references(user_id, HealthDataType.RR_INTERVALS.value, *window),
        ]


def _referenced_devices(resources: Sequence[dict[str, Any]]) -> set[str]:
    return {r["device"]["reference"] for r in resources if "device" in r}


def bucket_resources(
    data: BucketData,
    hourly: pd.DataFrame,
    daily: pd.DataFrame,
    statuses: Mapping[str, str],
    *,
    run_id: str = "",
    recorded_us: int,
    summary_statuses: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every resource the partition publishes for the bucket's people (module docstring);
    `statuses`: per person, final or preliminary for the partition's series and aggregates;
    `summary_statuses`: for their summaries over several days (default: `statuses`)."""
    chunks, sparse = data.in_day()
    configs = data.configs
    measurements = measurement_rows(sparse) if not sparse.empty else sparse
    index = PartitionIndex(data.provider, chunks, measurements, data.configs)
    ecg = sparse[sparse["data_type"] == HealthDataType.ECG.value] if not sparse.empty else sparse
    resting = resting_heart_rate(data, statuses, index.derived_from)
    by_person: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(resources: Sequence[dict[str, Any]] | Any) -> None:
        for resource in resources:
            by_person[_owner(resource, configs)].append(resource)

    add(
        chunk_observation(data.provider, c, configs[c.user_id], statuses.get(c.user_id, "final"))
        for c in chunks
        if c.user_id in configs
    )
    add(measurement_observations(sparse, configs) if not sparse.empty else ())
    add(sleep_observations(sparse, configs) if not sparse.empty else ())
    add(workout_observations(sparse, configs) if not sparse.empty else ())
    add(ecg_reports(ecg, configs, index.linked, statuses) if not ecg.empty else ())
    add(aggregate_observations(hourly, configs, index.derived_from, statuses))
    add(aggregate_observations(daily, configs, index.derived_from, statuses))
    add(resting)
    add(cgm_summaries(data, statuses, statuses if summary_statuses is None else summary_statuses))
    published: list[dict[str, Any]] = []
    for user_id, resources in sorted(by_person.items()):
        config = configs[user_id]
        devices = _referenced_devices(resources)
        people = [] if is_clinical_patient(config) else [patient(config)]
        owned = [
            *people,
            *(
                r
                for device_id in sorted({d for d in _device_ids(data, user_id)})
                for r in device(data.provider, config, device_id)
                if r["resourceType"] == "DeviceAssociation" or f"Device/{r['id']}" in devices
            ),
            *resources,
        ]
        owned = _without_unreferenced_associations(owned)
        owned.append(provenance(data.provider, config, data.day, owned, run_id=run_id,
                                recorded_us=recorded_us))  # fmt: skip
        published += owned
    return published


def _device_ids(data: BucketData, user_id: str) -> set[str]:
    ids = {c.device_id for c in data.chunks if c.user_id == user_id and c.device_id}
    if not data.sparse.empty:
        rows = data.sparse[data.sparse["user_id"] == user_id]
        ids |= {d for d in rows["device_id"] if d}
    return ids


def _without_unreferenced_associations(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A DeviceAssociation only for a Device this output holds."""
    devices = {f"Device/{r['id']}" for r in resources if r["resourceType"] == "Device"}
    return [
        r
        for r in resources
        if r["resourceType"] != "DeviceAssociation" or r["device"]["reference"] in devices
    ]


def _owner(resource: dict[str, Any], configs: Mapping[str, HealthSyncConfig]) -> str:
    """The person a resource is about (its identifier's key begins with provider|user)."""
    value = resource["identifier"][0]["value"]
    user_id = value.split("|")[2]
    assert user_id in configs, f"{resource['resourceType']}/{resource['id']} of {user_id!r}"
    return user_id
