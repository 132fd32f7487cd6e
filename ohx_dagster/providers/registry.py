"""Every source the product knows: the provider APIs (each folder's ProviderApp), and what each
source can deliver and how late its data may arrive: read by the sync, the schedules and
`ohx status`, so none of them asks a source for a type it never has.

Each source, as `source (types): default re-sync horizon, and why that horizon`:

- simulated (all types): 1 h, the simulator's data is there when its hour has passed.
- oura (heart rate, steps, SpO2): 48 h, the ring uploads when the app opens, often the next
  morning.
- withings (heart rate, steps, blood pressure, weight, temperature, SpO2, ECG): 48 h, scales and
  cuffs sync over Wi-Fi or the app; notifications name new data too.
- google_health (heart rate, steps, weight, SpO2): 72 h, watches sync through the phone,
  sometimes days later.
- polar_accesslink (exercise heart rate, RR intervals): 72 h, watches upload when they sync.
- dexcom (interstitial glucose): 48 h, the apps upload as the sensor reads and Dexcom serves the
  readings hours later (about 1 h in the US, 3 h elsewhere); a phone out of reach uploads when
  it is back.
- fitabase, polar, apple_health (what the export holds): 0, a file does not change after it was
  written.

OHX_RESYNC_HORIZON overrides per source: `oura=72h,google_health=4d` (units m, h, d).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from ohx_dagster.config.sources import SourceCatalog
from ohx_dagster.core.models import HealthDataType as T
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.providers import dexcom, google_health, oura, polar, withings
from ohx_dagster.providers.api.app import ProviderApp

# Provider APIs: each folder's ProviderApp. A new provider is a new folder and a line here.
API_PROVIDERS: Final[dict[str, ProviderApp]] = {
    app.name: app
    for app in (oura.APP, withings.APP, google_health.APP, polar.ACCESSLINK, dexcom.APP)
}

SUPPORTED_TYPES: Final[dict[str, frozenset[T]]] = {
    "simulated": frozenset(T),
    **{name: app.supported_types for name, app in API_PROVIDERS.items()},
    "fitabase": frozenset({T.HEART_RATE, T.STEPS, T.WEIGHT}),
    "polar": frozenset({T.HEART_RATE, T.RR_INTERVALS, T.ECG}),
    "apple_health": frozenset(
        {
            *(T.HEART_RATE, T.STEPS, T.WEIGHT, T.TEMPERATURE, T.SPO2, T.BLOOD_PRESSURE, T.ECG),
            *(T.RESPIRATORY_RATE, T.HRV_SDNN, T.BLOOD_GLUCOSE, T.SLEEP, T.WORKOUT),
        }
    ),
}

RESYNC_HORIZON: Final[dict[str, timedelta]] = {
    "simulated": timedelta(hours=1),
    **{name: app.resync_horizon for name, app in API_PROVIDERS.items()},
    "fitabase": timedelta(0),
    "polar": timedelta(0),
    "apple_health": timedelta(0),
}


def horizons(overrides: Mapping[str, timedelta]) -> dict[str, timedelta]:
    return {**RESYNC_HORIZON, **overrides}


# What the settings check OHX_SOURCES, OHX_RESYNC_HORIZON and OHX_MAX_SYNC_LAG against, and the
# provider APIs whose OAuth app a named source needs: handed to Settings.from_env by the
# composition roots (config does not import this module).
CATALOG: Final = SourceCatalog(apis=API_PROVIDERS, horizons=RESYNC_HORIZON)
KNOWN_SOURCES: Final = CATALOG.names


# What a source is, in words for the people who read a Provenance.
_DESCRIPTIONS: Final[dict[str, str]] = {
    "simulated": "the embedded simulated provider (development data)",
    "oura": "Oura API v2",
    "withings": "Withings public API",
    "google_health": "Google Health API v4",
    "polar_accesslink": "Polar AccessLink API v3",
    "dexcom": "Dexcom API v3",
    "polar": "Polar H10 recording (Polar Sensor Logger or ECGLogger files)",
    "apple_health": "Apple Health export",
    "fitabase": "Fitbit data export (Fitabase layout)",
}
# Exports whose times are wall-clock times without an offset: the zone they were read in is part
# of what they say.
_WALL_CLOCK: Final = frozenset({"fitabase", "polar"})


def describe(provider: str, config: HealthSyncConfig) -> str:
    text = _DESCRIPTIONS.get(provider, provider)
    if provider in _WALL_CLOCK:
        text += f", wall-clock times read as {config.timezone}"
    return text
