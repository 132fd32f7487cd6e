"""The sources the settings name (OHX_SOURCES, the per-source settings) and what config must know
of them without importing the provider registry: the registry hands its facts in as a
SourceCatalog (ohx_dagster.providers.registry.CATALOG), at the composition roots that read the
settings (the code location, `ohx`, the receiver, the scripts).

OHX_SOURCES names each source with an optional shard count, `simulated:4,oura:8,fitabase`: the
source partition keys `simulated-0` .. `simulated-3`, `oura-0` .. `oura-7` and `fitabase` (no
count = one shard whose key is the provider's name). ohx_dagster/sync/shards.py assigns people to
shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from ohx_dagster.config import environment
from ohx_dagster.config.providers import ProviderEndpoints
from ohx_dagster.core.errors import ConfigError

# The sources whose settings are config's own (the simulator and the exports); the provider
# APIs come from the registry.
BUILTIN_SOURCES: Final = ("simulated", "fitabase", "polar", "apple_health")
# Exports are imported as they are: they have no webhooks and no "new user" history to fetch.
FILE_SOURCES: Final = frozenset({"fitabase", "polar", "apple_health"})
# The variables that name the exports' files, and their source.
EXPORT_SETTINGS: Final = (
    ("OHX_FITABASE_DIR", "fitabase"),
    ("OHX_APPLE_HEALTH_EXPORT", "apple_health"),
    ("OHX_POLAR_CSV", "polar"),
)
MAX_SHARDS: Final = 64


@dataclass(frozen=True, slots=True)
class SourceCatalog:
    """The provider registry's facts the settings check against: each provider API's app (its
    name and variables' prefix) and every source's default re-sync horizon."""

    apis: Mapping[str, ProviderEndpoints]
    horizons: Mapping[str, timedelta]

    @property
    def names(self) -> tuple[str, ...]:
        """Every source the product knows, in the order messages list them."""
        return (*BUILTIN_SOURCES, *self.apis)


def shard_key(provider: str, index: int, count: int) -> str:
    """The source partition key of shard `index` of `count` of a provider's people."""
    return provider if count == 1 else f"{provider}-{index}"


def key_provider(key: str) -> str:
    """The provider of a source partition key: its name, or `provider-N` of a shard."""
    head, _, index = key.rpartition("-")
    return head if head and index.isdigit() else key


def parse_spec(item: str) -> tuple[str, int]:
    """`name` or `name:N` (N a whole number from 1 to MAX_SHARDS) -> (name, N)."""
    name, sep, count_text = item.strip().partition(":")
    name = name.strip()
    if not sep:
        return name, 1
    try:
        count = int(count_text.strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SHARDS or not name:
        raise ConfigError(
            f"OHX_SOURCES: {item.strip()!r}: expected name or name:N with N a whole number "
            f"from 1 to {MAX_SHARDS}"
        )
    return name, count


def parse_sources(text: str) -> dict[str, int]:
    """`simulated:4,oura:8,fitabase` -> {simulated: 4, oura: 8, fitabase: 1}, in order."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, count = parse_spec(item)
        if name in counts:
            raise ConfigError(f"OHX_SOURCES names {name!r} twice")
        counts[name] = count
    return counts


def named_sources(env: Mapping[str, str] | None = None) -> set[str]:
    """The source names OHX_SOURCES gives, unchecked (`ohx doctor` lists what is configured
    even when the settings do not parse)."""
    env = environment.resolve(env)
    return {
        part.split(":")[0].strip() for part in env.get("OHX_SOURCES", "").split(",") if part.strip()
    }


def export_locations(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The export variables that are set (EXPORT_SETTINGS), each to its value, stripped."""
    env = environment.resolve(env)
    found = {name: (env.get(name) or "").strip() for name, _ in EXPORT_SETTINGS}
    return {name: value for name, value in found.items() if value}


_DURATION_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}


def parse_per_source(
    name: str, text: str, *, minimum: int = 0, known: Sequence[str] | None = None
) -> dict[str, timedelta]:
    """`oura=6h, withings=2d` -> a duration per source; errors name the setting, the part and
    the form. `known`: the source names allowed (the catalog's; None: any name)."""
    found: dict[str, timedelta] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        source, _, amount = (t.strip() for t in part.partition("="))
        unit = _DURATION_UNITS.get(amount[-1:])
        number = amount[:-1]
        if (known is not None and source not in known) or unit is None or not number.isdigit():
            number = ""
        if not source or not number or int(number) < minimum:
            least = f", N >= {minimum}" if minimum else ""
            sources = f" (sources: {', '.join(known)})" if known is not None else ""
            raise ConfigError(
                f"{name}: {part!r}: expected source=N followed by m, h or d{least}{sources}"
            )
        assert unit is not None  # refused above (no number without a unit)
        found[source] = timedelta(**{unit: int(number)})
    return found
