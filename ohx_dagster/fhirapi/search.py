"""What the FHIR API serves: the published NDJSON itself, found through `fhir_files`.

A person's resources are in their bucket's files (publish.bucket_of) of each day partition of
their provider; `fhir_files` names the current file of every bucket and type, so a read opens
only the files of one bucket on the days asked for, never a whole partition. A Patient id is the
`fhir_patient_id` of a person in the store: an erased person is in no table and no file, and is
not found.

Search (`Observation?patient=&code=&date=`):
- `patient`: one person (`Patient/ID` or `ID`); required: a cohort is pulled with `$export`.
- `code`: tokens `system|code`, `code` or `|code`, comma-separated (any of them).
- `date`: FHIR date search on `effective[x]`, prefixes eq (default), ge, gt, le, lt; a value is
  its implicit range (a year, a month, a day, a second), compared with the resource's range
  (a period's start to end, an instant's own range): eq = the resource's range inside the
  value's, ge/le = its range reaches at or after / at or before the value's, gt/lt = past it.
  Given more than once, every one must hold. A value with a time and no zone is refused.
`_lastUpdated` takes the same prefixes, on when each resource last changed (fhir_changes: the
files do not carry it); served resources carry it as `meta.lastUpdated`.
Results are ordered by their start, then id, so pages are stable between requests.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import orjson
import sqlalchemy as sa

from ohx_dagster.config.sources import key_provider
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import iso_us, to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.publish.partitions import bucket_of, partition_dir
from ohx_dagster.storage.schema import fhir_changes, fhir_files, users

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

PREFIXES: Final = ("eq", "ge", "gt", "le", "lt")
PEOPLE_CACHE_S: Final = 30.0
_DATE: Final = re.compile(
    r"(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<time>\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_FAR: Final = 1 << 62
_US: Final = 1_000_000


class SearchError(ValueError):
    """A search parameter that cannot be understood: the message names it."""


@dataclass(frozen=True, slots=True)
class DateFilter:
    prefix: str
    low_us: int  # the value's implicit range [low, high)
    high_us: int

    def holds(self, start_us: int, end_us: int) -> bool:
        """For a resource whose range is [start, end]."""
        if self.prefix == "eq":
            return self.low_us <= start_us and end_us < self.high_us
        if self.prefix == "ge":
            return end_us >= self.low_us
        if self.prefix == "gt":
            return end_us >= self.high_us
        if self.prefix == "le":
            return start_us < self.high_us
        return start_us < self.low_us  # lt


def _range(text: str, *, zone_needed: bool) -> tuple[int, int]:
    """The implicit range [low, high) of a FHIR date, dateTime or instant, in microseconds."""
    found = _DATE.fullmatch(text)
    if found is None:
        raise SearchError(f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)")
    year, month, day = int(found["y"]), int(found["m"] or 1), int(found["d"] or 1)
    try:
        if found["time"]:
            if not found["zone"]:
                if zone_needed:
                    raise SearchError(f"{text!r}: a time needs its zone (Z or +hh:mm)")
                return 0, 0
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
            low = to_us(stamp)
            precision = _US if "." not in found["time"] else 1
            precision = 60 * _US if found["time"].count(":") == 1 else precision
            return low, low + precision
        # A date without a time is a day on no clock: from its earliest start (UTC+14) to its
        # latest end (UTC-12).
        first = datetime(year, month, day, tzinfo=UTC)
        if found["d"]:
            last = first + timedelta(days=1)
        elif found["m"]:
            last = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        else:
            last = datetime(year + 1, 1, 1, tzinfo=UTC)
    except ValueError as exc:
        raise SearchError(f"{text!r} is not a valid date ({exc})") from None
    return to_us(first - timedelta(hours=14)), to_us(last + timedelta(hours=12))


def parse_date(text: str) -> DateFilter:
    prefix = text[:2] if text[:2] in PREFIXES else "eq"
    value = text[2:] if text[:2] in PREFIXES else text
    low, high = _range(value, zone_needed=True)
    return DateFilter(prefix, low, high)


def effective_range(resource: dict[str, Any]) -> tuple[int, int] | None:
    """The instants a resource's effective[x] spans (None: it has none)."""
    if "effectiveDateTime" in resource:
        return _published_range(resource["effectiveDateTime"])
    if "effectiveInstant" in resource:
        return _published_range(resource["effectiveInstant"])
    period = resource.get("effectivePeriod")
    if period and "start" in period:
        start = _published_range(period["start"])
        end = _published_range(period["end"]) if "end" in period else None
        return start[0], (end or start)[1] - 1
    return None


