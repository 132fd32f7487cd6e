"""Hash shards of a source's users: the `source` partition keys (DESIGN.md, "Partitions").

OHX_SOURCES names each source with an optional shard count, `simulated:4,oura:8,fitabase`:
`simulated-0` .. `simulated-3`, `oura-0` .. `oura-7` and `fitabase` (no count = one shard whose
key is the provider's name, as before sharding; ohx_dagster/config/sources.py reads it and names
the keys). A user belongs to shard
stable_hash(provider, user_id) % count, so a realtime run re-aggregates and re-publishes one
shard's users rather than the whole provider's. Records, aggregates and sync state stay keyed by
provider: the store is not sharded, a shard is a subset of a provider's users.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ohx_dagster.config.sources import MAX_SHARDS, parse_sources, shard_key
from ohx_dagster.core.errors import ConfigError


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
        return shard_key(self.provider, self.index, self.count)

    @property
    def whole(self) -> bool:
        """The shard holds every user of the provider."""
        return self.count == 1

    def holds(self, user_id: str) -> bool:
        return self.count == 1 or user_shard(self.provider, user_id, self.count) == self.index

    def select(self, user_ids: Iterable[str]) -> frozenset[str]:
        return frozenset(u for u in user_ids if self.holds(u))


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
        return cls(parse_sources(text))

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
