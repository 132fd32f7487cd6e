"""Settings from the environment, read in one place: the one `Settings` object. Its fields are
the sync's settings (the table below); its properties are a section per concern, each parsed
from the same environment when asked (a section that is wrong fails where it is used, as it
always did: the receiver's secrets do not stop `ohx status`), each with its variables' table in
its module:

| section | module | variables |
|---|---|---|
| `storage` | config/storage.py | OHX_HOME, OHX_DATABASE_URL, OHX_DB_AUTO_MIGRATE |
| `api(app)`, `apis` | config/providers.py | OHX_<P>_CLIENT_ID, _CLIENT_SECRET, _API_URL, _TOKEN_URL |
| `connection`, `subscriptions` | config/connect.py | OHX_OAUTH_REDIRECT_BASE, OHX_<P>_AUTHORIZE_URL, OHX_WEBHOOK_BASE_URL |
| `receiver` | config/receiver.py | the webhook secrets, OHX_WEBHOOK_* limits |
| `tokens` | config/tokens.py | OHX_TOKEN_KEY |
| `privacy` | config/privacy.py | OHX_ERASURE_SALT, OHX_AUDIT_RETENTION |
| `fhir_server`, `fhir_packages` | config/fhir.py | OHX_FHIR_SERVER_URL, ..., OHX_FHIR_PACKAGES |
| `cli` | config/cli.py | DAGSTER_HOME, OHX_UI_PORT, OHX_WEBHOOK_PORT, COLUMNS |
| (file locations) | config/locations.py | OHX_S3_ENDPOINT_URL |

ohx_dagster/config/environment.py is the one module that reads the process environment; every
section can also be read alone (`StorageSettings.from_env()`, ...) where a process needs it
without the sync's settings (`ohx db` in a migration job, the retention job). Secrets never show
in a settings object's repr (ohx_dagster/config/redact.py).

The sync's settings:

| variable | default | meaning |
|---|---|---|
| OHX_PARTITIONS_START | 2025-01-01 | first day partition (UTC) |
| OHX_SOURCES | simulated (+ fitabase if OHX_FITABASE_DIR) | `name` or `name:N` (N shards), config/sources.py |
| OHX_FITABASE_DIR | (unset) | Fitabase export directory; several separated by ':' |
| OHX_FITABASE_TZ | (required with fitabase) | IANA zone of the exports' wall-clock times |
| OHX_SIMULATED_USERS | 3 | number of simulated users |
| OHX_SIMULATED_SEED | 7 | seed of the simulated provider |
| OHX_SIMULATED_HR_HZ | (unset: 1 to 0.2, per user) | heart-rate samples/s of every simulated user |
| OHX_FHIR_DIR | $OHX_HOME/fhir | FHIR bulk output root: a path or s3://bucket/prefix |
| OHX_RESYNC_HORIZON | per source (providers/registry.py) | how far back syncs re-read, `oura=72h` |
| OHX_MAX_SYNC_LAG | 2 x sync interval + horizon | lag sync_status's freshness allows, `oura=6h` |
| OHX_POLAR_CSV | (unset) | Polar H10 recording (ECGLogger CSV) for source "polar" |
| OHX_POLAR_TZ | (required for Sensor Logger files) | IANA zone of the phone's wall-clock times |
| OHX_PUBLISH_AMBIGUOUS | false | publish readings a shared device cannot attribute (Withings) |
| OHX_APPLE_HEALTH_EXPORT | (unset) | Apple Health export.xml or export.zip, source "apple_health" |
| OHX_APPLE_HEALTH_USER | export's folder name | user id of that export |
| OHX_EARLIEST_SAMPLE_DATE | 2000-01-01 | exports: samples before it or after tomorrow refused |
| OHX_REALTIME | runs | who answers webhooks: `runs` (the webhook sensor's runs) or `worker` (`ohx-realtime`) |

The source names and the default re-sync horizons are the provider registry's: the composition
roots pass them in (`Settings.from_env(catalog=CATALOG)`, ohx_dagster/providers/registry.py),
config does not import the registry. Without a catalog (tests), source names are not checked.
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from ohx_dagster.config import environment
from ohx_dagster.config.cli import CliSettings
from ohx_dagster.config.connect import ConnectionSettings, SubscriptionSettings
from ohx_dagster.config.fhir import FhirPackageSettings, FhirServerSettings
from ohx_dagster.config.privacy import PrivacySettings, audit_retention
from ohx_dagster.config.providers import ApiSettings, ProviderEndpoints
from ohx_dagster.config.receiver import ReceiverSettings
from ohx_dagster.config.redact import Redacted
from ohx_dagster.config.sources import (
    FILE_SOURCES,
    SourceCatalog,
    parse_per_source,
    parse_sources,
    shard_key,
)
from ohx_dagster.config.storage import StorageSettings
from ohx_dagster.config.tokens import TokenSettings
from ohx_dagster.core.errors import ConfigError
from ohx_dagster.core.models import HealthSyncConfig


@dataclass(frozen=True, slots=True, repr=False)
class Settings(Redacted):
    """The sync's settings (fields) and every other concern's (sections): module docstring."""

    _urls = ("database_url",)

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
    # OHX_REALTIME: `runs`, the webhook sensor launches a push run per partition and tick; `worker`,
    # the long-lived `ohx-realtime` process answers them in batches (ohx_dagster/realtime/) and the
    # webhook sensor is not defined, so no event is answered twice.
    realtime: str = "runs"

    # The environment these settings were read from: the sections below are parsed from it.
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The provider registry's facts they were checked against (None: not checked, in tests).
    catalog: SourceCatalog | None = field(default=None, repr=False, compare=False)

    # -- the sync ---------------------------------------------------------------------------------

    @property
    def resync_horizons(self) -> dict[str, timedelta]:
        """Every source's re-sync horizon: the registry's defaults, OHX_RESYNC_HORIZON's
        overrides (the settings must have been read with the catalog)."""
        if self.catalog is None:
            raise ValueError("Settings read without the source catalog know no default horizon")
        overrides = {name: timedelta(seconds=s) for name, s in self.horizon_overrides}
        return {**self.catalog.horizons, **overrides}

    @property
    def live_sources(self) -> tuple[str, ...]:
        """Sources that users connect to and that notify us (APIs and the simulator)."""
        return tuple(s for s in self.sources if s not in FILE_SOURCES)

    @property
    def source_counts(self) -> dict[str, int]:
        """Shard count of every source, in OHX_SOURCES order (1 = unsharded); the sync's
        Sharding (ohx_dagster/sync/shards.py) is built from it."""
        counts = dict(self.shard_counts)
        return {s: counts.get(s, 1) for s in self.sources}

    @property
    def source_keys(self) -> tuple[str, ...]:
        """The `source` partition keys: one per source, or one per shard of a sharded one."""
        return tuple(
            shard_key(source, index, count)
            for source, count in self.source_counts.items()
            for index in range(count)
        )

    # -- the sections -----------------------------------------------------------------------------

    @property
    def storage(self) -> StorageSettings:
        return StorageSettings.from_env(self.env)

    def api(self, app: ProviderEndpoints) -> ApiSettings:
        """A provider API's settings (its OAuth app); ConfigError naming what is missing."""
        return ApiSettings.from_env(app, self.env)

    @property
    def apis(self) -> dict[str, ApiSettings]:
        """The settings of the provider APIs OHX_SOURCES names (none without the catalog)."""
        apps = {} if self.catalog is None else self.catalog.apis
        return {s: self.api(apps[s]) for s in self.sources if s in apps}

    @property
    def connection(self) -> ConnectionSettings:
        return ConnectionSettings.from_env(self.env)

    @property
    def subscriptions(self) -> SubscriptionSettings | None:
        return SubscriptionSettings.from_env(self.env)

    @property
    def receiver(self) -> ReceiverSettings:
        return ReceiverSettings.from_env(self.env)

    @property
    def tokens(self) -> TokenSettings:
        return TokenSettings.from_env(self.env)

    @property
    def privacy(self) -> PrivacySettings:
        return PrivacySettings.from_env(self.env)

    @property
    def fhir_server(self) -> FhirServerSettings:
        return FhirServerSettings.from_env(self.env)

    @property
    def fhir_packages(self) -> FhirPackageSettings:
        return FhirPackageSettings.from_env(self.env)

    @property
    def cli(self) -> CliSettings:
        return CliSettings.from_env(self.env)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, catalog: SourceCatalog | None = None
    ) -> Settings:
        """The settings of `env` (default: the process environment), checked against the
        provider registry's `catalog` (ohx_dagster.providers.registry.CATALOG); ConfigError,
        one line naming the variable, for the first one that is wrong."""
        env = environment.resolve(env)
        storage = StorageSettings.from_env(env)
        known = None if catalog is None else catalog.names
        fitabase_dir = env.get("OHX_FITABASE_DIR") or None
        default_sources = "simulated,fitabase" if fitabase_dir else "simulated"
        counts = parse_sources(env.get("OHX_SOURCES", default_sources))
        sources = tuple(counts)
        for source in sources:
            if known is not None and source not in known:
                raise ConfigError(
                    f"OHX_SOURCES: unknown source {source!r}; known: {', '.join(known)}"
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
            if catalog is not None and source in catalog.apis:
                # A provider API named without its OAuth app fails here, when the code location
                # loads, not at its first run.
                ApiSettings.from_env(catalog.apis[source], env)
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
            home=storage.home,
            database_url=storage.database_url,
            partitions_start=start,
            sources=sources,
            fitabase_dir=fitabase_dir,
            fitabase_tz=fitabase_tz,
            simulated_users=_positive_int(env, "OHX_SIMULATED_USERS", 3),
            simulated_seed=_positive_int(env, "OHX_SIMULATED_SEED", 7),
            simulated_hr_hz=_rate(env, "OHX_SIMULATED_HR_HZ"),
            fhir_dir=_output_root(storage.fhir_dir),
            polar_csv=polar_csv,
            polar_tz=env.get("OHX_POLAR_TZ") or None,
            publish_ambiguous=_flag(env, "OHX_PUBLISH_AMBIGUOUS"),
            apple_health_export=apple_health_export,
            apple_health_user=env.get("OHX_APPLE_HEALTH_USER") or None,
            shard_counts=tuple((s, n) for s, n in counts.items() if n > 1),
            horizon_overrides=_per_source_seconds(
                env, "OHX_RESYNC_HORIZON", minimum=0, known=known
            ),
            max_lag_overrides=_per_source_seconds(env, "OHX_MAX_SYNC_LAG", minimum=1, known=known),
            earliest_sample=earliest_sample_date(env),
            audit_retention=audit_retention(env),
            realtime=_choice(env, "OHX_REALTIME", REALTIME_MODES),
            env=dict(env),
            catalog=catalog,
        )


def earliest_sample_date(env: Mapping[str, str] | None = None) -> date:
    """OHX_EARLIEST_SAMPLE_DATE (default 2000-01-01), read alone: `ohx import` needs it where
    the rest of Dagster's settings may not be set."""
    env = environment.resolve(env)
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


def _zone(env: Mapping[str, str], name: str) -> str:
    text = env[name]
    try:
        HealthSyncConfig(user_id="-", provider="-", timezone=text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected an IANA zone, e.g. Europe/Paris") from None
    return text


REALTIME_MODES = ("runs", "worker")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first when unset)."""
    text = (env.get(name) or choices[0]).strip().lower()
    if text not in choices:
        raise ConfigError(f"{name}={text!r}: expected one of {', '.join(choices)}")
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


def _per_source_seconds(
    env: Mapping[str, str], name: str, *, minimum: int, known: tuple[str, ...] | None
) -> tuple[tuple[str, float], ...]:
    found = parse_per_source(name, env.get(name, ""), minimum=minimum, known=known)
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
