"""The FHIR bulk output on a filesystem: local paths by default, object storage (s3://) in
production, through fsspec, so no two services need a shared disk.

Layout: <root>/<day>/<source key>/<ResourceType>.<bucket>.<content hash>.ndjson, and manifest.json
beside them in the shape of a FHIR Bulk Data export manifest. A file's name is the hash of its
bytes, so a file is never rewritten in place: a new version of a bucket is new files, and the
manifest (written last, in one put) names exactly the files of one consistent version of the
partition. Files no manifest names any more are removed afterwards (`collect_garbage`), once they
are older than UNCOMMITTED_GRACE_S: a younger one may be another publisher's, written and not yet
committed (deleting it would leave that publisher's manifest naming a missing file). For the same
reason a publisher writes its file even when the name exists (`write_fresh`): an old file of the
same content may be collected any moment.

Writes are atomic on both kinds of storage: local files are written under a temporary name,
flushed to disk (fsync), then renamed; an object store's put is atomic by itself (an object is
either all there or not there). Reads never trust a cached listing: the files may have been
written by another process (ohx_dagster/config/locations.py turns s3fs's listings cache off).

| variable | meaning |
|---|---|
| OHX_FHIR_DIR | output root: a path, or s3://bucket/prefix |
| OHX_S3_ENDPOINT_URL | an S3-compatible endpoint (MinIO, moto); unset = AWS |
| AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION | read by botocore itself |
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import fsspec
import orjson
from fsspec.implementations.local import LocalFileSystem

from ohx_dagster.config.locations import storage_options
from ohx_dagster.core.errors import ConfigError

__all__ = ["MANIFEST", "FhirOutput", "OutputFile", "file_name", "ndjson", "storage_options"]

MANIFEST: Final = "manifest.json"
# A file no manifest names that is older than this belongs to a writer that died or to a version
# that was replaced; younger, it may be a publisher's that is about to commit it.
UNCOMMITTED_GRACE_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class OutputFile:
    resource_type: str
    bucket: int
    name: str
    count: int


def file_name(resource_type: str, bucket: int, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()[:20]
    return f"{resource_type}.{bucket:02d}.{digest}.ndjson"


def ndjson(resources: Iterable[dict]) -> bytes:
    """Resources sorted by id, one orjson line each: the same resources give the same bytes."""
    return b"".join(orjson.dumps(r) + b"\n" for r in sorted(resources, key=lambda r: r["id"]))


class FhirOutput:
    """The output root; every path below is relative to it (`<day>/<source key>/...`)."""

    def __init__(self, root: str, options: Mapping[str, Any] | None = None) -> None:
        self.root_url = str(root)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(
                self.root_url, **(options if options is not None else storage_options(root))
            )
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"OHX_FHIR_DIR={self.root_url!r}: {exc}") from None
        self.local = isinstance(self.fs, LocalFileSystem)

    def _path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def url(self, relative: str) -> str:
        """The file's absolute URL (file:// or s3://), as the bulk manifest names it."""
        return self.fs.unstrip_protocol(self._path(relative))

    def write(self, relative: str, body: bytes) -> None:
        path = self._path(relative)
        if not self.local:
            self.fs.pipe_file(path, body)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(temporary, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the rename itself survives a power cut
        finally:
            os.close(descriptor)

    def write_fresh(self, relative: str, body: bytes) -> None:
        """Write a content-named file, again if it is there (the same bytes, a new write time:
        `collect_garbage` of another publisher leaves it alone until this one commits it)."""
        self.write(relative, body)

    def age_s(self, relative: str) -> float:
        """Seconds since the file was last written."""
        return age_s(self.fs.info(self._path(relative)))

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self._path(relative)))

    def read(self, relative: str) -> bytes:
        return self.fs.cat_file(self._path(relative))

    def read_resources(self, relative: str) -> Iterator[dict]:
        for line in self.read(relative).splitlines():
            if line.strip():
                yield orjson.loads(line)

    def names(self, directory: str) -> list[str]:
        path = self._path(directory)
        if not self.fs.exists(path):
            return []
        return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

    def delete(self, relative: str) -> None:
        path = self._path(relative)
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def delete_tree(self, relative: str) -> int:
        """Remove a directory and everything in it; returns the number of files removed."""
        path = self._path(relative)
        if not self.fs.exists(path):
            return 0
        files = [p for p in self.fs.find(path)]
        self.fs.rm(path, recursive=True)
        return len(files)

    # -- manifest ------------------------------------------------------------------------------

    def write_manifest(
        self, directory: str, files: Iterable[OutputFile], *, export_time: str, request: str
    ) -> dict[str, Any]:
        """The Bulk Data manifest naming exactly `files`; `export_time` is when it was made."""
        ordered = sorted(files, key=lambda f: (f.resource_type, f.bucket))
        manifest = {
            "transactionTime": export_time,
            "request": request,
            "requiresAccessToken": False,
            "output": [
                {
                    "type": f.resource_type,
                    "url": self.url(f"{directory}/{f.name}"),
                    "count": f.count,
                }
                for f in ordered
                if f.count
            ],
            "error": [],
        }
        self.write(f"{directory}/{MANIFEST}", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        return manifest

    def manifest(self, directory: str) -> dict[str, Any] | None:
        if not self.exists(f"{directory}/{MANIFEST}"):
            return None
        return orjson.loads(self.read(f"{directory}/{MANIFEST}"))

    def listed(self, directory: str) -> list[str]:
        """The names of the files the directory's manifest lists (none without a manifest)."""
        manifest = self.manifest(directory) or {"output": []}
        return [entry["url"].rsplit("/", 1)[-1] for entry in manifest["output"]]

    def listed_resources(self, directory: str) -> Iterator[dict]:
        """Every resource of the files the directory's manifest lists: what it publishes."""
        for name in self.listed(directory):
            yield from self.read_resources(f"{directory}/{name}")

    def collect_garbage(
        self, directory: str, keep: Iterable[str], *, grace_s: float = UNCOMMITTED_GRACE_S
    ) -> int:
        """Remove files of the directory that neither `keep` nor its manifest names, and
        temporary files of writers that died; returns how many were removed."""
        kept = set(keep) | {MANIFEST} | set(self.listed(directory))
        removed = 0
        for name in self.names(directory):
            if name in kept:
                continue
            try:
                if self.age_s(f"{directory}/{name}") < grace_s:
                    continue  # another publisher's file, written and not committed yet
                self.delete(f"{directory}/{name}")
            except FileNotFoundError:
                continue  # renamed into place or removed by another writer since the listing
            removed += 1
        return removed


def age_s(info: Mapping[str, Any]) -> float:
    """Seconds since a file of `fs.info` was last written: local files carry `mtime` (or
    `created`), objects `LastModified`."""
    stamp = info.get("mtime") or info.get("created") or info.get("LastModified") or 0
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    return time.time() - float(stamp)
