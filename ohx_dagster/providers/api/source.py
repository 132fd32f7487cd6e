"""What every provider API source shares: its settings (ApiSettings, read from the environment
by ohx_dagster/config/providers.py, where its variables are listed) and its connection (HTTP
client + the store's encrypted tokens, whose key is ohx_dagster/config/tokens.py's).

The secrets are read where the source is built (SourcesResource.get), never stored in run config.
API sources enumerate no users themselves: `discover_users()` is [] (the HealthSource protocol's
rule for OAuth APIs). Their users are the ones `connect_user` stored, which sync_partition reads
from the store like every other source's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from ohx_dagster.config.providers import ApiSettings
from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.errors import NeedsReauthorization, ProviderError, RateLimited
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import concat, dedupe, empty_batch, make_batch
from ohx_dagster.core.times import from_us
from ohx_dagster.providers.api.app import ProviderApp
from ohx_dagster.providers.api.budget import RequestBudget
from ohx_dagster.providers.api.http import ApiClient, Refused, TokenSource
from ohx_dagster.providers.api.tokens import TokenStore, UserTokens
from ohx_dagster.providers.base import Event, FetchResult, Windows, windows_from_moments
from ohx_dagster.storage.store import RecordStore


class ApiConnection:
    """A source's HTTP client and token store; `auth(user)` is that user's TokenSource."""

    def __init__(
        self,
        store: RecordStore,
        settings: ApiSettings,
        app: ProviderApp,
        *,
        backoff_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.app = app
        self.store = store
        self.api = ApiClient(settings.provider, settings.base_url, backoff_s=backoff_s)
        self.tokens = TokenStore(store)
        self.clock = clock

    def budget(self, user: HealthSyncConfig) -> RequestBudget:
        """The request allowance a call for this person draws from (the application's, or the
        person's own where the provider counts per person)."""
        return RequestBudget(
            self.store, self.app.name, self.app.request_limit, user.user_id, clock=self.clock
        )

    def auth(self, user: HealthSyncConfig) -> UserTokens:
        return UserTokens(
            self.tokens, self.settings.oauth, user.user_id, self.api, clock=self.clock
        )

    def where(self, endpoint: str) -> str:
        return f"{self.settings.provider} {endpoint}"


class ApiSource:
    """What the provider API sources share: a connection, no people of their own (people arrive
    by connecting their account, see ohx_dagster/providers/api/connect.py), and per-type outcomes.

    `fetch_windows` reads type by type (`read`, one window at a time): a type the provider
    refuses (403) is recorded as refused, a type that fails otherwise as failed, and the other
    types go on. A rate limit or a refused grant stops the person's fetch (RateLimited,
    NeedsReauthorization): every further call would meet them too. A provider whose API serves
    several types in one call (Withings) overrides `fetch_windows`."""

    app: ProviderApp

    def __init__(
        self,
        store: RecordStore,
        settings: ApiSettings | None = None,
        *,
        horizon: timedelta | None = None,
        **connection: Any,
    ) -> None:
        settings = settings or ApiSettings.from_env(self.app)
        self.connection = ApiConnection(store, settings, self.app, **connection)
        self._horizon = horizon

    @property
    def name(self) -> str:
        return self.app.name

    @property
    def supported_types(self) -> frozenset[HealthDataType]:
        return self.app.supported_types

    @property
    def resync_horizon(self) -> timedelta:
        return self.app.resync_horizon if self._horizon is None else self._horizon

    def discover_users(self) -> list[HealthSyncConfig]:
        return []

    def read(
        self, user: HealthSyncConfig, kind: HealthDataType, window: DateRange, auth: TokenSource
    ) -> pd.DataFrame:
        """The person's records of one type in one window (canonical batch)."""
        raise NotImplementedError(f"{type(self).__name__} reads no {kind.value}")

    def fetch_windows(self, user: HealthSyncConfig, windows: Windows) -> FetchResult:
        auth = self.connection.auth(user)
        result = FetchResult()
        batches = []
        for kind, intervals in sorted(windows.items()):
            try:
                for start, end in intervals:
                    window = DateRange(from_us(start), from_us(end))
                    batches.append(self.read(user, kind, window, auth))
            except Refused as refused:
                result.refused[kind.value] = str(refused)
                continue
            except (RateLimited, NeedsReauthorization):
                raise
            except (ProviderError, OSError) as failed:
                result.failed[kind.value] = f"{type(failed).__name__}: {failed}"
                continue
            result.covered[kind.value] = list(intervals)
        result.batch = dedupe(concat(batches))
        return result

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        return windows_from_moments(self.supported_types & user.enabled_types, events, now)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement as a provider gave it, before validation and unit conversion."""

    at: datetime
    value: float
    offset_min: int | None  # the device's local UTC offset, when the provider gives it
    duration_s: float | None = None
    device_id: str = ""
    diastolic: float | None = None
    method: str = "device"  # ohx_dagster.core.records.METHODS
    context: str = ""  # what the person was doing, as the provider names it
    parts: list[float] | None = None  # a session's parts (ohx_dagster/core/sessions.py)


def offset_min(moment: datetime) -> int:
    offset = moment.utcoffset()
    assert offset is not None, "aware datetimes only"
    return int(offset.total_seconds() // 60)


def samples_batch(
    provider: str, user_id: str, kind: HealthDataType, unit: str, samples: list[Sample]
) -> pd.DataFrame:
    """A validated record batch (make_batch: unit conversion, hard limits) of one type."""
    if not samples:
        return empty_batch()
    return make_batch(
        provider=provider,
        user_id=user_id,
        data_type=kind,
        timestamps=pd.DatetimeIndex([s.at.astimezone(UTC) for s in samples]),
        values=[s.value for s in samples],
        unit=unit,
        device_id=[s.device_id for s in samples],
        utc_offset_min=pd.array([s.offset_min for s in samples], dtype="Int32"),
        duration_s=[np.nan if s.duration_s is None else s.duration_s for s in samples],
        diastolic=None
        if kind is not HealthDataType.BLOOD_PRESSURE
        else [np.nan if s.diastolic is None else s.diastolic for s in samples],
        method=[s.method for s in samples],
        context=[s.context for s in samples],
        samples=[s.parts for s in samples] if any(s.parts for s in samples) else None,
    )
