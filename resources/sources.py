"""The health-data sources (one per `source` partition key) as a Dagster resource."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache

import dagster as dg
import pydantic

from ohx_dagster.config.providers import ApiSettings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.providers.apple_health import AppleHealthSource
from ohx_dagster.providers.base import HealthSource, Windowed
from ohx_dagster.providers.bounds import EARLIEST_SAMPLE, PlausibleDates
from ohx_dagster.providers.fitabase import FitabaseSource, parse_dirs
from ohx_dagster.providers.polar import PolarH10Source
from ohx_dagster.providers.registry import (
    API_PROVIDERS,
    KNOWN_SOURCES,
    RESYNC_HORIZON,
    SUPPORTED_TYPES,
)
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.storage.store import RecordStore


@cache
def _simulated(users: int, seed: int, hr_hz: float | None) -> SimulatedSource:
    return SimulatedSource(users, seed=seed, hr_hz=hr_hz)


def _dates(earliest: str) -> PlausibleDates:
    """From OHX_EARLIEST_SAMPLE_DATE to tomorrow of the clock when the export is read."""
    return PlausibleDates.at(datetime.now(UTC), date.fromisoformat(earliest))


@cache
def _fitabase(directories: str, timezone: str, earliest: str) -> FitabaseSource:
    # Cached per process: an export is parsed once, not once per asset.
    return FitabaseSource(parse_dirs(directories), timezone, dates=_dates(earliest))


@cache
def _polar(path: str, timezone: str | None, earliest: str) -> PolarH10Source:
    return PolarH10Source(path, timezone=timezone, dates=_dates(earliest))


@cache
def _apple_health(path: str, user_id: str | None, earliest: str) -> AppleHealthSource:
    # Cached per process: a multi-gigabyte export is streamed once, not once per asset.
    return AppleHealthSource(path, user_id=user_id, dates=_dates(earliest))


@cache
def _api_source(name: str, store: RecordStore, horizon: timedelta) -> object:
    # One HTTP connection pool per process, provider and store. Their people's OAuth tokens live
    # in the record store, their OAuth app in the environment (ohx_dagster/config/providers.py).
    app = API_PROVIDERS[name]
    return app.source(store, ApiSettings.from_env(app), horizon=horizon)


class SourcesResource(dg.ConfigurableResource):
    """Builds the source behind a `source` partition key."""

    simulated_users: int = pydantic.Field(
        3, description="OHX_SIMULATED_USERS: number of simulated people (a whole number >= 1)."
    )
    simulated_seed: int = pydantic.Field(
        7, description="OHX_SIMULATED_SEED: seed of the simulated provider (a whole number)."
    )
    # OHX_SIMULATED_HR_HZ: heart-rate samples per second of every simulated user (None: per user).
    simulated_hr_hz: float | None = pydantic.Field(
        None,
        description="OHX_SIMULATED_HR_HZ: heart-rate samples per second of every simulated "
        "person (null: 1 to 0.2, per person).",
    )
    fitabase_dir: str | None = pydantic.Field(
        None, description="OHX_FITABASE_DIR: Fitabase export folder(s), separated by ':'."
    )
    fitabase_tz: str = pydantic.Field(
        "", description="OHX_FITABASE_TZ: IANA zone of the Fitabase files' wall-clock times."
    )
    polar_csv: str | None = pydantic.Field(
        None, description="OHX_POLAR_CSV: a Polar H10 recording (ECGLogger CSV), source polar."
    )
    polar_tz: str | None = pydantic.Field(
        None, description="OHX_POLAR_TZ: IANA zone of a Sensor Logger file's wall-clock times."
    )
    apple_health_export: str | None = pydantic.Field(
        None, description="OHX_APPLE_HEALTH_EXPORT: an Apple Health export.xml or export.zip."
    )
    apple_health_user: str | None = pydantic.Field(
        None,
        description="OHX_APPLE_HEALTH_USER: the person's id (null: the export's folder name).",
    )
    # OHX_EARLIEST_SAMPLE_DATE (ISO day): exports' samples dated before it or after tomorrow are
    # refused (ohx_dagster/providers/bounds.py).
    earliest_sample: str = pydantic.Field(
        EARLIEST_SAMPLE.isoformat(),
        description="OHX_EARLIEST_SAMPLE_DATE (YYYY-MM-DD): exports' samples dated before it or "
        "after tomorrow are refused.",
    )
    # Seconds, per source: OHX_RESYNC_HORIZON's overrides of providers/registry.py.
    resync_horizons_s: dict[str, float] = pydantic.Field(
        default_factory=dict,
        description="OHX_RESYNC_HORIZON: seconds a sync re-reads, per source ({'oura': 259200}).",
    )

    def horizon(self, name: str) -> timedelta:
        if name in self.resync_horizons_s:
            return timedelta(seconds=self.resync_horizons_s[name])
        return RESYNC_HORIZON[name]

    def get(self, name: str, store: RecordStore | None = None) -> HealthSource:
        """The source; provider APIs also need the `store` that holds their users' tokens."""
        reader = self._reader(name, store)
        if isinstance(reader, HealthSource):
            return reader
        return Windowed(reader, SUPPORTED_TYPES[name], self.horizon(name))

    def _reader(self, name: str, store: RecordStore | None) -> object:
        if name in API_PROVIDERS:
            if store is None:
                raise ConfigError(f"source {name!r} is a provider API: it needs the record store")
            return _api_source(name, store, self.horizon(name))
        if name == "simulated":
            return _simulated(self.simulated_users, self.simulated_seed, self.simulated_hr_hz)
        if name == "fitabase":
            if not self.fitabase_dir:
                raise ConfigError("source 'fitabase' needs OHX_FITABASE_DIR (an export directory)")
            if not self.fitabase_tz:
                raise ConfigError("source 'fitabase' needs OHX_FITABASE_TZ (the exports' zone)")
            return _fitabase(self.fitabase_dir, self.fitabase_tz, self.earliest_sample)
        if name == "polar":
            if not self.polar_csv:
                raise ConfigError("source 'polar' needs OHX_POLAR_CSV (a Polar H10 CSV file)")
            return _polar(self.polar_csv, self.polar_tz, self.earliest_sample)
        if name == "apple_health":
            if not self.apple_health_export:
                raise ConfigError(
                    "source 'apple_health' needs OHX_APPLE_HEALTH_EXPORT (export.xml or export.zip)"
                )
            return _apple_health(
                self.apple_health_export, self.apple_health_user, self.earliest_sample
            )
        raise ConfigError(f"unknown source {name!r}: expected one of {', '.join(KNOWN_SOURCES)}")
