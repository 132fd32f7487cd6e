"""FHIR bulk-data style NDJSON: one file per resource type per partition, written atomically.

Resources are sorted by id and serialized with orjson, so the same resources always give the same
bytes: re-running a partition rewrites identical files.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson


def write_ndjson(directory: Path, resources: Iterable[dict]) -> dict[str, int]:
    """Replace the partition's NDJSON files with these resources; returns counts per type."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for resource in resources:
        by_type[resource["resourceType"]].append(resource)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.ndjson"):
        if stale.stem not in by_type:
            stale.unlink()
    for resource_type, items in by_type.items():
        items.sort(key=lambda r: r["id"])
        body = b"".join(orjson.dumps(item) + b"\n" for item in items)
        target = directory / f"{resource_type}.ndjson"
        temporary = target.with_suffix(f".ndjson.tmp{os.getpid()}")
        temporary.write_bytes(body)
        os.replace(temporary, target)
    return {t: len(items) for t, items in sorted(by_type.items())}


def read_ndjson(path: Path) -> Iterator[dict]:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)
