"""Bulk Data export (FHIR Bulk Data Access IG 2.0): what `Patient/$export` and
`Group/[id]/$export` ask for, and the run that answers (sensors/exports.py runs it in Dagster).

The API process only records a request (`kick_off`: a row in `fhir_exports`, state accepted) and
answers polls from that row; the export sensor asks for one `fhir_export` run per request, and
the run (`run_export`) reads the published NDJSON and writes the export's files under
`exports/<export id>/` in the output root (local or object storage), then marks it complete with
the list of its files, which the status URL serves as the manifest.

What an export holds: every resource of the requested types owned by the cohort's people
(outbox.owner: the person of a Patient, a Device, an Observation...), each once, as the current
published files hold it. A resource published on many days (a Patient, a Device) is taken from
the file its last change was recorded in (fhir_changes), else from its latest day.

`_since`: exactly the resources whose last change (fhir_changes.at_us) is after it, withdrawn
ones (`entered-in-error`) among them: a provider's deletion reaches the client. The manifest's
`transactionTime` is the kick-off; the run starts reading at least SETTLE_S after it, so every
commit stamped before the kick-off is visible to it (a commit stamps its changes under its lock,
a moment before it ends), and a client passing `transactionTime` as its next `_since` misses
nothing. Resources published before migration 0007 have no recorded change: they are in full
exports only, until they change or their partition is published again.

Erasure: an export's files hold people's data. Erasing a person withdraws every export whose
files hold them (ohx_dagster/privacy/erasure.py: files deleted, state withdrawn); a run that read
a person who was erased before it finished notices when it completes (the person is no longer in
`users`) and reads again without them. Completed exports expire EXPIRES_S after they finished.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Final

import orjson
import sqlalchemy as sa

from ohx_dagster.config.sources import key_provider
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import now_us
from ohx_dagster.fhir.delivery.outbox import owner
from ohx_dagster.fhirapi import groups
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.publish.partitions import bucket_of, partition_dir
from ohx_dagster.storage.schema import fhir_changes, fhir_clients, fhir_exports, fhir_files, users

if TYPE_CHECKING:
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.storage.store import RecordStore

EXPORTS_DIR: Final = "exports"
# What the published files hold, in the order a manifest lists them.
TYPES: Final = (
    "Patient", "Device", "DeviceAssociation", "Observation", "DiagnosticReport", "Provenance",
)  # fmt: skip
# Published on every day of a person: one copy is exported (the others are the same resource).
REPEATED: Final = frozenset({"Patient", "Device", "DeviceAssociation", "Provenance"})
OUTPUT_FORMATS: Final = ("application/fhir+ndjson", "application/ndjson", "ndjson")
FILE_BYTES: Final = 16 << 20  # an output file is cut after this many bytes
SETTLE_S: Final = 10.0
EXPIRES_S: Final = 24 * 3600
RETRY_AFTER_S: Final = 10  # what a status poll asks the client to wait
ATTEMPTS: Final = 3  # reads of a cohort whose person was erased meanwhile
LIVE: Final = ("accepted", "running")
_US: Final = 1_000_000


class ExportStopped(Exception):
    """The export was cancelled or withdrawn while it ran."""


@dataclass(frozen=True, slots=True)
class Export:
    export_id: str
    client_id: str
    group_id: str | None
    types: tuple[str, ...]
    since_us: int | None
    request: str
    state: str
    transaction_us: int
    started_us: int | None
    finished_us: int | None
    run_id: str
    output: tuple[dict[str, Any], ...]  # {"type", "name", "count"}
    progress: str
    error: str

    @property
    def directory(self) -> str:
        return f"{EXPORTS_DIR}/{self.export_id}"

    def expires_us(self) -> int | None:
        return None if self.finished_us is None else self.finished_us + EXPIRES_S * _US


def _export(row: Any) -> Export:
    return Export(
        export_id=row.export_id, client_id=row.client_id, group_id=row.group_id,
        types=tuple(orjson.loads(row.types)), since_us=row.since_us, request=row.request,
        state=row.state, transaction_us=int(row.transaction_us), started_us=row.started_us,
        finished_us=row.finished_us, run_id=row.run_id, output=tuple(orjson.loads(row.output)),
        progress=row.progress, error=row.error,
    )  # fmt: skip


def kick_off(
    store: RecordStore,
    *,
    client_id: str,
    group_id: str | None,
    types: Iterable[str],
    since_us: int | None,
    request: str,
) -> Export:
    """Record a request (state accepted); its transactionTime is now."""
    export_id = uuid.uuid4().hex
    row = {
        "export_id": export_id, "client_id": client_id, "group_id": group_id,
        "types": orjson.dumps([t for t in TYPES if t in set(types)]).decode(),
        "since_us": since_us, "request": request, "state": "accepted",
        "transaction_us": now_us(), "run_id": "", "output": "[]", "progress": "", "error": "",
    }  # fmt: skip
    with store.write() as conn:
        conn.execute(fhir_exports.insert().values(**row))
    found = get(store, export_id)
    assert found is not None
    return found


def get(store: RecordStore, export_id: str) -> Export | None:
    with store.read() as conn:
        row = conn.execute(
            sa.select(fhir_exports).where(fhir_exports.c.export_id == export_id)
        ).first()
    return None if row is None else _export(row)


def in_states(store: RecordStore, *states: str) -> list[Export]:
    with store.read() as conn:
        rows = conn.execute(
            sa.select(fhir_exports)
            .where(fhir_exports.c.state.in_(states))
            .order_by(fhir_exports.c.transaction_us)
        ).all()
    return [_export(row) for row in rows]


def _set(store: RecordStore, export_id: str, when: tuple[str, ...], **values: Any) -> bool:
    """Update the export if it is in one of the states `when`; whether it was."""
    t = fhir_exports
    with store.write() as conn:
        done = conn.execute(
            t.update().where(t.c.export_id == export_id, t.c.state.in_(when)).values(**values)
        )
    return bool(done.rowcount)


def cancel(store: RecordStore, output: FhirOutput, export_id: str, *, actor: str) -> bool:
    """Cancel a request or delete a finished export's files (DELETE on its status URL). A run
    still writing sees the state at its next file and deletes what it wrote."""
    states = ("accepted", "running", "complete", "failed")
    if not _set(store, export_id, states, state="cancelled", finished_us=now_us(), output="[]"):
        return False
    output.delete_tree(f"{EXPORTS_DIR}/{export_id}")
    audit.record(store, actor=actor, action="bulk-export", detail=f"{export_id}: cancelled")
    return True


def client_name(store: RecordStore, client_id: str) -> str:
    """The client's name as staff registered it (its id when it was removed since)."""
    c = fhir_clients
    with store.read() as conn:
        name = conn.execute(sa.select(c.c.name).where(c.c.client_id == client_id)).scalar()
    return name or client_id


