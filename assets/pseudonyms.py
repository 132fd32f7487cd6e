"""What a sync run tells Dagster names people by their salted subject, never by id (issue 19).

- `run_request(context, store, provider)`: the run's SyncRequest (ohx_dagster/run_request.py)
  with its `ohx/subjects` resolved to people through the store. A run an operator launched with
  ids typed in `ohx/users` selects those people, and its tags are rewritten at once: `ohx/users`
  goes, `ohx/subjects` holds the same people (`replace_typed_ids`).
- `Hider`: what a run reports (metadata, check results, log lines, failures) with the ids of the
  people it touched replaced by their shown subject (ohx_dagster/identity.py `redact`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import dagster as dg
from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster_shared.serdes import serialize_value

from ohx_dagster.identity import erasure_salt, redact, subject_hash
from ohx_dagster.run_request import SUBJECTS_TAG, USERS_TAG, SyncRequest
from ohx_dagster.store import RecordStore

T = TypeVar("T")


@dataclass(frozen=True)
class Hider:
    """Replaces the ids of a run's people by their shown subjects in what it reports."""

    provider: str
    salt: bytes

    def __call__(self, value: T, user_ids: Iterable[str]) -> T:
        return redact(value, self.provider, user_ids, salt=self.salt)


def replace_typed_ids(
    instance: dg.DagsterInstance, run: dg.DagsterRun, provider: str, salt: bytes
) -> bool:
    """Rewrite the run's tags without the ids an operator typed in ohx/users: the same people in
    ohx/subjects (added to any already there). False when the run storage is not SQL (the tag
    stays; erasure still finds the run by it)."""
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return False
    current = instance.get_run_by_id(run.run_id) or run  # an earlier step may have done it
    typed = [u.strip() for u in current.tags.get(USERS_TAG, "").split(",") if u.strip()]
    if not typed:
        return False
    subjects = {s.strip() for s in current.tags.get(SUBJECTS_TAG, "").split(",") if s.strip()}
    subjects |= {subject_hash(provider, u, salt=salt) for u in typed}
    tags = {k: v for k, v in current.tags.items() if k != USERS_TAG}
    tags[SUBJECTS_TAG] = ",".join(sorted(subjects))
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
    if USERS_TAG in tags and replace_typed_ids(context.instance, context.run, provider, salt):
        context.log.info(
            f"{USERS_TAG} replaced by {SUBJECTS_TAG} in the run's tags (people by subject only)"
        )
    return request, Hider(provider, salt)
