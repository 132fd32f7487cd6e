"""Settings from the environment, read in one place. Every variable, its default, and why.

| variable | default | meaning |
|---|---|---|
| OHX_HOME | ~/.ohx | data directory: SQLite store, FHIR NDJSON output |
| OHX_DATABASE_URL | sqlite:///$OHX_HOME/ohx.db | record store (sqlite:/// or postgresql://) |
| OHX_PARTITIONS_START | 2025-01-01 | first day partition (UTC) |
| OHX_SOURCES | simulated (+ fitabase if OHX_FITABASE_DIR) | `name` or `name:N` (N shards) |
| OHX_FITABASE_DIR | (unset) | Fitabase export directory; several separated by ':' |
| OHX_FITABASE_TZ | (required with fitabase) | IANA zone of the exports' wall-clock times |
| OHX_SIMULATED_USERS | 3 | number of simulated users |
| OHX_SIMULATED_SEED | 7 | seed of the simulated provider |
| OHX_SIMULATED_HR_HZ | (unset: 1 to 0.2, per user) | heart-rate samples/s of every simulated user |
| OHX_FHIR_DIR | $OHX_HOME/fhir | FHIR bulk output root: a path or s3://bucket/prefix |
| OHX_S3_ENDPOINT_URL | (unset: AWS) | S3-compatible endpoint for an s3:// output (MinIO, moto) |
| OHX_RESYNC_HORIZON | per source (providers/registry.py) | how far back syncs re-read, `oura=72h` |
| OHX_MAX_SYNC_LAG | 2 x sync interval + horizon | lag sync_status's freshness allows, `oura=6h` |
| OHX_POLAR_CSV | (unset) | Polar H10 recording (ECGLogger CSV) for source "polar" |
| OHX_POLAR_TZ | (required for Sensor Logger files) | IANA zone of the phone's wall-clock times |
| OHX_PUBLISH_AMBIGUOUS | false | publish readings a shared device cannot attribute (Withings) |
| OHX_APPLE_HEALTH_EXPORT | (unset) | Apple Health export.xml or export.zip, source "apple_health" |
| OHX_APPLE_HEALTH_USER | export's folder name | user id of that export |
| OHX_EARLIEST_SAMPLE_DATE | 2000-01-01 | exports: samples before it or after tomorrow refused |
| OHX_TOKEN_KEY | (unset) | Fernet key(s) encrypting provider OAuth tokens at rest |
| OHX_ERASURE_SALT | $OHX_HOME/erasure-salt | salt of people's subjects (privacy/subjects.py) |
| OHX_AUDIT_RETENTION | 2190d | how long audit log rows are kept (`Nd`, days), see below |
| OHX_{OURA,WITHINGS,GOOGLE_HEALTH}_* | (unset) | provider API sources: see providers/api.py |

OHX_AUDIT_RETENTION: the daily retention job deletes audit log rows (ohx_dagster/privacy/audit.py)
older than this. The default, 2190 days (six years), is the HIPAA retention of security
documentation (45 CFR 164.316(b)(2)(i)), which hospitals apply to access logs too; an institution
with a longer rule sets it (the rows hold salted hashes only, so keeping them longer keeps no
personal data).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Final

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.providers.api import ApiSettings
from ohx_dagster.providers.registry import API_PROVIDERS, horizons
from ohx_dagster.sync.shards import Sharding

KNOWN_SOURCES = ("simulated", "fitabase", "polar", "apple_health", *API_PROVIDERS)
# Exports are imported as they are: they have no webhooks and no "new user" history to fetch.
FILE_SOURCES = frozenset({"fitabase", "polar", "apple_health"})


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str
    partitions_start: date
    sources: tuple[str, ...]
    fitabase_dir: str | None
    fitabase_tz: str
    simulated_users: int
    simulated_seed: int
    fhir_dir: str
    polar_csv: str | None = None
    polar_tz: str | None = None
    # Readings a shared device cannot attribute to one person (Withings attrib 1, 4) go into the
    # store always, into the published FHIR only when the operator says so.
    publish_ambiguous: bool = False
    apple_health_export: str | None = None
    apple_health_user: str | None = None
    # (source, shard count) of the sources OHX_SOURCES splits into hash shards of users.
    shard_counts: tuple[tuple[str, int], ...] = ()
    # (source, seconds) overriding the re-sync horizons of providers/registry.py.
    horizon_overrides: tuple[tuple[str, float], ...] = ()
    # Heart-rate samples per second of every simulated person (None: each profile's own rate).
    simulated_hr_hz: float | None = None
    # (source, seconds): OHX_MAX_SYNC_LAG, the lag the sync_status freshness checks allow
    # (ohx_dagster/sync/status.py; default per person: 2 x their sync interval + the horizon).
    max_lag_overrides: tuple[tuple[str, float], ...] = ()
    # OHX_AUDIT_RETENTION (module docstring).
    audit_retention: timedelta = timedelta(days=2190)
    # OHX_EARLIEST_SAMPLE_DATE: the file sources (exports) refuse samples dated before this UTC
    # day or after tomorrow, and count them. No wearable or home device stored data before
    # 2000, and a sample from 1900 or 9999 is a broken clock or a forged file: kept, it would
    # make an import span (and sync) every day between it and the real data.
    earliest_sample: date = date(2000, 1, 1)

    @property
    def resync_horizons(self) -> dict[str, timedelta]:
        overrides = {name: timedelta(seconds=s) for name, s in self.horizon_overrides}
        return horizons(overrides)

    @property
    def live_sources(self) -> tuple[str, ...]:
        """Sources that users connect to and that notify us (APIs and the simulator)."""
        return tuple(s for s in self.sources if s not in FILE_SOURCES)

    @property
    def sharding(self) -> Sharding:
        """Shard count of every source (1 = unsharded)."""
        counts = dict(self.shard_counts)
        return Sharding({s: counts.get(s, 1) for s in self.sources})

    @property
    def source_keys(self) -> tuple[str, ...]:
        """The `source` partition keys: one per source, or one per shard of a sharded one."""
        return tuple(self.sharding.all_keys())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("OHX_HOME") or Path.home() / ".ohx").expanduser()
        fitabase_dir = env.get("OHX_FITABASE_DIR") or None
        default_sources = "simulated,fitabase" if fitabase_dir else "simulated"
        sharding = Sharding.parse(env.get("OHX_SOURCES", default_sources))
        sources = tuple(sharding)
        for source in sources:
            if source not in KNOWN_SOURCES:
                raise ConfigError(
                    f"OHX_SOURCES: unknown source {source!r}; known: {', '.join(KNOWN_SOURCES)}"
                )
        if not sources:
            raise ConfigError("OHX_SOURCES is empty: name at least one source")
        if "fitabase" in sources and not fitabase_dir:
            raise ConfigError("OHX_SOURCES names fitabase but OHX_FITABASE_DIR is not set")
        polar_csv = env.get("OHX_POLAR_CSV") or None
        if "polar" in sources and not polar_csv:
            raise ConfigError("OHX_SOURCES names polar but OHX_POLAR_CSV is not set")
        apple_health_export = env.get("OHX_APPLE_HEALTH_EXPORT") or None
        if "apple_health" in sources and not apple_health_export:
            raise ConfigError(
                "OHX_SOURCES names apple_health but OHX_APPLE_HEALTH_EXPORT is not set"
            )
        for source in sources:
            if source in API_PROVIDERS:
                # A provider API named without its OAuth app fails here, when the code location
                # loads, not at its first run.
                ApiSettings.from_env(API_PROVIDERS[source], env)
        start_text = env.get("OHX_PARTITIONS_START", "2025-01-01")
        try:
            start = date.fromisoformat(start_text)
        except ValueError:
            raise ConfigError(f"OHX_PARTITIONS_START={start_text!r}: expected YYYY-MM-DD") from None
        # Wall-clock exports: the zone is never guessed (a wrong one shifts every sample).
        fitabase_tz = env.get("OHX_FITABASE_TZ") or ""
        if "fitabase" in sources and not fitabase_tz:
            raise ConfigError(
                "OHX_SOURCES names fitabase but OHX_FITABASE_TZ is not set: the export's times "
                "are wall-clock times without a zone; set the participants' IANA zone, e.g. "
                "OHX_FITABASE_TZ=America/Chicago"
            )
        for name in ("OHX_FITABASE_TZ", "OHX_POLAR_TZ"):
            if env.get(name):
                _zone(env, name)
        return cls(
            home=home,
            database_url=env.get("OHX_DATABASE_URL") or f"sqlite:///{home / 'ohx.db'}",
            partitions_start=start,
            sources=sources,
            fitabase_dir=fitabase_dir,
            fitabase_tz=fitabase_tz,
            simulated_users=_positive_int(env, "OHX_SIMULATED_USERS", 3),
            simulated_seed=_positive_int(env, "OHX_SIMULATED_SEED", 7),
            simulated_hr_hz=_rate(env, "OHX_SIMULATED_HR_HZ"),
            fhir_dir=_output_root(env.get("OHX_FHIR_DIR") or str(home / "fhir")),
            polar_csv=polar_csv,
            polar_tz=env.get("OHX_POLAR_TZ") or None,
            publish_ambiguous=_flag(env, "OHX_PUBLISH_AMBIGUOUS"),
            apple_health_export=apple_health_export,
            apple_health_user=env.get("OHX_APPLE_HEALTH_USER") or None,
            shard_counts=tuple((s, n) for s, n in sharding.items() if n > 1),
            horizon_overrides=_per_source_seconds(env, "OHX_RESYNC_HORIZON", minimum=0),
            max_lag_overrides=_per_source_seconds(env, "OHX_MAX_SYNC_LAG", minimum=1),
            earliest_sample=earliest_sample_date(env),
            audit_retention=audit_retention(env),
        )


def earliest_sample_date(env: Mapping[str, str] | None = None) -> date:
    """OHX_EARLIEST_SAMPLE_DATE (default 2000-01-01), read alone: `ohx import` needs it where
    the rest of Dagster's settings may not be set."""
    env = os.environ if env is None else env
    text = (env.get("OHX_EARLIEST_SAMPLE_DATE") or "2000-01-01").strip()
    try:
        found = date.fromisoformat(text)
    except ValueError:
        found = None
    if found is None or found.year < 1970:
        raise ConfigError(
            f"OHX_EARLIEST_SAMPLE_DATE={text!r}: expected a day YYYY-MM-DD from 1970 on, the "
            "first day a file's samples may be dated (default 2000-01-01)"
        )
    return found