def fail(store: RecordStore, export_id: str, error: str) -> bool:
    return _set(store, export_id, LIVE, state="failed", finished_us=now_us(), error=error[:2000])


def expire(store: RecordStore, output: FhirOutput, now: int | None = None) -> int:
    """Delete exports that finished more than EXPIRES_S ago (files and row)."""
    t = fhir_exports
    cutoff = (now if now is not None else now_us()) - EXPIRES_S * _US
    with store.read() as conn:
        ids = conn.execute(
            sa.select(t.c.export_id).where(t.c.state.not_in(LIVE), t.c.finished_us < cutoff)
        ).scalars().all()  # fmt: skip
    for export_id in ids:
        output.delete_tree(f"{EXPORTS_DIR}/{export_id}")
        with store.write() as conn:
            conn.execute(t.delete().where(t.c.export_id == export_id))
    return len(ids)


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _File:
    partition_key: str
    bucket: int
    resource_type: str
    name: str


def _plan(store: RecordStore, export: Export, people: list[HealthSyncConfig]) -> list[_File]:
    """The published files to read, newest day first."""
    providers = {c.provider for c in people}
    buckets = {bucket_of(c.provider, c.user_id) for c in people}
    f = fhir_files
    query = sa.select(f.c.partition_key, f.c.bucket, f.c.resource_type, f.c.name).where(
        f.c.resource_type.in_(export.types)
    )
    wanted: set[tuple[str, int, str]] | None = None
    with store.read() as conn:
        if export.since_us is not None:
            # Only the files the changes since then were recorded in.
            c = fhir_changes
            changed = (
                sa.select(c.c.partition_key, c.c.bucket, c.c.resource_type)
                .where(c.c.at_us > export.since_us, c.c.resource_type.in_(export.types))
                .distinct()
            )
            wanted = set(conn.execute(changed).tuples())
        rows = conn.execute(query.order_by(f.c.partition_key.desc(), f.c.bucket)).all()
    return [
        _File(r.partition_key, r.bucket, r.resource_type, r.name)
        for r in rows
        if r.bucket in buckets
        and key_provider(r.partition_key.partition("|")[2]) in providers
        and (wanted is None or (r.partition_key, r.bucket, r.resource_type) in wanted)
    ]


