"""The domain model: data types, sync settings, one validated health record, time windows.

Everything here validates on construction, so a value that exists is a value that is right:
timestamps are timezone-aware, units are canonical UCUM, values are finite and physically possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ohx_dagster.core.datatypes import DATA_TYPES, HealthDataType, Shape, of_shape
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.ids import stable_id
from ohx_dagster.core.sessions import check_parts, check_session
from ohx_dagster.core.units import to_canonical

# Types whose samples arrive many at a time: stored as hourly chunks, published as series.
SERIES_TYPES: Final = of_shape(Shape.SERIES)


class AggregationLevel(StrEnum):
    INDIVIDUAL = "individual"
    HOURLY = "hourly"
    DAILY = "daily"


class SyncFrequency(StrEnum):
    REALTIME = "realtime"
    HOURLY = "hourly"
    DAILY = "daily"


# Values outside these bounds cannot come from a working device: rejected on ingest.
HARD_LIMITS: Final = {kind: facts.hard_limits for kind, facts in DATA_TYPES.items()}

# Values outside these bounds are possible but rare enough that a person should look (asset check).
PLAUSIBLE_RANGES: Final = {kind: facts.plausible for kind, facts in DATA_TYPES.items()}


def require_aware(name: str, value: datetime) -> datetime:
    """Reject naive datetimes: a timestamp without an offset is ambiguous by hours."""
    if not isinstance(value, datetime):
        raise ValidationError(name, value, "a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(name, value.isoformat(), "a timezone-aware datetime (naive given)")
    return value


def check_value(data_type: HealthDataType, name: str, value: float) -> float:
    """Reject NaN, infinities and values outside the type's hard limits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, value, f"a number for {data_type.value}")
    if not math.isfinite(value):
        raise ValidationError(name, value, f"a finite number for {data_type.value}")
    low, high = HARD_LIMITS[data_type]
    if not low <= value <= high:
        raise ValidationError(
            name, value, f"{low:g}..{high:g} {data_type.canonical_unit} for {data_type.value}"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class DateRange:
    """A half-open UTC window [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", require_aware("start", self.start).astimezone(UTC))
        object.__setattr__(self, "end", require_aware("end", self.end).astimezone(UTC))
        if self.end < self.start:
            raise ValidationError("end", self.end.isoformat(), f">= start {self.start.isoformat()}")

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def intersect(self, other: DateRange) -> DateRange | None:
        start, end = max(self.start, other.start), min(self.end, other.end)
        return DateRange(start, end) if start < end else None

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class HealthDataRecord:
    """One measurement, in canonical units, at a timezone-aware instant.

    `value` is the measurement (systolic for blood pressure); an ECG record has no `value` and
    carries `samples` and `sampling_rate_hz` instead; a session (a night, a workout) is stamped at
    its end, lasts `duration_s` and carries its parts in `samples` (ohx_dagster/core/sessions.py).
    `HealthDataRecord.create(...)` converts from a provider's unit.
    """

    provider: str
    user_id: str
    data_type: HealthDataType
    timestamp: datetime
    value: float | None
    unit: str
    device_id: str = ""
    diastolic: float | None = None
    samples: tuple[float, ...] | None = None
    sampling_rate_hz: float | None = None
    duration_s: float | None = None
    utc_offset_min: int | None = None

    def __post_init__(self) -> None:
        for name in ("provider", "user_id"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text:
                raise ValidationError(name, text, "a non-empty string")
        try:
            data_type = HealthDataType(self.data_type)
        except ValueError:
            raise ValidationError(
                "data_type", self.data_type, f"one of {[t.value for t in HealthDataType]}"
            ) from None
        object.__setattr__(self, "data_type", data_type)
        stamp = require_aware("timestamp", self.timestamp)
        if self.utc_offset_min is None:
            offset = stamp.utcoffset()
            assert offset is not None  # require_aware refused a stamp without one
            object.__setattr__(self, "utc_offset_min", int(offset.total_seconds() // 60))
        object.__setattr__(self, "timestamp", stamp.astimezone(UTC))
        if self.unit != data_type.canonical_unit:
            raise ValidationError(
                "unit", self.unit, f"{data_type.canonical_unit!r} for {data_type.value}"
            )
        if data_type is HealthDataType.ECG:
            self._check_ecg()
        else:
            if self.value is None:
                raise ValidationError("value", None, f"a number for {data_type.value}")
            object.__setattr__(self, "value", check_value(data_type, "value", self.value))
        if data_type is HealthDataType.BLOOD_PRESSURE:
            if self.diastolic is None:
                raise ValidationError("diastolic", None, "a number for blood_pressure")
            diastolic = check_value(data_type, "diastolic", self.diastolic)
            assert self.value is not None  # blood pressure is not ECG: checked above
            if diastolic >= self.value:
                raise ValidationError("diastolic", diastolic, f"< systolic {self.value:g}")
            object.__setattr__(self, "diastolic", diastolic)
        elif self.diastolic is not None:
            raise ValidationError("diastolic", self.diastolic, "None unless blood_pressure")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s >= 0
        ):
            raise ValidationError("duration_s", self.duration_s, "a finite number >= 0")
        if DATA_TYPES[data_type].shape is Shape.SESSION:
            self._check_session()
        elif self.samples is not None and data_type is not HealthDataType.ECG:
            raise ValidationError("samples", "...", "None unless ecg or a session's parts")

    def _check_session(self) -> None:
        assert self.value is not None  # a session is not ECG: its value was checked
        if self.duration_s is None:
            raise ValidationError("duration_s", None, f"the length of the {self.data_type} session")
        check_session(self.duration_s, self.value)
        if self.samples is not None:
            parts = check_parts(self.data_type.value, self.samples, self.duration_s)
            object.__setattr__(self, "samples", tuple(parts))

    def _check_ecg(self) -> None:
        if not self.samples:
            raise ValidationError("samples", self.samples, "a non-empty sequence for ecg")
        rate = self.sampling_rate_hz
        if rate is None or not math.isfinite(rate) or not 50.0 <= rate <= 10_000.0:
            raise ValidationError("sampling_rate_hz", rate, "50..10000 Hz for ecg")
        samples = tuple(check_value(HealthDataType.ECG, "samples", s) for s in self.samples)
        object.__setattr__(self, "samples", samples)
        if self.value is not None:
            raise ValidationError("value", self.value, "None for ecg (samples carry the data)")

    @classmethod
    def create(
        cls,
        *,
        provider: str,
        user_id: str,
        data_type: HealthDataType | str,
        timestamp: datetime,
        value: float | None,
        unit: str,
        **extra: Any,
    ) -> HealthDataRecord:
        """Build a record from a provider's unit, converting value (and diastolic/samples)."""
        kind = HealthDataType(data_type)
        if value is not None:
            value = float(to_canonical(kind, value, unit))
        if extra.get("diastolic") is not None:
            extra["diastolic"] = float(to_canonical(kind, extra["diastolic"], unit))
        if extra.get("samples") is not None and kind is HealthDataType.ECG:
            extra["samples"] = tuple(to_canonical(kind, extra["samples"], unit).tolist())
        to_canonical(kind, 0.0, unit)  # rejects an unknown unit even when value is None
        return cls(
            provider=provider,
            user_id=user_id,
            data_type=kind,
            timestamp=timestamp,
            value=value,
            unit=kind.canonical_unit,
            **extra,
        )

    @property
    def identity(self) -> tuple[str, str, str, datetime, str]:
        return (self.provider, self.user_id, self.data_type.value, self.timestamp, self.device_id)


def _default_types() -> frozenset[HealthDataType]:
    return frozenset(HealthDataType)


@dataclass(frozen=True, slots=True)
class HealthSyncConfig:
    """One connected user's sync settings."""

    user_id: str
    provider: str
    enabled_types: frozenset[HealthDataType] = field(default_factory=_default_types)
    aggregation: AggregationLevel = AggregationLevel.HOURLY
    sync_frequency: SyncFrequency = SyncFrequency.HOURLY
    retention_days: int = 365
    # Linked-data rule: these types are only stored and published with the heart rate around them.
    link_heart_rate_to: frozenset[HealthDataType] = frozenset(
        {HealthDataType.ECG, HealthDataType.RR_INTERVALS}
    )
    timezone: str = "UTC"
    fhir_patient_id: str = ""
    lookback_days: int = 30
    # Zone history: (first day, zone) in order, the last one `timezone`; empty: `timezone`
    # always. Each local day is cut in the zone it was lived in (ohx_dagster/core/localdays.py).
    zone_changes: tuple[tuple[str, str], ...] = ()
    # Link generation: how many times staff moved the account to another patient (`ohx users
    # relink`). When > 0, it is part of the content key of every resource of the person's data
    # (ohx_dagster.core.ids.content_key), so a move publishes new resources under the new patient
    # and withdraws the old ones (entered-in-error) instead of changing their subject in place.
    link_generation: int = 0

    def __post_init__(self) -> None:
        for name in ("user_id", "provider"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValidationError(name, getattr(self, name), "a non-empty string")
        try:
            types = frozenset(HealthDataType(t) for t in self.enabled_types)
            linked = frozenset(HealthDataType(t) for t in self.link_heart_rate_to)
        except ValueError as exc:
            raise ValidationError(
                "enabled_types", sorted(self.enabled_types), "health data types"
            ) from exc
        object.__setattr__(self, "enabled_types", types)
        object.__setattr__(self, "link_heart_rate_to", linked)
        for name, enum in (("aggregation", AggregationLevel), ("sync_frequency", SyncFrequency)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ValidationError(
                    name, getattr(self, name), f"one of {[e.value for e in enum]}"
                ) from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError("timezone", self.timezone, "an IANA time zone name") from None
        object.__setattr__(self, "zone_changes", _zone_changes(self.zone_changes, self.timezone))
        for name in ("retention_days", "lookback_days"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ValidationError(name, number, "a whole number of days >= 1")
        generation = self.link_generation
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise ValidationError("link_generation", generation, "a whole number >= 0")
        if not self.fhir_patient_id:
            object.__setattr__(self, "fhir_patient_id", default_patient_id(self))

    @property
    def zone(self) -> ZoneInfo:
        """The zone in force now (a past day's zone: `zone_on`)."""
        return ZoneInfo(self.timezone)

    def zone_on(self, day: date) -> ZoneInfo:
        """The zone local day `day` was lived in."""
        return ZoneInfo(zone_name_on(self.timezone, self.zone_changes, day))

    def with_zone(self, timezone: str, since: date) -> HealthSyncConfig:
        """This config with `timezone` in force from local day `since` on (days before keep
        theirs; a change from the first day known replaces the history)."""
        history = list(self.zone_changes) or [(date.min.isoformat(), self.timezone)]
        kept = [(d, z) for d, z in history if d < since.isoformat()]
        if not kept or kept[-1][1] != timezone:
            kept.append((since.isoformat(), timezone))
        if len(kept) == 1:
            kept = []  # one zone for every day: no history to keep
        return replace(self, timezone=timezone, zone_changes=tuple(kept))

    def to_json(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "provider": self.provider,
            "enabled_types": sorted(t.value for t in self.enabled_types),
            "aggregation": self.aggregation.value,
            "sync_frequency": self.sync_frequency.value,
            "retention_days": self.retention_days,
            "link_heart_rate_to": sorted(t.value for t in self.link_heart_rate_to),
            "timezone": self.timezone,
            "fhir_patient_id": self.fhir_patient_id,
            "lookback_days": self.lookback_days,
            # Only when there is a history: the stored config of everyone else stays as it was.
            **({"zone_changes": [list(c) for c in self.zone_changes]} if self.zone_changes else {}),
            # Likewise only once the account was moved to another patient.
            **({"link_generation": self.link_generation} if self.link_generation else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> HealthSyncConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValidationError("config", sorted(unknown), f"only keys {sorted(known)}")
        return cls(**data)  # type: ignore[arg-type]


def zone_name_on(timezone: str, changes: tuple[tuple[str, str], ...], day: date) -> str:
    """The zone of local day `day` in a zone history (see HealthSyncConfig.zone_changes)."""
    if not changes:
        return timezone
    name = changes[0][1]  # days before the first change were lived in the first zone known
    text = day.isoformat()
    for since, zone in changes:
        if since > text:
            break
        name = zone
    return name


def _zone_changes(changes: object, timezone: str) -> tuple[tuple[str, str], ...]:
    expected = "(first day, IANA zone) pairs in date order, the last one the current timezone"
    try:
        found = tuple((date.fromisoformat(str(d)).isoformat(), str(z)) for d, z in changes)  # type: ignore[attr-defined]
        for _, zone in found:
            ZoneInfo(zone)
    except (TypeError, ValueError, ZoneInfoNotFoundError):
        raise ValidationError("zone_changes", changes, expected) from None
    days = [d for d, _ in found]
    if days != sorted(set(days)) or (found and found[-1][1] != timezone):
        raise ValidationError("zone_changes", changes, expected)
    return found


def default_patient_id(config: HealthSyncConfig) -> str:
    """A stable FHIR Patient id for a user who has not been mapped to a clinical record yet."""
    return stable_id("Patient", config.provider, config.user_id)
