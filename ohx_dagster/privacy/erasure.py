"""Erasing a person everywhere their data lives, and the FHIR-file side of retention (issue 11).

`erase_person(store, output, fhir_client, provider, user_id, requested_by=...)`, in this order:

1. The record store, in ONE transaction under the person's lock: every row of every table keyed
   by provider + user_id (users, oauth_tokens, series_chunks, measurements, coverage,
   type_status, day_versions, provider_cursors, aggregates, webhook_inbox,
   webhook_subscriptions, and any such table added later: `person_tables` finds them by their
   columns), their request_budget row (key provider|user) and unfinished connect flows for their
   Patient (oauth_states). Their fhir_outbox rows lose their bodies at once: a row the server
   never saw is deleted; the others keep only the match URL the server finds the resource by
   (it names them, and it is what deleting there needs), marked withdrawn and acknowledged, so
   no delivery run ever sends them again. With the `users` row gone no schedule, sensor or
   publisher selects the person any more.
2. The published FHIR output (`strip_partitions`, below), and the Bulk Data exports whose files
   hold them (`withdraw_exports`: deleted, the client told the export was withdrawn).
3. The FHIR server: DELETE in transaction Bundles through FhirClient.delete (conditional by
   identifier; by id for a Provenance, which has none), what references others first (the
   outbox's delivery rank, reversed). The outbox rows of each acknowledged batch are deleted.
   Without a client, or while the server refuses or is down, those rows stay, with no value in
   them, and the report says `complete=False`: run the erasure again.
4. One row in `erasures`: the subject as HMAC-SHA256(salt, "provider|user_id"), who asked, when,
   and counts per table; nothing that names the person to anyone without the salt. The row is
   written in step 1's transaction (its counts at the end): it is the tombstone that keeps the
   subject out of every way in until staff re-admit them (ohx_dagster/privacy/identity.py), so a
   sync of a file source or of the simulated source that runs after step 1 does not bring them back.
   Step 1 also holds the inbox writers' lock, so no webhook event checked before it is stored
   after it.
   The audit log gets an `erase` row with the counts (ohx_dagster/privacy/audit.py).

Running it again is harmless: every step deletes what is still there, and a second `erasures`
row records the second request.

Files: why the person's resources are dropped from the files rather than re-rendered.
A bucket file holds everyone of the bucket (publish.bucket_of); the publisher, re-rendering a
bucket, republishes every resource it published before and no longer produces as
entered-in-error (its withdrawal mechanism), so a re-render would carry the person's resources on
as withdrawn copies. Instead, for every partition of the provider (and its shard keys) whose
files of the person's bucket hold them: read those files, drop every resource the person owns
(`outbox.owner`: the content-key identifier, the person identifier of their Patient, the
patient of their Provenance; or a subject/patient reference to the Patient id derived for them),
write the remaining resources as new content-named files, then, in one transaction under the
partition's lock (the publisher's `fhir` lock, taken by its commit too), check that the bucket's
file rows are still the ones read (else read again: a publisher committed meanwhile), replace
them, point the outbox rows of the remaining resources at the new names and write the manifest
from the file rows, exactly as the publisher's commit does. Only after that commit are the old
files deleted. So at every moment the manifest names either the old files or files without
the person, never a file with their data written after the erasure; a crash leaves at most
unnamed old files, which the next run (erasure or retention) deletes once it finds them naming
the person. The other people's resources keep their exact bytes (ids, identifiers, versions),
so their outbox rows stay delivered and nothing is sent to the server for them.

The same commit raises the published version of the bucket's remaining people for that day by
one (published = version + 1; a person with unpublished changes stays pending): a publisher
that read the bucket before the erasure holds older versions, so its commit is dropped as stale
by the publisher's own rule instead of naming the person's data again.

What this cannot close (race windows, a run in flight when the erasure starts):
- a publisher render for this person's day that read their data before step 1 and commits
  after step 2 when the person is alone in the bucket that day (no remaining person to carry
  the version check); and a sync run that fetched before step 1 and commits after it. Both
  would need publish._commit_bucket and store.commit to refuse people absent from `users`
  under their locks (a one-line check each, in modules others own). The erasure job
  (sensors/erasure.py) waits for the person's runs to finish before it starts.
- the database's own storage: PostgreSQL keeps deleted tuples until VACUUM reuses them, and WAL
  archives and backups keep what they kept; SQLite reuses freed pages. Erasure is logical; set
  backup retention accordingly.
- copies outside this product: what a FHIR server keeps in its history (HAPI: $expunge), what
  a clinical system copied, the provider's own account (revoking the grant and Withings
  subscriptions at the provider is not done here).

Retention (retention.py) drops a person's resources from the partitions whose whole content is
older than their retention period the same way (`strip_partitions(..., days=...)`) and empties
their outbox rows of those partitions (`empty_outbox_rows`): the FHIR server keeps what it
received (the clinical record), and the bodiless rows left are what lets a later erasure still
delete those copies there.

Dagster's own records of the person (runs tagged with them, event logs naming them) are erased by
`sensors.erasure.erase_from_dagster`, next to the job that runs all of it: this package stays
free of Dagster.

The salt and the subject live in ohx_dagster/privacy/subjects.py: OHX_ERASURE_SALT (16+ characters,
a secret like OHX_TOKEN_KEY) when set; else one random salt per installation, created on first use
in $OHX_HOME/erasure-salt (mode 0600). Never in the database: a salt beside the hashes would let
anyone who can read the table test a guessed id. Deployments whose processes do not share
OHX_HOME must set the variable, so that the requester's hash (`python -m ohx_dagster.privacy.erasure
subject --provider P --user U`), the job's and the tombstone checks agree.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.config.sources import key_provider
from ohx_dagster.core.errors import OhxError, ValidationError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import iso_us, now_us
from ohx_dagster.fhir.delivery.bundle import match_url
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import owner
from ohx_dagster.fhir.output import (
    MANIFEST,
    UNCOMMITTED_GRACE_S,
    FhirOutput,
    OutputFile,
    file_name,
    ndjson,
)
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.subjects import (  # noqa: F401 (SALT_ENV..: this module's public names too)
    MIN_SALT_CHARS,
    SALT_ENV,
    SALT_FILE,
    check_subject,
    erasure_salt,
    subject_hash,
)
from ohx_dagster.publish.partitions import bucket_of
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import (
    day_versions,
    erasures,
    fhir_exports,
    fhir_files,
    fhir_outbox,
    metadata,
    oauth_states,
    request_budget,
    users,
)
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync import inbox

# What an outbox row keeps once the person is erased: no body, acknowledged (never sent again).
STUB_BODY: Final = "{}"
STUB_HASH: Final = hashlib.sha256(STUB_BODY.encode()).hexdigest()
# Rewrites of a bucket that a publisher keeps replacing meanwhile are read again this often.
REWRITE_ATTEMPTS: Final = 5
# Tables that hold nothing of a person, and tables erased by a rule of their own.
NOT_PERSONAL: Final = {
    "fhir_files": "file names and counts of a partition's output, no person",
    "erasures": "salted hashes and counts only (the tombstones that keep the erased out)",
    "audit_log": ("staff actions: salted hashes, staff names, outcomes (they record the erasure)"),
    "staff_tokens": (
        "staff names and hashes of their tokens (ohx_dagster/privacy/staff.py), no patient"
    ),
    "staff_revoked": "staff names and ids of their revoked tokens (ohx_dagster/privacy/staff.py)",
    "fhir_clients": "the FHIR API's client systems and their public keys, no patient",
    "fhir_assertions": "ids of client assertions seen (ohx_dagster/fhirapi/clients.py), no patient",
    "fhir_tokens": "hashes of access tokens issued to client systems, no patient",
    "fhir_groups": "cohort definitions (everyone, providers); listed people are in members",
    "fhir_exports": "Bulk Data requests and file names; files holding a person are withdrawn",
}
OWN_RULE: Final = {
    "fhir_outbox": "server deletion first (step 3)",
    "request_budget": "key provider|user",
    "oauth_states": "the Patient of an unfinished connect flow",
}
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_IN_CLAUSE: Final = 500


class ErasureError(OhxError):
    """An erasure could not finish a step (named in the message, never the person)."""


def person_tables() -> list[sa.Table]:
    """Every table keyed by a person (provider and user_id columns) but the outbox."""
    return [
        t
        for t in metadata.sorted_tables
        if {"provider", "user_id"} <= set(t.c.keys()) and t.name not in OWN_RULE
    ]


def known_user_ids(store: RecordStore, provider: str) -> set[str]:
    """Every user id of the provider that any table still holds (erased people: none)."""
    found: set[str] = set()
    with store.read() as conn:
        for table in [*person_tables(), fhir_outbox]:
            query = sa.select(table.c.user_id).where(table.c.provider == provider).distinct()
            found |= set(conn.execute(query).scalars())
        keys = conn.execute(
            sa.select(request_budget.c.key).where(request_budget.c.key.like(f"{provider}|%"))
        ).scalars()
        found |= {key.split("|", 1)[1] for key in keys}
    found.discard("")
    return found


def resolve_subject(store: RecordStore, provider: str, subject: str, *, salt: bytes) -> str | None:
    """The user id of the provider whose subject hash this is, while anything of theirs is left;
    None once they are erased (or when the hash was made with another salt)."""
    check_subject(subject)
    for user_id in sorted(known_user_ids(store, provider)):
        if hmac.compare_digest(subject_hash(provider, user_id, salt=salt), subject):
            return user_id
    return None


def previous_erasures(store: RecordStore, subject: str) -> list[int]:
    """When the subject was erased before (erased_at_us, oldest first)."""
    t = erasures
    with store.read() as conn:
        query = sa.select(t.c.erased_at_us).where(t.c.subject_hash == subject)
        return list(conn.execute(query.order_by(t.c.erased_at_us)).scalars())


def _counts_json(counts: Mapping[str, int]) -> str:
    return orjson.dumps({str(k): int(v) for k, v in sorted(counts.items())}).decode()


def _tombstone(conn: Connection, subject: str, requested_by: str, counts: str = "{}") -> int:
    """The erasures row of a request. erase_person writes it with the person's rows going: from
    then on every way in keeps the subject out (ohx_dagster/privacy/identity.py); the counts
    follow."""
    return int(
        conn.execute(
            erasures.insert()
            .values(
                subject_hash=check_subject(subject),
                requested_by=requested_by[:128],
                erased_at_us=now_us(),
                counts=counts,
            )
            .returning(erasures.c.id)
        ).scalar_one()
    )


def record_erasure(
    store: RecordStore,
    subject: str,
    requested_by: str,
    counts: Mapping[str, int],
    *,
    erasure_id: int | None = None,
    outcome: str = "ok",
) -> None:
    """The erasures row of a request with its counts (`erasure_id`: the tombstone erase_person
    wrote, completed; else a new row), and its audit row, in one transaction."""
    with store.write() as conn:
        if erasure_id is None:
            _tombstone(conn, subject, requested_by, _counts_json(counts))
        else:
            conn.execute(
                erasures.update()
                .where(erasures.c.id == erasure_id)
                .values(counts=_counts_json(counts))
            )
        audit.record(
            conn,
            actor=requested_by,
            action="erase",
            subject=subject,
            outcome=outcome,
            detail=", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "nothing left",
        )


# -- whose resource is it ------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """What identifies a person's resources in the output."""

    provider: str
    user_id: str

    @property
    def derived_patient(self) -> str:
        """The Patient id the product derives for them (unique to provider + user)."""
        return HealthSyncConfig(user_id=self.user_id, provider=self.provider).fhir_patient_id

    @property
    def needles(self) -> tuple[bytes, ...]:
        """Byte strings one of which any file holding their resources contains (a cheap test
        before parsing): their content-key prefix, their id as a JSON string (the value of
        their person identifier), their derived Patient reference."""
        escaped = orjson.dumps(f"|{self.provider}|{self.user_id}")[1:-1]
        return (
            escaped + b"|",
            escaped + b'"',
            orjson.dumps(self.user_id),
            f"Patient/{self.derived_patient}".encode(),
        )

    def mentioned_in(self, body: bytes) -> bool:
        return any(needle in body for needle in self.needles)

    def holds(self, resource: dict[str, Any]) -> bool:
        """Whether the resource is theirs."""
        if owner(resource) == (self.provider, self.user_id):
            return True
        derived = f"Patient/{self.derived_patient}"
        for name in ("subject", "patient"):
            ref = resource.get(name)
            if isinstance(ref, dict) and ref.get("reference") == derived:
                return True
        return False

    def redact(self, text: str) -> str:
        """A message without their id (a server's error may quote a match URL)."""
        for form in (self.user_id, quote(self.user_id, safe=""), quote(self.user_id)):
            text = text.replace(form, "<subject>")
        return text