class _Files:
    """The export's output files, cut at FILE_BYTES, written as they fill."""

    def __init__(self, output: FhirOutput, directory: str) -> None:
        self.output, self.directory = output, directory
        self.parts: dict[str, list[bytes]] = defaultdict(list)
        self.sizes: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.written: list[dict[str, Any]] = []

    def add(self, resource_type: str, line: bytes) -> bool:
        """Whether a file was written (a moment to look at the export's state)."""
        self.parts[resource_type].append(line)
        self.sizes[resource_type] += len(line)
        self.counts[resource_type] += 1
        if self.sizes[resource_type] >= FILE_BYTES:
            self._flush(resource_type)
            return True
        return False

    def _flush(self, resource_type: str) -> None:
        if not self.parts[resource_type]:
            return
        n = sum(1 for w in self.written if w["type"] == resource_type) + 1
        name = f"{resource_type}.{n:03d}.ndjson"
        self.output.write(f"{self.directory}/{name}", b"".join(self.parts[resource_type]))
        self.written.append({"type": resource_type, "name": name,
                             "count": len(self.parts[resource_type])})  # fmt: skip
        self.parts[resource_type], self.sizes[resource_type] = [], 0

    def close(self) -> list[dict[str, Any]]:
        for resource_type in TYPES:
            self._flush(resource_type)
        order = {t: i for i, t in enumerate(TYPES)}
        return sorted(self.written, key=lambda w: (order[w["type"]], w["name"]))


def _changed_in(store: RecordStore, file: _File, since_us: int) -> dict[str, tuple[str, str]]:
    """Resource id -> owner of the file's resources that changed after `since_us`."""
    c = fhir_changes
    query = sa.select(c.c.resource_id, c.c.provider, c.c.user_id).where(
        c.c.partition_key == file.partition_key, c.c.bucket == file.bucket,
        c.c.resource_type == file.resource_type, c.c.at_us > since_us,
    )  # fmt: skip
    with store.read() as conn:
        return {r.resource_id: (r.provider, r.user_id) for r in conn.execute(query)}


def _last_changed_at(store: RecordStore, owners: set[tuple[str, str]]) -> dict[tuple, tuple]:
    """(type, id) -> (partition key, bucket) of the last change of the repeated resources."""
    c = fhir_changes
    query = sa.select(
        c.c.resource_type, c.c.resource_id, c.c.provider, c.c.user_id, c.c.partition_key, c.c.bucket
    ).where(c.c.resource_type.in_(sorted(REPEATED)))
    with store.read() as conn:
        return {
            (r.resource_type, r.resource_id): (r.partition_key, r.bucket)
            for r in conn.execute(query)
            if (r.provider, r.user_id) in owners
        }


def _read(store: RecordStore, output: FhirOutput, file: _File) -> list[dict[str, Any]]:
    """A file's resources; when a publisher replaced it since the plan, its current version."""
    name = file.name
    for _ in range(5):
        day, _, source = file.partition_key.partition("|")
        directory = partition_dir(date.fromisoformat(day), source)
        try:
            return list(output.read_resources(f"{directory}/{name}"))
        except FileNotFoundError:
            f = fhir_files
            with store.read() as conn:
                current = conn.execute(
                    sa.select(f.c.name).where(
                        f.c.partition_key == file.partition_key, f.c.bucket == file.bucket,
                        f.c.resource_type == file.resource_type,
                    )
                ).scalar()  # fmt: skip
            if current is None:
                return []  # the bucket holds no such resources any more
            name = current
    raise RuntimeError(f"{file.partition_key} bucket {file.bucket}: its files keep changing")


def _state(store: RecordStore, export_id: str) -> str | None:
    with store.read() as conn:
        return conn.execute(
            sa.select(fhir_exports.c.state).where(fhir_exports.c.export_id == export_id)
        ).scalar()