AUDIT_RETENTION_ENV: Final = "OHX_AUDIT_RETENTION"
AUDIT_RETENTION_DEFAULT: Final = "2190d"


def audit_retention(env: Mapping[str, str] | None = None) -> timedelta:
    """OHX_AUDIT_RETENTION as a span: `N` days written `Nd` (N >= 1), default 2190d (module
    docstring). Read alone by the retention job, which needs nothing else."""
    env = os.environ if env is None else env
    text = (env.get(AUDIT_RETENTION_ENV) or AUDIT_RETENTION_DEFAULT).strip()
    number = text[:-1] if text.endswith("d") else ""
    if not number.isdigit() or int(number) < 1:
        raise ConfigError(
            f"{AUDIT_RETENTION_ENV}={text!r}: expected a number of days >= 1 followed by d, "
            f"e.g. {AUDIT_RETENTION_DEFAULT} (six years, the default)"
        )
    return timedelta(days=int(number))


def _zone(env: Mapping[str, str], name: str) -> str:
    text = env[name]
    try:
        HealthSyncConfig(user_id="-", provider="-", timezone=text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected an IANA zone, e.g. Europe/Paris") from None
    return text


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = (env.get(name) or "false").strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name}={text!r}: expected true or false")
    return text in ("true", "1", "yes")


