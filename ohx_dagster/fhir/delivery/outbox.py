"""The outbox (table fhir_outbox, in the record store): what the FHIR server is to hold.

It holds the latest body of every published resource and the hash of the body the server last
acknowledged. A partition's resources are enqueued, then sent in bounded transaction Bundles
(client.py) and marked delivered only after the server answered the whole transaction with
success. So:
- a server outage loses nothing: undelivered rows stay pending and the next run sends them;
- a retry duplicates nothing: a conditional update on the deterministic identifier replaces, never
  adds, even when the server applied a transaction whose response was lost;
- re-publishing an unchanged partition sends nothing (the acknowledged hash matches).
A row keeps the person whose data it holds (`owner`: the audit and erasure find them by it), its
match URL and its rank in the delivery order (bundle.py), so pending rows come out in that order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa

from ohx_dagster.core.times import now_us
from ohx_dagster.fhir.codes import PERSON_SYSTEM
from ohx_dagster.fhir.common import is_withdrawn, referenced
from ohx_dagster.fhir.delivery.bundle import DELETE_RANK, TYPE_RANK, match_url, rank
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import fhir_files, fhir_outbox
from ohx_dagster.storage.store import RecordStore

ENQUEUE_BATCH: Final = 1_000


def owner(resource: dict) -> tuple[str, str]:
    """(provider, user id) whose data a resource holds: from its content-key identifier (keys
    of a person's resources begin with provider|user), from the person identifier of a Patient
    or a Provenance's patient; ("", "") for none."""
    identifiers = resource.get("identifier") or [resource.get("patient", {}).get("identifier", {})]
    first = identifiers[0] if identifiers else {}
    system, value = str(first.get("system", "")), str(first.get("value", ""))
    if system.startswith(f"{PERSON_SYSTEM}:"):
        return system.removeprefix(f"{PERSON_SYSTEM}:"), value
    parts = value.split("|")
    return (parts[1], parts[2]) if len(parts) >= 3 else ("", "")


def _outbox_row(partition_key: str, file: str, resource: dict, stamp: int) -> dict[str, Any]:
    body = orjson.dumps(resource)
    provider, user_id = owner(resource)
    return {
        "match_url": match_url(resource),
        "rank": rank(resource),
        "resource_type": resource["resourceType"],
        "resource_id": resource["id"],
        "partition_key": partition_key,
        "file": file,
        "provider": provider,
        "user_id": user_id,
        "body": body.decode(),
        "body_hash": hashlib.sha256(body).hexdigest(),
        "withdrawn": is_withdrawn(resource),
        "enqueued_at_us": stamp,
    }


def _upsert_outbox(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    t = fhir_outbox
    statement = db.insert_for(conn)(t)
    updated = ("partition_key", "file", "provider", "user_id", "body", "body_hash", "withdrawn",
               "match_url", "rank", "enqueued_at_us")  # fmt: skip
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["resource_type", "resource_id"],
            set_={name: statement.excluded[name] for name in updated},
        ),
        list(rows),
    )


def enqueue(
    store: RecordStore, partition_key: str, resources: Iterable[dict], *, file: str = ""
) -> int:
    """Put resources of a partition in the outbox (idempotent); returns how many the server has
    not acknowledged with exactly this body (those are pending)."""
    stamp = now_us()
    rows = [_outbox_row(partition_key, file, r, stamp) for r in resources]
    with store.write() as conn:
        for start in range(0, len(rows), ENQUEUE_BATCH):
            _upsert_outbox(conn, rows[start : start + ENQUEUE_BATCH])
    return len(pending(store, partition_key))


def enqueue_partition(store: RecordStore, output: FhirOutput, partition_key: str) -> int:
    """Put every file of the partition's current output that is not in the outbox yet into it
    (idempotent: run on every delivery attempt); returns how many files were enqueued."""
    f = fhir_files
    directory = partition_key.replace("|", "/", 1)
    with store.read() as conn:
        waiting = conn.execute(
            sa.select(f.c.bucket, f.c.resource_type, f.c.name).where(
                f.c.partition_key == partition_key, f.c.enqueued.is_(False)
            )
        ).all()
    for row in waiting:
        resources = list(output.read_resources(f"{directory}/{row.name}"))
        stamp = now_us()
        with store.write() as conn:
            for start in range(0, len(resources), ENQUEUE_BATCH):
                batch = resources[start : start + ENQUEUE_BATCH]
                rows = [_outbox_row(partition_key, row.name, r, stamp) for r in batch]
                _upsert_outbox(conn, rows)
            # The file's row may have been replaced by a newer version meanwhile: then that
            # version's own row stays waiting for the next attempt.
            conn.execute(
                f.update()
                .where(f.c.partition_key == partition_key, f.c.name == row.name)
                .values(enqueued=True)
            )
    _withdraw_vanished_provenance(store, partition_key)
    return len(waiting)


