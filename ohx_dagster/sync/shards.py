"""Hash shards of a source's users: the `source` partition keys (DESIGN.md, "Partitions").

OHX_SOURCES names each source with an optional shard count, `simulated:4,oura:8,fitabase`:
`simulated-0` .. `simulated-3`, `oura-0` .. `oura-7` and `fitabase` (no count = one shard whose
key is the provider's name, as before sharding). A user belongs to shard
stable_hash(provider, user_id) % count, so a realtime run re-aggregates and re-publishes one
shard's users rather than the whole provider's. Records, aggregates and sync state stay keyed by
provider: the store is not sharded, a shard is a subset of a provider's users.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ohx_dagster.core.errors import ConfigError

MAX_SHARDS = 64


def user_shard(provider: str, user_id: str, count: int) -> int:
    """The shard index of a provider's user: stable across processes, hosts and releases
    (hashlib, never Python's salted hash())."""
    digest = hashlib.blake2b(f"{provider}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """One `source` partition key: shard `index` of `count` of a provider's users."""

    provider: str
    index: int = 0
    count: int = 1

    @property
    def key(self) -> str:
        return self.provider if self.count == 1 else f"{self.provider}-{self.index}"

    @property
    def whole(self) -> bool:
        """The shard holds every user of the provider."""
        return self.count == 1

    def holds(self, user_id: str) -> bool:
        return self.count == 1 or user_shard(self.provider, user_id, self.count) == self.index

    def select(self, user_ids: Iterable[str]) -> frozenset[str]:
        return frozenset(u for u in user_ids if self.holds(u))


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


class Sharding(Mapping[str, int]):
    """Shard count per provider, in OHX_SOURCES order; maps partition keys <-> providers."""

    def __init__(self, counts: Mapping[str, int] | Iterable[tuple[str, int]]) -> None:
        self._counts = dict(counts.items() if isinstance(counts, Mapping) else counts)
        for provider, count in self._counts.items():
            if not 1 <= count <= MAX_SHARDS:
                raise ConfigError(f"OHX_SOURCES: {provider}:{count}: N must be 1..{MAX_SHARDS}")

    @classmethod
    def parse(cls, text: str) -> Sharding:
        """`simulated:4,oura:8,fitabase` -> {simulated: 4, oura: 8, fitabase: 1}."""
        counts: dict[str, int] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            name, count = parse_spec(item)
            if name in counts:
                raise ConfigError(f"OHX_SOURCES names {name!r} twice")
            counts[name] = count
        return cls(counts)

    @classmethod
    def unsharded(cls, providers: Iterable[str]) -> Sharding:
        return cls({p: 1 for p in providers})

    def __getitem__(self, provider: str) -> int:
        return self._counts[provider]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __repr__(self) -> str:
        return f"Sharding({self._counts!r})"

    def shards(self, provider: str) -> list[Shard]:
        count = self._counts[provider]
        return [Shard(provider, index, count) for index in range(count)]

    def keys_of(self, provider: str) -> list[str]:
        return [shard.key for shard in self.shards(provider)]

    def all_keys(self, providers: Iterable[str] | None = None) -> list[str]:
        """Every partition key, per provider in order (of `providers` only, when given)."""
        chosen = self._counts if providers is None else [p for p in self._counts if p in providers]
        return [key for provider in chosen for key in self.keys_of(provider)]

    def shard(self, key: str) -> Shard:
        """The shard behind a partition key; KeyError for a key OHX_SOURCES does not give."""
        if self._counts.get(key) == 1:
            return Shard(key)
        provider, _, index = key.rpartition("-")
        count = self._counts.get(provider, 1)
        if count > 1 and index.isdigit() and int(index) < count and str(int(index)) == index:
            return Shard(provider, int(index), count)
        raise KeyError(f"{key!r} is not a source partition key of OHX_SOURCES")

    def shard_of(self, provider: str, user_id: str) -> Shard:
        """The shard a provider's user belongs to (the provider must be configured)."""
        count = self._counts[provider]
        return Shard(provider, user_shard(provider, user_id, count), count)

    def key_of(self, provider: str, user_id: str) -> str:
        return self.shard_of(provider, user_id).key