def _write(
    store: RecordStore, output: FhirOutput, export: Export, people: list[HealthSyncConfig]
) -> tuple[list[dict[str, Any]], Counter[tuple[str, str]]]:
    """Read the plan's files and write the export's; the files written and, per person, how
    many of their resources they hold."""
    owners = {(c.provider, c.user_id) for c in people}
    plan = _plan(store, export, people)
    preferred = _last_changed_at(store, owners) if export.since_us is None else {}
    files = _Files(output, export.directory)
    held: Counter[tuple[str, str]] = Counter()
    seen: set[tuple[str, str]] = set()
    # A repeated resource whose recorded file no longer holds it (stripped since) is taken from
    # its newest other copy instead of being left out.
    elsewhere: dict[tuple[str, str], dict[str, Any]] = {}
    for index, file in enumerate(plan):
        changed = _changed_in(store, file, export.since_us) if export.since_us is not None else None
        flushed = False
        for resource in _read(store, output, file):
            key = (resource["resourceType"], resource["id"])
            if changed is not None and resource["id"] not in changed:
                continue
            person = owner(resource)
            if person not in owners:
                continue
            if key[0] in REPEATED:
                where = preferred.get(key)
                if where is not None and where != (file.partition_key, file.bucket):
                    elsewhere.setdefault(key, resource)
                    continue
                if key in seen:
                    continue
                seen.add(key)
            held[person] += 1
            flushed |= files.add(key[0], orjson.dumps(resource) + b"\n")
        if flushed or index % 50 == 49:
            if _state(store, export.export_id) != "running":
                raise ExportStopped
            progress = f"{index + 1} of {len(plan)} files read"
            _set(store, export.export_id, ("running",), progress=progress)
    for key, resource in elsewhere.items():
        if key not in seen:
            held[owner(resource)] += 1
            files.add(key[0], orjson.dumps(resource) + b"\n")
    return files.close(), held


def run_export(
    store: RecordStore,
    output: FhirOutput,
    export_id: str,
    *,
    run_id: str = "",
    settle_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Export | None:
    """Answer an accepted request (the fhir_export run's body); the export as it ends: complete,
    failed (its error says why), or cancelled/withdrawn meanwhile. None: no such export."""
    export = get(store, export_id)
    if export is None or export.state not in LIVE:
        return export
    settle_s = SETTLE_S if settle_s is None else settle_s
    wait = export.transaction_us / _US + settle_s - time.time()
    if wait > 0:
        sleep(wait)
    if not _set(store, export_id, LIVE, state="running", started_us=now_us(), run_id=run_id):
        return get(store, export_id)
    for _ in range(ATTEMPTS):
        output.delete_tree(export.directory)
        people = groups.cohort(store, export.group_id)
        if people is None:
            fail(store, export_id, f"Group/{export.group_id} was removed before the export ran")
            return get(store, export_id)
        try:
            written, held = _write(store, output, export, people)
            if _complete(store, export, written, held):
                return get(store, export_id)
        except ExportStopped:
            pass
        if _state(store, export_id) != "running":
            output.delete_tree(export.directory)
            return get(store, export_id)
    fail(store, export_id, "people of the cohort kept being erased while it ran: export again")
    output.delete_tree(export.directory)
    return get(store, export_id)


class _Erased(Exception):
    """A person the export read was erased before it completed."""


def _complete(
    store: RecordStore, export: Export, written: list[dict[str, Any]],
    held: Counter[tuple[str, str]],
) -> bool:  # fmt: skip
    """Mark it complete, with one audit row per person it holds, unless a person it holds was
    erased meanwhile (False: read again) or it was stopped (ExportStopped)."""
    t = fhir_exports
    salt = erasure_salt()
    actor = f"fhir client {client_name(store, export.client_id)}"
    try:
        with store.write() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.export_id == export.export_id, t.c.state == "running")
                .values(state="complete", finished_us=now_us(), progress="",
                        output=orjson.dumps(written).decode())
            )  # fmt: skip
            if not done.rowcount:
                raise ExportStopped
            present = set(conn.execute(sa.select(users.c.provider, users.c.user_id)).tuples())
            if set(held) - present:
                raise _Erased
            for (provider, user_id), count in sorted(held.items()):
                audit.record(
                    conn, actor=actor, action="bulk-export",
                    subject=subject_hash(provider, user_id, salt=salt),
                    detail=f"{export.export_id}: {count} resources",
                )  # fmt: skip
    except _Erased:
        return False
    return True
