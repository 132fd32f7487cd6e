"""What every provider API source shares: its settings from the environment and its connection
(HTTP client + the store's encrypted tokens).

| variable | default | meaning |
|---|---|---|
| OHX_TOKEN_KEY | (required once a token is read or written) | Fernet key(s), comma-separated |
| OHX_OURA_CLIENT_ID, OHX_OURA_CLIENT_SECRET | (required for source "oura") | Oura OAuth app |
| OHX_OURA_API_URL, OHX_OURA_TOKEN_URL | https://api.ouraring.com, .../oauth/token | |
| OHX_WITHINGS_CLIENT_ID, OHX_WITHINGS_CLIENT_SECRET | (required for "withings") | Withings app |
| OHX_WITHINGS_API_URL, OHX_WITHINGS_TOKEN_URL | https://wbsapi.withings.net, .../v2/oauth2 | |
| OHX_GOOGLE_HEALTH_CLIENT_ID, ..._CLIENT_SECRET | (required for "google_health") | Google app |
| OHX_GOOGLE_HEALTH_API_URL, ..._TOKEN_URL | https://health.googleapis.com, oauth2 token | |

The secrets are read where the source is built (SourcesResource.get), never stored in run config.
API sources enumerate no users themselves: `discover_users()` is [] (the HealthSource protocol's
rule for OAuth APIs). Their users are the ones `connect_user` stored, which sync_partition reads
from the store like every other source's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from ohx_dagster.errors import ConfigError
from ohx_dagster.models import HealthDataType, HealthSyncConfig
from ohx_dagster.providers.http import ApiClient
from ohx_dagster.providers.tokens import OAuthClient, TokenStore, UserTokens
from ohx_dagster.records import empty_batch, make_batch
from ohx_dagster.store import RecordStore


@dataclass(frozen=True, slots=True)
class _Defaults:
    prefix: str
    api_url: str
    token_url: str
    extra_params: Mapping[str, str] = field(default_factory=dict)
    wrapped: bool = False


API_DEFAULTS: Final[dict[str, _Defaults]] = {
    "oura": _Defaults(
        "OHX_OURA", "https://api.ouraring.com", "https://api.ouraring.com/oauth/token"
    ),
    "withings": _Defaults(
        "OHX_WITHINGS",
        "https://wbsapi.withings.net",
        "https://wbsapi.withings.net/v2/oauth2",
        {"action": "requesttoken"},
        wrapped=True,
    ),
    "google_health": _Defaults(
        "OHX_GOOGLE_HEALTH", "https://health.googleapis.com", "https://oauth2.googleapis.com/token"
    ),
}


@dataclass(frozen=True, slots=True)
class ApiSettings:
    provider: str
    base_url: str
    oauth: OAuthClient

    @classmethod
    def from_env(cls, provider: str, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        defaults = API_DEFAULTS[provider]
        p = defaults.prefix
        missing = [n for n in (f"{p}_CLIENT_ID", f"{p}_CLIENT_SECRET") if not env.get(n)]
        if missing:
            raise ConfigError(f"source {provider!r} needs {' and '.join(missing)} (its OAuth app)")
        return cls(
            provider=provider,
            base_url=env.get(f"{p}_API_URL") or defaults.api_url,
            oauth=OAuthClient(
                provider=provider,
                token_url=env.get(f"{p}_TOKEN_URL") or defaults.token_url,
                client_id=env[f"{p}_CLIENT_ID"],
                client_secret=env[f"{p}_CLIENT_SECRET"],
                extra_params=dict(defaults.extra_params),
                wrapped=defaults.wrapped,
            ),
        )


class ApiConnection:
    """A source's HTTP client and token store; `auth(user)` is that user's TokenSource."""

    def __init__(
        self,
        store: RecordStore,
        settings: ApiSettings,
        *,
        backoff_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.api = ApiClient(settings.provider, settings.base_url, backoff_s=backoff_s)
        self.tokens = TokenStore(store)
        self.clock = clock

    def auth(self, user: HealthSyncConfig) -> UserTokens:
        return UserTokens(
            self.tokens, self.settings.oauth, user.user_id, self.api, clock=self.clock
        )

    def where(self, endpoint: str) -> str:
        return f"{self.settings.provider} {endpoint}"


class ApiSource:
    """What the provider API sources share: a connection, and no users of their own (people
    arrive by connecting their account, see ohx_dagster/providers/connect.py)."""

    name: str

    def __init__(
        self, store: RecordStore, settings: ApiSettings | None = None, **connection: Any
    ) -> None:
        settings = settings or ApiSettings.from_env(self.name)
        self.connection = ApiConnection(store, settings, **connection)

    def discover_users(self) -> list[HealthSyncConfig]:
        return []


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement as a provider gave it, before validation and unit conversion."""

    at: datetime
    value: float
    offset_min: int | None  # the device's local UTC offset, when the provider gives it
    duration_s: float | None = None
    device_id: str = ""
    diastolic: float | None = None


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
        device_id=[s.device_id for s in samples],  # type: ignore[arg-type]
        utc_offset_min=pd.array([s.offset_min for s in samples], dtype="Int32"),
        duration_s=[np.nan if s.duration_s is None else s.duration_s for s in samples],
        diastolic=None
        if kind is not HealthDataType.BLOOD_PRESSURE
        else [np.nan if s.diastolic is None else s.diastolic for s in samples],
    )