def _published_range(text: str) -> tuple[int, int]:
    low, high = _range(text, zone_needed=False)
    return low, high


def parse_codes(text: str) -> list[tuple[str | None, str]]:
    """(system or None for any, code) of each comma-separated token."""
    tokens = []
    for item in text.split(","):
        system, bar, code = item.rpartition("|")
        if not code:
            raise SearchError(f"code {item!r}: expected system|code, code or |code")
        tokens.append((system if bar else None, code))
    return tokens


def _has_code(resource: dict[str, Any], tokens: Sequence[tuple[str | None, str]]) -> bool:
    codings = (resource.get("code") or {}).get("coding") or []
    return any(
        coding.get("code") == code and (system is None or coding.get("system", "") == system)
        for coding in codings
        for system, code in tokens
    )


def _sort_key(resource: dict[str, Any]) -> tuple[int, str]:
    span = effective_range(resource)
    return (span[0] if span else _FAR, resource["id"])


class Published:
    """The published resources of the people in the store."""

    def __init__(self, store: RecordStore, output: FhirOutput) -> None:
        self.store, self.output = store, output
        self._lock = threading.Lock()
        self._people: dict[str, tuple[str, str]] = {}  # Patient id -> (provider, user id)
        self._read_at = -PEOPLE_CACHE_S

    def person(self, patient_id: str) -> HealthSyncConfig | None:
        """The person whose Patient this is, as the store holds them now: the map of Patient ids
        is read again at most every 30 s (an unknown id does not make it read sooner: random ids
        cost a client nothing but a lookup; a person connected meanwhile is found within 30 s),
        and the person's own row on every request, so an erased or relinked person is never
        served from the map."""
        with self._lock:
            if time.monotonic() - self._read_at >= PEOPLE_CACHE_S:
                with self.store.read() as conn:
                    rows = conn.execute(sa.select(users.c.config)).scalars().all()
                configs = [HealthSyncConfig.from_json(orjson.loads(row)) for row in rows]
                self._people = {c.fhir_patient_id: (c.provider, c.user_id) for c in configs}
                self._read_at = time.monotonic()
            found = self._people.get(patient_id)
        if found is None:
            return None
        config = self.store.user(*found)
        return config if config is not None and config.fhir_patient_id == patient_id else None

    def _files(
        self, config: HealthSyncConfig, resource_type: str, first: date | None, last: date | None
    ) -> list[tuple[str, str]]:
        """(partition key, file name) of the person's bucket, newest day first."""
        t = fhir_files
        query = sa.select(t.c.partition_key, t.c.name).where(
            t.c.bucket == bucket_of(config.provider, config.user_id),
            t.c.resource_type == resource_type,
        )
        if first is not None:
            query = query.where(t.c.partition_key >= first.isoformat())
        if last is not None:
            query = query.where(t.c.partition_key < (last + timedelta(days=1)).isoformat())
        with self.store.read() as conn:
            rows = conn.execute(query.order_by(t.c.partition_key.desc())).all()
        return [(r.partition_key, r.name) for r in rows if _of_provider(r.partition_key, config)]

    def _read(self, files: Iterable[tuple[str, str]], config: HealthSyncConfig) -> Iterable[dict]:
        subject = f"Patient/{config.fhir_patient_id}"
        for key, name in files:
            day, _, source = key.partition("|")
            try:
                resources = list(
                    self.output.read_resources(
                        f"{partition_dir(date.fromisoformat(day), source)}/{name}"
                    )
                )
            except FileNotFoundError:
                continue  # replaced by a newer version since the listing: it is read next time
            for resource in resources:
                if resource.get("subject", {}).get("reference") == subject or (
                    resource["resourceType"] == "Patient"
                    and resource["id"] == config.fhir_patient_id
                ):
                    yield resource

    def last_changed(self, config: HealthSyncConfig, resource_type: str) -> dict[str, int]:
        """When each of the person's resources of this type last changed (fhir_changes)."""
        t = fhir_changes
        query = sa.select(t.c.resource_id, t.c.at_us).where(
            t.c.provider == config.provider, t.c.user_id == config.user_id,
            t.c.resource_type == resource_type,
        )  # fmt: skip
        with self.store.read() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(query)}

    def read(self, resource_type: str, resource_id: str) -> tuple[HealthSyncConfig, dict] | None:
        """A resource by id, as its bucket's current file holds it, with its person; None when
        no change of it was recorded, its person is gone, or its file no longer holds it."""
        t, f = fhir_changes, fhir_files
        with self.store.read() as conn:
            row = conn.execute(
                sa.select(
                    t.c.provider, t.c.user_id, t.c.partition_key, t.c.bucket, t.c.at_us
                ).where(t.c.resource_type == resource_type, t.c.resource_id == resource_id)
            ).first()
            name = None if row is None else conn.execute(
                sa.select(f.c.name).where(f.c.partition_key == row.partition_key,
                                          f.c.bucket == row.bucket,
                                          f.c.resource_type == resource_type)
            ).scalar()  # fmt: skip
        if row is None or name is None:
            return None
        config = self.store.user(row.provider, row.user_id)
        if config is None:
            return None
        for resource in self._read([(row.partition_key, name)], config):
            if resource["resourceType"] == resource_type and resource["id"] == resource_id:
                return config, stamped(resource, int(row.at_us))
        return None

    def read_many(self, resource_type: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Resources by id (those found, as `read` finds them), each file read once."""
        t, f = fhir_changes, fhir_files
        wanted = sorted(set(ids))
        rows: list[Any] = []
        with self.store.read() as conn:
            for start in range(0, len(wanted), 500):
                rows += conn.execute(
                    sa.select(t.c.resource_id, t.c.provider, t.c.user_id, t.c.partition_key,
                              t.c.bucket, t.c.at_us)
                    .where(t.c.resource_type == resource_type,
                           t.c.resource_id.in_(wanted[start : start + 500]))
                ).all()  # fmt: skip
            places = {(r.partition_key, r.bucket) for r in rows}
            names = {
                (p, b): conn.execute(
                    sa.select(f.c.name).where(f.c.partition_key == p, f.c.bucket == b,
                                              f.c.resource_type == resource_type)
                ).scalar()
                for p, b in places
            }  # fmt: skip
        found: dict[str, dict[str, Any]] = {}
        by_place: dict[tuple[str, int], dict[str, Any]] = {}
        for row in rows:
            by_place.setdefault((row.partition_key, row.bucket), {})[row.resource_id] = row
        for (partition, bucket), held in by_place.items():
            name = names.get((partition, bucket))
            first = next(iter(held.values()))
            config = None if name is None else self.store.user(first.provider, first.user_id)
            if name is None or config is None:
                continue
            for resource in self._read([(partition, name)], config):
                row = held.get(resource["id"])
                if row is not None and resource["resourceType"] == resource_type:
                    found[resource["id"]] = stamped(resource, int(row.at_us))
        return found

    def patient(self, config: HealthSyncConfig) -> dict[str, Any] | None:
        """The person's Patient as last published."""
        for key, name in self._files(config, "Patient", None, None):
            for resource in self._read([(key, name)], config):
                return resource
        return None

    def observations(
        self,
        config: HealthSyncConfig,
        codes: Sequence[tuple[str | None, str]],
        dates: Sequence[DateFilter],
        updated: Sequence[DateFilter] = (),
    ) -> list[dict[str, Any]]:
        """The person's Observations matching every filter (`updated`: on when each last
        changed; one with no recorded change matches none), ordered by start then id, each with
        `meta.lastUpdated` where a change of it is recorded."""
        changed = self.last_changed(config, "Observation")
        lows = [d.low_us for d in dates if d.prefix in ("eq", "ge", "gt")]
        highs = [d.high_us for d in dates if d.prefix in ("eq", "le", "lt")]
        # A local day's partition holds instants up to 14 h before and 12 h after its UTC day.
        first = _day(max(lows) - 2 * 86_400 * _US) if lows else None
        last = _day(min(highs) + 2 * 86_400 * _US) if highs else None
        found = {}
        for resource in self._read(self._files(config, "Observation", first, last), config):
            if codes and not _has_code(resource, codes):
                continue
            span = effective_range(resource)
            if dates and (span is None or not all(d.holds(*span) for d in dates)):
                continue
            at = changed.get(resource["id"])
            if updated and (at is None or not all(u.holds(at, at) for u in updated)):
                continue
            found[resource["id"]] = stamped(resource, at)
        return sorted(found.values(), key=_sort_key)


def stamped(resource: dict[str, Any], changed_us: int | None) -> dict[str, Any]:
    """The resource with `meta.lastUpdated`: when it last changed (the files do not carry it,
    so their bytes stay the same from one render of the same data to the next)."""
    if changed_us is None:
        return resource
    return {**resource, "meta": {**resource.get("meta", {}), "lastUpdated": iso_us(changed_us)}}


def _day(us: int) -> date:
    return datetime.fromtimestamp(max(us, 0) / _US, UTC).date()


def _of_provider(partition_key: str, config: HealthSyncConfig) -> bool:
    return key_provider(partition_key.partition("|")[2]) == config.provider