def _withdraw_vanished_provenance(store: RecordStore, partition_key: str) -> None:
    """A person's Provenance of the day that the current files no longer hold (every resource it
    named was withdrawn) is deleted on the server before the resources it names."""
    f, t = fhir_files, fhir_outbox
    with store.write() as conn:
        current = sa.select(f.c.name).where(f.c.partition_key == partition_key)
        vanished = conn.execute(
            sa.select(t.c.resource_id, t.c.body_hash).where(
                t.c.partition_key == partition_key,
                t.c.resource_type == "Provenance",
                t.c.withdrawn.is_(False),
                t.c.file.not_in(current),
            )
        ).all()
        for resource_id, body_hash in vanished:
            conn.execute(
                t.update()
                .where(t.c.resource_type == "Provenance", t.c.resource_id == resource_id)
                .values(
                    withdrawn=True,
                    rank=DELETE_RANK - TYPE_RANK["Provenance"],
                    body_hash=hashlib.sha256(f"withdrawn:{body_hash}".encode()).hexdigest(),
                )
            )


def pending_query(partition_key: str | None) -> sa.Select:
    t = fhir_outbox
    query = sa.select(
        t.c.resource_type,
        t.c.resource_id,
        t.c.body,
        t.c.body_hash,
        t.c.withdrawn,
        t.c.provider,
        t.c.user_id,
        t.c.partition_key,
    ).where(sa.or_(t.c.delivered_hash.is_(None), t.c.delivered_hash != t.c.body_hash))
    if partition_key is not None:
        query = query.where(t.c.partition_key == partition_key)
    return query.order_by(t.c.rank, t.c.resource_type, t.c.resource_id)


def pending(store: RecordStore, partition_key: str | None = None) -> list[tuple[str, str, str]]:
    """(resource type, id, body hash) of resources not yet acknowledged by the server."""
    with store.read() as conn:
        rows = conn.execute(pending_query(partition_key)).all()
    return [(r.resource_type, r.resource_id, r.body_hash) for r in rows]


def partition_counts(store: RecordStore, partition_key: str) -> dict[str, int]:
    """The partition's resources as its current files hold them, against the outbox: total (in
    the files), delivered (the server acknowledged exactly the published body), pending (not
    yet, or not yet enqueued), failed (pending, and the last attempt to send it failed)."""
    f, t = fhir_files, fhir_outbox
    current = sa.and_(t.c.delivered_hash.is_not(None), t.c.delivered_hash == t.c.body_hash)
    with store.read(snapshot=True) as conn:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(f.c.count), 0)).where(
                f.c.partition_key == partition_key
            )
        ).scalar_one()
        names = sa.select(f.c.name).where(f.c.partition_key == partition_key)
        delivered, failed = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(sa.case((current, 1), else_=0)), 0),
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case((sa.and_(~current, t.c.last_error.is_not(None)), 1), else_=0)
                    ),
                    0,
                ),
            ).where(t.c.partition_key == partition_key, t.c.file.in_(names))
        ).one()
    return {
        "total": int(total),
        "delivered": int(delivered),
        "pending": int(total) - int(delivered),
        "failed": int(failed),
    }


def delivered_sample(store: RecordStore, partition_key: str, size: int) -> list[dict]:
    """Up to `size` of the partition's delivered resources, spread evenly over types and ids
    (the same ones every time for the same outbox)."""
    t = fhir_outbox
    delivered = sa.and_(
        t.c.partition_key == partition_key,
        t.c.delivered_hash == t.c.body_hash,
        t.c.withdrawn.is_(False),
    )
    with store.read() as conn:
        keys = conn.execute(
            sa.select(t.c.resource_type, t.c.resource_id)
            .where(delivered)
            .order_by(t.c.resource_type, t.c.resource_id)
        ).all()
        if not keys or size < 1:
            return []
        step = max(1, len(keys) // size)
        bodies = [
            conn.execute(
                sa.select(t.c.body).where(
                    t.c.resource_type == resource_type, t.c.resource_id == resource_id
                )
            ).scalar_one()
            for resource_type, resource_id in keys[::step][:size]
        ]
    return [orjson.loads(body) for body in bodies]


def referenced_match_urls(store: RecordStore, resources: Sequence[dict]) -> dict[str, str]:
    """Type/id -> match URL of the outbox resources these reference (external ones absent)."""
    targets = referenced(resources)
    ids = sorted({target.partition("/")[2] for target in targets})
    t = fhir_outbox
    urls: dict[str, str] = {}
    with store.read() as conn:
        for start in range(0, len(ids), ENQUEUE_BATCH):
            rows = conn.execute(
                sa.select(t.c.resource_type, t.c.resource_id, t.c.match_url).where(
                    t.c.resource_id.in_(ids[start : start + ENQUEUE_BATCH]), t.c.match_url != ""
                )
            ).all()
            for row in rows:
                key = f"{row.resource_type}/{row.resource_id}"
                if key in targets:
                    urls[key] = row.match_url
    return urls
