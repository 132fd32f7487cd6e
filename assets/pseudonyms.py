"""What a sync run tells Dagster names people by their salted subject, never by id (issue 19).

- `run_request(context, store, provider)`: the run's SyncRequest (ohx_dagster/sync/run_request.py)
  with its `ohx/subjects` resolved to people through the store. A run an operator launched with
  ids typed in `ohx/users` selects those people, and its tags are rewritten at once: `ohx/users`
  goes, `ohx/subjects` holds the same people (`replace_typed_ids`); so are its backfill's tags
  when it belongs to one launched that way (its later runs then carry subjects only).
- `Hider`: what a run reports (metadata, check results, log lines, failures) with the ids of the
  people it touched replaced by their shown subject (ohx_dagster/privacy/identity.py `redact`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import dagster as dg
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.storage.runs.schema import BackfillTagsTable, RunsTable, RunTagsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster_shared.serdes import serialize_value

from ohx_dagster.privacy.identity import redact
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.run_request import SUBJECTS_TAG, USERS_TAG, SyncRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Hider:
    """Replaces the ids of a run's people by their shown subjects in what it reports."""

    provider: str
    salt: bytes

    def __call__(self, value: T, user_ids: Iterable[str]) -> T:
        return redact(value, self.provider, user_ids, salt=self.salt)


def typed_subjects(
    store: RecordStore, provider: str, tags: Mapping[str, str], salt: bytes
) -> set[str]:
    """The subjects of the ids typed in ohx/users, with those already in ohx/subjects: an id is
    hashed with each provider the store knows it at (a backfill may span sources), or with the
    run's own provider when it is nowhere (the run then says the subject names nobody)."""
    typed = {u.strip() for u in tags.get(USERS_TAG, "").split(",") if u.strip()}
    subjects = {s.strip() for s in tags.get(SUBJECTS_TAG, "").split(",") if s.strip()}
    found = {(p.config.provider, p.config.user_id) for p in store.people()}
    for user_id in typed:
        providers = {p for p, u in found if u == user_id} or {provider}
        subjects |= {subject_hash(p, user_id, salt=salt) for p in providers}
    return subjects


def set_backfill_tags(
    instance: dg.DagsterInstance, backfill: PartitionBackfill, tags: Mapping[str, str]
) -> None:
    """The backfill with these tags, in its body and in the tag index (update_backfill rewrites
    the body only)."""
    instance.update_backfill(backfill._replace(tags=dict(tags)))
    storage = instance.run_storage
    if isinstance(storage, SqlRunStorage) and storage.has_backfill_tags_table():
        t = BackfillTagsTable
        with storage.connect() as conn:
            conn.execute(t.delete().where(t.c.backfill_id == backfill.backfill_id))
            if tags:
                conn.execute(
                    t.insert(),
                    [{"backfill_id": backfill.backfill_id, "key": n, "value": v}
                     for n, v in tags.items()],
                )  # fmt: skip


def _without_typed_ids(
    store: RecordStore, provider: str, tags: Mapping[str, str], salt: bytes
) -> dict[str, str]:
    subjects = typed_subjects(store, provider, tags, salt)
    cleaned = {k: v for k, v in tags.items() if k != USERS_TAG}
    cleaned[SUBJECTS_TAG] = ",".join(sorted(subjects))
    return cleaned


def replace_typed_ids(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    store: RecordStore,
    provider: str,
    salt: bytes,
) -> bool:
    """Rewrite the run's tags, and its backfill's, without the ids an operator typed in
    ohx/users: the same people in ohx/subjects. False when the run storage is not SQL (the tag
    stays; erasure still finds the run by it)."""
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return False
    current = instance.get_run_by_id(run.run_id) or run  # an earlier step may have done it
    backfill_id = current.tags.get(BACKFILL_ID_TAG)
    backfill = instance.get_backfill(backfill_id) if backfill_id else None
    if backfill is not None and USERS_TAG in (backfill.tags or {}):
        set_backfill_tags(
            instance, backfill, _without_typed_ids(store, provider, backfill.tags, salt)
        )
    if USERS_TAG not in current.tags:
        return False
    tags = _without_typed_ids(store, provider, current.tags, salt)
    with storage.connect() as conn:
        conn.execute(
            RunsTable.update()
            .where(RunsTable.c.run_id == run.run_id)
            .values(run_body=serialize_value(current.with_tags(tags)))
        )
        t = RunTagsTable
        conn.execute(
            t.delete().where(t.c.run_id == run.run_id, t.c.key.in_([USERS_TAG, SUBJECTS_TAG]))
        )
        conn.execute(
            t.insert().values(run_id=run.run_id, key=SUBJECTS_TAG, value=tags[SUBJECTS_TAG])
        )
    return True


def run_request(
    context: dg.AssetExecutionContext,
    tags: Mapping[str, str],
    store: RecordStore,
    provider: str,
) -> tuple[SyncRequest, Hider]:
    """The run's request, resolved to the provider's people (module docstring), and its Hider."""
    salt = erasure_salt()
    request = SyncRequest.from_tags(tags).resolve(store, provider, salt=salt)
    typed = USERS_TAG in tags or BACKFILL_ID_TAG in tags  # a backfill launched with ids
    converted = typed and replace_typed_ids(context.instance, context.run, store, provider, salt)
    if USERS_TAG in tags and converted:
        context.log.info(
            f"{USERS_TAG} replaced by {SUBJECTS_TAG} in the run's tags (people by subject only)"
        )
    return request, Hider(provider, salt)