def _output_root(text: str) -> str:
    """A local path (expanded, absolute) or a URL such as s3://bucket/prefix, kept as given."""
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().absolute())


def _rate(env: Mapping[str, str], name: str) -> float | None:
    """A sample rate in Hz (unset or empty: None); at most 1000 and dividing a second into whole
    microseconds."""
    text = (env.get(name) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a sample rate in Hz, e.g. 1 or 0.2") from None
    if not 0 < value <= 1000 or abs(1_000_000 / value - round(1_000_000 / value)) > 1e-6:
        raise ConfigError(
            f"{name}={text!r}: expected a rate in Hz above 0 and at most 1000 whose period is a "
            "whole number of microseconds (1, 0.5, 0.2, 4, ...)"
        )
    return value


_DURATION_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}


def parse_per_source(name: str, text: str, *, minimum: int = 0) -> dict[str, timedelta]:
    """`oura=6h, withings=2d` -> a duration per source; errors name the setting, the part and
    the form."""
    found: dict[str, timedelta] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        source, _, amount = (t.strip() for t in part.partition("="))
        unit = _DURATION_UNITS.get(amount[-1:])
        number = amount[:-1]
        if source not in KNOWN_SOURCES or unit is None or not number.isdigit():
            number = ""
        if not number or int(number) < minimum:
            least = f", N >= {minimum}" if minimum else ""
            raise ConfigError(
                f"{name}: {part!r}: expected source=N followed by m, h or d{least} "
                f"(sources: {', '.join(KNOWN_SOURCES)})"
            )
        assert unit is not None  # refused above (no number without a unit)
        found[source] = timedelta(**{unit: int(number)})
    return found


def _per_source_seconds(
    env: Mapping[str, str], name: str, *, minimum: int
) -> tuple[tuple[str, float], ...]:
    found = parse_per_source(name, env.get(name, ""), minimum=minimum)
    return tuple((source, delta.total_seconds()) for source, delta in found.items())


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a whole number") from None
    if value < 0:
        raise ConfigError(f"{name}={text!r}: expected a number >= 0")
    return value