# -- the FHIR files ------------------------------------------------------------------------------


@dataclass
class StripReport:
    partitions: int = 0  # partitions whose bucket files were rewritten
    resources: int = 0  # the person's resources dropped from them
    files_replaced: int = 0
    files_deleted: int = 0  # old versions and orphans removed from the output

    def add(self, other: StripReport) -> None:
        self.partitions += other.partitions
        self.resources += other.resources
        self.files_replaced += other.files_replaced
        self.files_deleted += other.files_deleted


def is_provider_key(key: str, provider: str) -> bool:
    """Whether a partition's source key is the provider's (its name, or one of its shards)."""
    return key_provider(key) == provider


def _directory(partition: str) -> str:
    return partition.replace("|", "/", 1)


def _bucket_file(name: str, bucket: int) -> bool:
    return name.endswith(".ndjson") and f".{bucket:02d}." in name


def _parse(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


def _bump_remaining(conn: Connection, provider: str, day: str, user_ids: set[str]) -> None:
    """The remaining people's output of the day is newer than any render read before: published
    = version + 1, and a person with unpublished changes stays pending (one SQL statement, so a
    sync's concurrent increment is not lost)."""
    v = day_versions
    people = sorted(user_ids)
    for start in range(0, len(people), _IN_CLAUSE):
        conn.execute(
            v.update()
            .where(
                v.c.provider == provider,
                v.c.day == day,
                v.c.user_id.in_(people[start : start + _IN_CLAUSE]),
            )
            .values(
                published_version=v.c.version + 1,
                version=v.c.version + sa.case((v.c.version > v.c.published_version, 2), else_=1),
            )
        )


def _current_files(conn: Connection, partition: str, bucket: int | None = None) -> list[Any]:
    f = fhir_files
    query = sa.select(f).where(f.c.partition_key == partition)
    if bucket is not None:
        query = query.where(f.c.bucket == bucket)
    return list(conn.execute(query.order_by(f.c.bucket, f.c.resource_type)))


def _strip_partition(
    store: RecordStore, output: FhirOutput, partition: str, person: Person
) -> StripReport:
    """Drop the person's resources from the partition's files of their bucket (module docstring)."""
    bucket = bucket_of(person.provider, person.user_id)
    directory = _directory(partition)
    day = partition.split("|", 1)[0]
    for _ in range(REWRITE_ATTEMPTS):
        with store.read() as conn:
            rows = _current_files(conn, partition, bucket)
        changes: list[tuple[Any, OutputFile | None]] = []
        remaining: set[str] = set()
        dropped = 0
        for row in rows:
            relative = f"{directory}/{row.name}"
            if not output.exists(relative):
                continue
            body = output.read(relative)
            resources = _parse(body)
            kept = [r for r in resources if not person.holds(r)]
            remaining |= {u for p, u in map(owner, kept) if p == person.provider}
            if len(kept) == len(resources):
                continue
            dropped += len(resources) - len(kept)
            if not kept:
                changes.append((row, None))
                continue
            new_body = ndjson(kept)
            name = file_name(row.resource_type, bucket, new_body)
            output.write_fresh(f"{directory}/{name}", new_body)
            changes.append((row, OutputFile(row.resource_type, bucket, name, len(kept))))
        if not changes:
            return StripReport()
        f, o = fhir_files, fhir_outbox
        with store.write() as conn:
            db.lock(conn, "fhir", partition)
            if [(r.resource_type, r.name) for r in _current_files(conn, partition, bucket)] != [
                (r.resource_type, r.name) for r in rows
            ]:
                continue  # a publisher committed this bucket meanwhile: read it again
            for row, new in changes:
                conn.execute(
                    f.delete().where(
                        f.c.partition_key == partition,
                        f.c.bucket == bucket,
                        f.c.resource_type == row.resource_type,
                    )
                )
                if new is None:
                    continue
                conn.execute(
                    f.insert().values(
                        partition_key=partition,
                        bucket=bucket,
                        resource_type=new.resource_type,
                        name=new.name,
                        count=new.count,
                        published_us=row.published_us,
                        enqueued=row.enqueued,
                    )
                )
                conn.execute(
                    o.update()
                    .where(o.c.partition_key == partition, o.c.file == row.name)
                    .values(file=new.name)
                )
            _bump_remaining(conn, person.provider, day, remaining - {person.user_id})
            files = [
                OutputFile(r.resource_type, r.bucket, r.name, r.count)
                for r in _current_files(conn, partition)
            ]
            if files:
                output.write_manifest(
                    directory,
                    files,
                    export_time=iso_us(now_us()) or "",
                    request=f"urn:ohx:partition:{partition}",
                )
            else:
                output.delete(f"{directory}/{MANIFEST}")
        for row, _ in changes:
            output.delete(f"{directory}/{row.name}")
        if not output.names(directory):
            output.delete_tree(directory)
        return StripReport(
            partitions=1,
            resources=dropped,
            files_replaced=sum(1 for _, new in changes if new is not None),
            files_deleted=len(changes),
        )
    raise ErasureError(
        f"partition {partition}: bucket {bucket} was replaced by publishers during "
        f"{REWRITE_ATTEMPTS} attempts; run again"
    )


def _remove_orphans(store: RecordStore, output: FhirOutput, partition: str, person: Person) -> int:
    """Delete files of the person's bucket that no file row and no manifest names and that hold
    their resources (left by a crash between a commit and its cleanup, or a writer that died)."""
    bucket = bucket_of(person.provider, person.user_id)
    directory = _directory(partition)
    with store.read() as conn:
        named = {r.name for r in _current_files(conn, partition)}
    named |= set(output.listed(directory))
    removed = 0
    for name in output.names(directory):
        if name in named or name == MANIFEST or not _bucket_file(name, bucket):
            continue
        relative = f"{directory}/{name}"
        if name.startswith(".tmp-") and output.age_s(relative) < UNCOMMITTED_GRACE_S:
            continue  # a writer's file, still being written
        body = output.read(relative)
        if person.mentioned_in(body) and any(person.holds(r) for r in _parse(body)):
            output.delete(relative)
            removed += 1
    return removed


def _partitions_of_bucket(
    store: RecordStore, provider: str, bucket: int, days: Iterable[str] | None = None
) -> set[str]:
    """Partitions of the provider's source keys with file rows of the bucket (of `days`)."""
    f = fhir_files
    query = sa.select(f.c.partition_key).where(f.c.bucket == bucket).distinct()
    wanted = None if days is None else set(days)
    with store.read() as conn:
        keys = set(conn.execute(query).scalars())
    return {
        k
        for k in keys
        if is_provider_key(k.split("|", 1)[1], provider)
        and (wanted is None or k.split("|", 1)[0] in wanted)
    }


def _partition_dirs(output: FhirOutput, provider: str) -> set[str]:
    """Partitions of the provider that have a directory in the output (rows or not)."""
    found = set()
    for day in output.names(""):
        if _DAY.fullmatch(day):
            found |= {f"{day}|{key}" for key in output.names(day) if is_provider_key(key, provider)}
    return found


def strip_partitions(
    store: RecordStore,
    output: FhirOutput,
    person: Person,
    *,
    days: Iterable[str] | None = None,
    scan_output: bool = True,
) -> StripReport:
    """Drop the person's resources from every partition of their provider (or of `days` only)
    that holds them in the files of their bucket, and remove orphaned files holding them;
    `scan_output`: also look at partition directories that no file row names (erasure), not
    only those the file rows name (retention)."""
    bucket = bucket_of(person.provider, person.user_id)
    days = None if days is None else sorted(days)
    partitions = _partitions_of_bucket(store, person.provider, bucket, days)
    if scan_output:
        partitions |= {
            p
            for p in _partition_dirs(output, person.provider)
            if days is None or p.split("|", 1)[0] in days
        }
    report = StripReport()
    for partition in sorted(partitions):
        report.add(_strip_partition(store, output, partition, person))
        report.files_deleted += _remove_orphans(store, output, partition, person)
    return report


# -- the record store ----------------------------------------------------------------------------


def _patient_ids(conn: Connection, person: Person) -> set[str]:
    ids = {person.derived_patient}
    row = conn.execute(
        sa.select(users.c.config).where(
            users.c.provider == person.provider, users.c.user_id == person.user_id
        )
    ).scalar_one_or_none()
    if row:
        ids.add(str(orjson.loads(row).get("fhir_patient_id") or person.derived_patient))
    return ids


def empty_outbox_rows(conn: Connection, where: sa.ColumnElement[bool]) -> tuple[int, int]:
    """Outbox rows without their values: a row the server never saw is deleted; the others keep
    only the match URL (what deleting on the server needs), acknowledged and withdrawn, so no
    delivery sends them and no read-back samples them. Returns (deleted, emptied)."""
    o = fhir_outbox
    never_sent = where & o.c.delivered_hash.is_(None) & (o.c.attempts == 0)
    deleted = int(conn.execute(o.delete().where(never_sent)).rowcount or 0)
    unmatched = conn.execute(
        sa.select(o.c.resource_type, o.c.resource_id, o.c.body).where(
            where, o.c.match_url == "", o.c.body != STUB_BODY
        )
    ).all()
    for row in unmatched:
        conn.execute(
            o.update()
            .where(o.c.resource_type == row.resource_type, o.c.resource_id == row.resource_id)
            .values(match_url=match_url(orjson.loads(row.body)))
        )
    emptied = conn.execute(
        o.update()
        .where(where, o.c.body != STUB_BODY)
        .values(
            body=STUB_BODY,
            body_hash=STUB_HASH,
            delivered_hash=STUB_HASH,
            withdrawn=True,
            file="",
            last_error=None,
        )
    ).rowcount
    return deleted, int(emptied or 0)


def _erase_rows(
    store: RecordStore, person: Person, subject: str, requested_by: str
) -> tuple[dict[str, int], int]:
    """Step 1 (module docstring): one transaction under the person's lock, which writes the
    tombstone (the erasures row, counts to follow); the counts and the row's id."""
    p, u = person.provider, person.user_id
    counts: dict[str, int] = {}
    with store.write() as conn:
        db.lock(conn, "person", p, u)
        inbox.serialize_writers(conn)  # no webhook event of theirs slips past the tombstone
        erasure_id = _tombstone(conn, subject, requested_by)
        patients = _patient_ids(conn, person)
        for table in person_tables():
            deleted = conn.execute(
                table.delete().where(table.c.provider == p, table.c.user_id == u)
            ).rowcount
            counts[str(table.name)] = int(deleted or 0)
        b = request_budget
        counts["request_budget"] = int(
            conn.execute(b.delete().where(b.c.key == f"{p}|{u}")).rowcount or 0
        )
        s = oauth_states
        flows = conn.execute(sa.select(s.c.state_hash, s.c.config).where(s.c.provider == p))
        theirs = [
            r.state_hash
            for r in flows
            if str(orjson.loads(r.config).get("fhir_patient_id") or "") in patients
            or orjson.loads(r.config).get("user_id") == u
        ]
        counts["oauth_states"] = len(theirs)
        if theirs:
            conn.execute(s.delete().where(s.c.state_hash.in_(theirs)))
        o = fhir_outbox
        deleted, _ = empty_outbox_rows(conn, (o.c.provider == p) & (o.c.user_id == u))
        counts["fhir_outbox"] = deleted
    return counts, erasure_id


# -- the FHIR server -----------------------------------------------------------------------------


@dataclass
class ServerDeletion:
    deleted: int = 0
    pending: int = 0
    error: str = ""


def _delete_on_server(
    store: RecordStore, client: FhirClient | None, person: Person
) -> ServerDeletion:
    """Step 3: DELETE the person's resources the server may hold (their outbox stubs), what
    references others first; each acknowledged batch's rows go."""
    o = fhir_outbox
    mine = (o.c.provider == person.provider) & (o.c.user_id == person.user_id)
    with store.read() as conn:
        rows = conn.execute(
            sa.select(o.c.resource_type, o.c.resource_id, o.c.match_url)
            .where(mine)
            .order_by(o.c.rank.desc(), o.c.resource_type, o.c.resource_id)
        ).all()
    result = ServerDeletion(pending=len(rows))
    unknown = sum(1 for r in rows if not r.match_url)
    if unknown:
        result.error = f"{unknown} outbox rows without a match URL cannot be deleted by URL"
    rows = [r for r in rows if r.match_url]
    if client is None or not rows:
        return result
    keys: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        keys[row.match_url].append((row.resource_type, row.resource_id))
    urls = list(keys)

    def confirmed(batch: Sequence[str]) -> None:
        done = [key for url in batch for key in keys[url]]
        with store.write() as conn:
            for resource_type, resource_id in done:
                conn.execute(
                    o.delete().where(
                        mine, o.c.resource_type == resource_type, o.c.resource_id == resource_id
                    )
                )
        result.deleted += len(done)
        result.pending -= len(done)

    try:
        client.delete(urls, confirmed=confirmed)
    except DeliveryError as exc:
        result.error = person.redact(str(exc))
    return result


# -- erasure -------------------------------------------------------------------------------------


@dataclass
class ErasureReport:
    subject: str
    counts: dict[str, int] = field(default_factory=dict)  # rows per table, fhir_* figures
    server_pending: int = 0  # resources the server may still hold (outbox rows kept)
    server_error: str = ""
    erasure_id: int | None = None  # the erasures row (the tombstone) of this request

    @property
    def complete(self) -> bool:
        return self.server_pending == 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def erase_person(
    store: RecordStore,
    output: FhirOutput,
    fhir_client: FhirClient | None,
    provider: str,
    user_id: str,
    *,
    requested_by: str,
    salt: bytes | None = None,
    record: bool = True,
) -> ErasureReport:
    """Remove everything of the person (module docstring). Its erasures row (the tombstone) is
    written with step 1; `record`: complete it with the counts and write the audit row (the
    erasure job does that itself, with Dagster's counts: `record_erasure(erasure_id=...)`)."""
    for name, value in (("provider", provider), ("user_id", user_id)):
        if not isinstance(value, str) or not value:
            raise ValidationError(name, value, "a non-empty string")
    if not isinstance(requested_by, str) or not requested_by.strip():
        raise ValidationError("requested_by", requested_by, "who asked for the erasure")
    person = Person(provider, user_id)
    salt = erasure_salt() if salt is None else salt
    report = ErasureReport(subject_hash(provider, user_id, salt=salt))
    counts, report.erasure_id = _erase_rows(store, person, report.subject, requested_by)
    report.counts.update(counts)
    stripped = strip_partitions(store, output, person)
    exports = withdraw_exports(store, output, person)
    server = _delete_on_server(store, fhir_client, person)
    report.counts["fhir_outbox"] += server.deleted
    report.counts |= {
        "fhir_server_deleted": server.deleted,
        "fhir_partitions_rewritten": stripped.partitions,
        "fhir_resources_removed": stripped.resources,
        "fhir_files_removed": stripped.files_deleted,
        "fhir_exports_withdrawn": exports,
    }
    report.server_pending = server.pending
    report.server_error = server.error
    if record:
        outcome = "ok" if report.complete else "partial"  # the FHIR server's copies are left
        record_erasure(
            store,
            report.subject,
            requested_by,
            report.counts,
            erasure_id=report.erasure_id,
            outcome=outcome,
        )
    return report


def withdraw_exports(store: RecordStore, output: FhirOutput, person: Person) -> int:
    """Withdraw every Bulk Data export whose files hold the person (ohx_dagster/fhirapi/bulk.py):
    its files deleted, its state `withdrawn` (the client's poll says so). A run still writing
    one finds the state changed when it completes and deletes what it wrote; one that has not
    reached the person's files yet leaves them out (they are no longer in `users`)."""
    t = fhir_exports
    with store.read() as conn:
        ids = conn.execute(
            sa.select(t.c.export_id).where(t.c.state.in_(("running", "complete")))
        ).scalars().all()  # fmt: skip
    withdrawn = 0
    for export_id in ids:
        directory = f"exports/{export_id}"
        holds = any(
            person.mentioned_in(output.read(f"{directory}/{name}"))
            for name in output.names(directory)
            if name.endswith(".ndjson")
        )
        if not holds:
            continue
        with store.write() as conn:
            conn.execute(
                t.update()
                .where(t.c.export_id == export_id)
                .values(state="withdrawn", output="[]", finished_us=now_us())
            )
        output.delete_tree(directory)
        withdrawn += 1
    return withdrawn


def remaining_rows(store: RecordStore, provider: str, user_id: str) -> dict[str, int]:
    """Rows any table still holds of the person (0 everywhere after a complete erasure)."""
    found: dict[str, int] = {}
    with store.read() as conn:
        for table in [*person_tables(), fhir_outbox]:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.provider == provider, table.c.user_id == user_id)
            ).scalar_one()
            if count:
                found[table.name] = int(count)
    return found


# -- the command line ----------------------------------------------------------------------------


def run_config(provider: str, subject: str, requested_by: str) -> dict[str, Any]:
    """The erase_person_job run config for a subject (no person id in it)."""
    config = {"provider": provider, "subject": check_subject(subject), "requested_by": requested_by}
    return {"ops": {"erase_person": {"config": config}}}


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ohx_dagster.privacy.erasure",
        description="The subject hash of a person, and the erase_person_job run config for it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    subject = commands.add_parser("subject", help="print the subject hash and the run config")
    subject.add_argument("--provider", required=True)
    subject.add_argument("--user", required=True, help="the provider's user id")
    subject.add_argument("--requested-by", required=True, help="who asks (recorded with it)")
    args = parser.parse_args(argv)
    digest = subject_hash(args.provider, args.user, salt=erasure_salt())
    out(digest)
    out(orjson.dumps(run_config(args.provider, digest, args.requested_by)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
