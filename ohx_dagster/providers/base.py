"""What every source gives the sync: who its people are, and their records for the windows asked.

A sync asks a source for windows per data type (`fetch_windows`) and gets back a `FetchResult`: the
records, the windows it answered for in full per type (`covered`: they become coverage; the
provider's answer for such a window is authoritative, so stored records it no longer holds are
deleted), and per-type outcomes that are not data: a type the provider refuses (403: a scope the
person did not grant, an expired membership) and a type that failed this time.

Exports and the simulator answer one window at a time (`fetch(user, types, window)`); `windowed`
turns such a source into one that answers `fetch_windows`. Provider APIs implement `fetch_windows`
themselves, to ask once for several types where their API allows it (Withings getmeas).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import concat, dedupe, empty_batch, select
from ohx_dagster.core.times import from_us, to_us

Windows = Mapping[HealthDataType, Sequence[Interval]]


@dataclass
class FetchResult:
    batch: pd.DataFrame = field(default_factory=empty_batch)
    covered: dict[str, list[Interval]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    # Provider cursors to store with the records (Withings `lastupdate`): name -> value.
    cursors: dict[str, str] = field(default_factory=dict)

    def add(self, other: FetchResult) -> None:
        self.batch = dedupe(concat([self.batch, other.batch]))
        for kind, intervals in other.covered.items():
            self.covered.setdefault(kind, []).extend(intervals)
        self.refused |= other.refused
        self.failed |= other.failed
        self.cursors |= other.cursors


@dataclass(frozen=True, slots=True)
class Event:
    """A webhook notification as a source reads it (from the inbox)."""

    data_type: str | None
    occurred_at: datetime | None
    received_at: datetime
    payload: Mapping[str, Any]


@runtime_checkable
class HealthSource(Protocol):
    @property
    def name(self) -> str: ...

    # The types this source can ever deliver: others are never asked for, and never "missing".
    supported_types: frozenset[HealthDataType]
    # How far back a sync of today re-reads covered data, for uploads that arrive late.
    resync_horizon: timedelta

    def discover_users(self) -> list[HealthSyncConfig]:
        """People the source enumerates itself (exports, the simulator); [] for OAuth APIs,
        whose people arrive by connecting."""
        ...

    def fetch_windows(self, user: HealthSyncConfig, windows: Windows) -> FetchResult:
        """The person's records in the windows, per type."""
        ...

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        """What the person's notifications say changed, as windows per type."""
        ...


@runtime_checkable
class WindowReader(Protocol):
    """A source that answers one window at a time (exports, the simulator)."""

    name: str

    def discover_users(self) -> list[HealthSyncConfig]: ...

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int,
    ) -> pd.DataFrame: ...


class ReadOnce:
    """A `WindowReader` for exports, read whole when opened: a window is a selection of
    `records`. A record is stamped with its first sample (an ECG too), so any window holding that
    start yields the same record (idempotent upserts)."""

    @property
    def records(self) -> pd.DataFrame:
        """Every record of the export (each source reads it once, when first asked)."""
        raise NotImplementedError

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int = 1000,
    ) -> pd.DataFrame:
        return select(self.records, user.user_id, data_types, window)


# A notification that names only a moment means "new data up to here": read this far back.
EVENT_LOOKBACK = timedelta(minutes=15)


def windows_from_moments(
    types: Iterable[HealthDataType], events: Sequence[Event], now: datetime
) -> dict[HealthDataType, list[Interval]]:
    """For notifications that say only when (and maybe which type): from EVENT_LOOKBACK before
    the earliest event to now, for the named types (all of `types` when an event names none)."""
    wanted = set(types)
    found: dict[HealthDataType, list[Interval]] = {}
    for event in events:
        moment = min(event.occurred_at or event.received_at, event.received_at)
        kinds = wanted if event.data_type is None else {HealthDataType(event.data_type)} & wanted
        for kind in kinds:
            found.setdefault(kind, []).append((to_us(moment - EVENT_LOOKBACK), to_us(now)))
    return found


@dataclass
class Windowed:
    """A `WindowReader` as a `HealthSource`: one read per distinct window, all types at once."""

    reader: Any
    supported_types: frozenset[HealthDataType]
    resync_horizon: timedelta = timedelta(0)

    @property
    def name(self) -> str:
        return self.reader.name

    def discover_users(self) -> list[HealthSyncConfig]:
        return self.reader.discover_users()

    def fetch_windows(self, user: HealthSyncConfig, windows: Windows) -> FetchResult:
        by_window: dict[Interval, list[HealthDataType]] = {}
        for kind, intervals in windows.items():
            for interval in intervals:
                by_window.setdefault(interval, []).append(kind)
        result = FetchResult()
        batches = []
        for (start, end), kinds in sorted(by_window.items()):
            window = DateRange(from_us(start), from_us(end))
            batches.append(self.reader.fetch(user, kinds, window, batch_size=10_000))
            for kind in kinds:
                result.covered.setdefault(kind.value, []).append((start, end))
        result.batch = dedupe(concat(batches))
        return result

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        return windows_from_moments(self.supported_types & user.enabled_types, events, now)
