"""FHIR bulk-data style NDJSON: one file per resource type per partition, written atomically.

Resources are sorted by id and serialized with orjson, so the same resources always give the same
bytes: re-running a partition rewrites identical files. Beside them, manifest.json in the shape of a
FHIR Bulk Data export manifest lists the files and counts; its transactionTime is the latest
clinical time in the resources (not the wall clock), so it is as deterministic as the files.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from ohx_dagster.fhir.timefmt import format_us, parse_us

MANIFEST = "manifest.json"


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
    counts = {t: len(items) for t, items in sorted(by_type.items())}
    _write_atomic(directory / MANIFEST, orjson.dumps(manifest(by_type), option=orjson.OPT_INDENT_2))
    return counts


def _write_atomic(target: Path, body: bytes) -> None:
    temporary = target.with_name(f"{target.name}.tmp{os.getpid()}")
    temporary.write_bytes(body)
    os.replace(temporary, target)


def _latest_time(resources: Iterable[dict]) -> str | None:
    latest: int | None = None
    for resource in resources:
        text = resource.get("effectiveDateTime") or resource.get("effectivePeriod", {}).get("end")
        if text:
            moment = parse_us(text)
            latest = moment if latest is None else max(latest, moment)
    return None if latest is None else format_us(latest)


def manifest(by_type: dict[str, list[dict]]) -> dict:
    """A Bulk Data style manifest of the partition's files (relative URLs, counts per type)."""
    latest = _latest_time(r for items in by_type.values() for r in items)
    return {
        "transactionTime": latest or "1970-01-01T00:00:00Z",
        "request": "urn:ohx:partition",
        "requiresAccessToken": False,
        "output": [
            {"type": t, "url": f"{t}.ndjson", "count": len(items)}
            for t, items in sorted(by_type.items())
        ],
        "error": [],
    }


def read_ndjson(path: Path) -> Iterator[dict]:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)
