"""Erasing a person on request: the erase_person_job, and what Dagster itself holds of them
(`erase_from_dagster`; Dagster code lives here, the domain package stays plain Python).

The request names no one. Run config, as `python -m ohx_dagster.privacy.erasure subject --provider
oura --user <id> --requested-by <who>` prints it:

    ops: {erase_person: {config: {provider: oura, subject: <64 hex>, requested_by: <who>}}}

where subject = HMAC-SHA256(salt, "provider|user_id") (ohx_dagster/privacy/erasure.py: the salt).
Dagster keeps a run's config for as long as it keeps the run, and no job can delete its own run, so
a clear id in the config would outlive the erasure it asked for. The subject hash is what the
`erasures` table records anyway: the run adds nothing to the audit record. The job finds the person
by hashing the provider's ids that the store still holds; once erased, the subject resolves to
nobody and a second run records that nothing was left. (A one-time request row keyed by a random
request id would hold the clear id until the job ran, forever if it never ran, and need a schema
migration; the hash needs neither, at the price of the requester computing it with the
installation's salt.)

The erasures row the job completes is written by erase_person's first step: from then on it is
the tombstone that keeps the subject out of syncs, connections and webhooks until `ohx users
readmit` (ohx_dagster/privacy/identity.py); the job's counts and an `erase` audit row follow at the
end.

Order: wait (bounded by `wait_for_runs_s`) until the runs naming the person have finished, and
delete them; erase the store, the files and the server's copies (erasure.erase_person); delete
again what a run started meanwhile left; record the erasure with every count. Runs still active,
or resources the server may still hold, fail the run: launch it again with the same config (the
store keeps the outbox rows it needs to find the person until the server has confirmed).

Since issue 19 the product never names a person by id in Dagster: runs and backfills carry
`ohx/subjects`, and metadata, check results, log lines and failures name people by subject
(ohx_dagster/sync/run_request.py, assets/pseudonyms.py). What erase_from_dagster finds is what was
written before that, and ids an operator typed: `ohx/users` in a run or a backfill whose first
run has not started yet (a run replaces it by `ohx/subjects` in both when it starts), or on a
non-SQL run storage. The subject a run
still holds names no one to anyone without the salt, and is what the tombstone holds anyway.

What Dagster keeps after erase_from_dagster, and why:
- of runs whose tags (ohx/users) or event logs (messages, metadata, check results, errors) name
  the person: nothing. They are deleted with their events and captured stdout/stderr; their
  asset check executions and an asset's cached latest materialization, which delete_run leaves
  behind, are removed and moved back to the newest remaining one (SQL event log storage);
- backfills whose tags name them stay, with the person taken out of ohx/users (a placeholder that
  selects nobody when no one is left: an empty tag would widen the backfill to everyone);
- other runs, asset partition status and metadata: counts and spans only (assets/metadata.py);
- sensor and schedule ticks: cursors are numbers, run keys name partitions, and the webhook
  sensor's log counts its ignored events per reason without naming anyone (since issue 19; an
  older tick's log can quote an id); ticks go by the instance's tick retention (dagster.yaml
  `retention:`), not by erasure;
- the instance's database keeps deleted rows' bytes until vacuumed (see
  ohx_dagster/privacy/erasure.py).
"""

import json
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Final

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, AssetKeyTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster_shared.serdes import serialize_value
from pydantic import Field

from assets.pseudonyms import set_backfill_tags
from ohx_dagster.config.sources import key_provider
from ohx_dagster.privacy.erasure import (
    check_subject,
    erase_person,
    erasure_salt,
    previous_erasures,
    record_erasure,
    resolve_subject,
)
from ohx_dagster.sync.run_request import USERS_TAG
from resources import FhirOutputResource, RecordStoreResource
from resources.fhir_server import FhirServerResource

# What a backfill's ohx/users becomes when the erased person was its only one: selects nobody.
ERASED_PLACEHOLDER: Final = "ohx-erased"
PAGE: Final = 200


@dataclass
class DagsterErasure:
    runs_deleted: int = 0
    runs_active: int = 0  # naming the person but not finished: not deleted
    check_executions_deleted: int = 0
    asset_entries_reset: int = 0
    compute_logs_deleted: int = 0
    backfills_rewritten: int = 0

    def counts(self) -> dict[str, int]:
        return {f"dagster_{name}": value for name, value in asdict(self).items()}

    def add(self, other: "DagsterErasure") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, value if name == "runs_active" else getattr(self, name) + value)


def names_pattern(user_id: str) -> re.Pattern[str]:
    """The id as a whole token (not inside a longer id), raw or JSON-escaped."""
    forms = sorted({user_id, json.dumps(user_id)[1:-1]}, key=len, reverse=True)
    alternatives = "|".join(re.escape(form) for form in forms)
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def run_provider(tags: Mapping[str, str]) -> str | None:
    """The provider of a run's source partition key (None: not a partitioned sync run)."""
    for name in ("dagster/partition", "dagster/asset_partition_range_start"):
        value = tags.get(name, "")
        if "|" in value:
            return key_provider(value.rsplit("|", 1)[1])
    key = tags.get("dagster/partition/source")
    return key_provider(key) if key else None


def _names_in_tags(tags: Mapping[str, str], user_id: str, pattern: re.Pattern[str]) -> bool:
    users = {u.strip() for u in tags.get(USERS_TAG, "").split(",")}
    return user_id in users or any(pattern.search(value) for value in tags.values())


def _names_in_events(instance: dg.DagsterInstance, run_id: str, pattern: re.Pattern[str]) -> bool:
    cursor = None
    while True:
        page = instance.get_records_for_run(run_id, cursor=cursor, limit=500)
        if any(pattern.search(serialize_value(r.event_log_entry)) for r in page.records):
            return True
        if not page.has_more:
            return False
        cursor = page.cursor


def runs_naming(
    instance: dg.DagsterInstance,
    provider: str,
    user_id: str,
    *,
    scan_events: bool = True,
    exclude: Collection[str] = (),
) -> tuple[list[str], list[str]]:
    """(finished, active) ids of the runs whose tags, config or (`scan_events`) event log name
    the person; runs of another provider's partitions are left out."""
    pattern = names_pattern(user_id)
    finished: list[str] = []
    active: list[str] = []
    cursor = None
    while True:
        records = instance.get_run_records(limit=PAGE, cursor=cursor)
        for record in records:
            run = record.dagster_run
            cursor = run.run_id
            if run.run_id in exclude or run_provider(run.tags) not in (None, provider):
                continue
            named = (
                _names_in_tags(run.tags, user_id, pattern)
                or bool(pattern.search(json.dumps(run.run_config, default=str)))
                or (scan_events and _names_in_events(instance, run.run_id, pattern))
            )
            if named:
                (finished if run.is_finished else active).append(run.run_id)
        if len(records) < PAGE:
            return finished, active


def _delete_logs(instance: dg.DagsterInstance, run_id: str) -> int:
    """Captured stdout/stderr of the run (delete_run leaves them); 1 when the manager did it."""
    try:
        instance.compute_log_manager.delete_logs(prefix=[run_id])
    except Exception:  # managers differ (no-op, cloud storage); never fatal, counted
        return 0
    return 1


def _scrub_event_index(
    instance: dg.DagsterInstance,
    run_ids: set[str],
    pattern: re.Pattern[str],
    report: DagsterErasure,
) -> None:
    """What delete_run leaves of deleted runs in the event log's index: their asset check
    executions (with the evaluation's metadata), and an asset's cached latest materialization
    when it came from one of them or names the person (moved back to the newest remaining)."""
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        return
    c, k = AssetCheckExecutionsTable, AssetKeyTable
    with storage.index_connection() as conn:
        deleted = sorted(run_ids)
        for start in range(0, len(deleted), 500):
            stale = c.c.run_id.in_(deleted[start : start + 500])
            report.check_executions_deleted += int(conn.execute(c.delete().where(stale)).rowcount)
        keys = conn.execute(sa.select(k.c.asset_key, k.c.last_materialization, k.c.last_run_id))
        affected = [
            r.asset_key
            for r in keys
            if r.last_run_id in run_ids or pattern.search(r.last_materialization or "")
        ]
    for db_key in affected:
        asset_key = dg.AssetKey.from_db_string(db_key)
        if asset_key is None:
            continue
        latest = instance.fetch_materializations(asset_key, limit=1).records
        with storage.index_connection() as conn:
            conn.execute(
                k.update()
                .where(k.c.asset_key == db_key)
                .values(
                    last_materialization=serialize_value(latest[0]) if latest else None,
                    last_run_id=latest[0].run_id if latest else None,
                )
            )
        storage.wipe_asset_cached_status(asset_key)
        report.asset_entries_reset += 1


def _without_person(name: str, value: str, user_id: str, pattern: re.Pattern[str]) -> str:
    if name == USERS_TAG:
        left = sorted({u.strip() for u in value.split(",") if u.strip()} - {user_id})
        return ",".join(left) or ERASED_PLACEHOLDER
    return pattern.sub(ERASED_PLACEHOLDER, value)


def _rewrite_backfills(instance: dg.DagsterInstance, user_id: str, pattern: re.Pattern[str]) -> int:
    rewritten = 0
    cursor = None
    while True:
        backfills = instance.get_backfills(cursor=cursor, limit=PAGE)
        for backfill in backfills:
            cursor = backfill.backfill_id
            tags = dict(backfill.tags or {})
            if not any(pattern.search(value) for value in tags.values()):
                continue
            cleaned = {n: _without_person(n, v, user_id, pattern) for n, v in tags.items()}
            set_backfill_tags(instance, backfill, cleaned)
            rewritten += 1
        if len(backfills) < PAGE:
            return rewritten


def erase_from_dagster(
    instance: dg.DagsterInstance,
    provider: str,
    user_id: str,
    *,
    wait_s: float = 0.0,
    poll_s: float = 5.0,
    scan_events: bool = True,
    exclude: Collection[str] = (),
) -> DagsterErasure:
    """Delete the runs whose tags, config or event logs name the person (waiting up to `wait_s`
    for the active ones to finish; those still active are counted, not deleted), with what
    delete_run leaves behind, and take them out of backfills' tags (module docstring).
    `scan_events` reads every run's event log: thorough, and as slow as the log is long."""
    pattern = names_pattern(user_id)
    deadline = time.monotonic() + wait_s
    while True:
        finished, active = runs_naming(
            instance, provider, user_id, scan_events=scan_events, exclude=exclude
        )
        if not active or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    report = DagsterErasure(runs_active=len(active))
    for run_id in finished:
        report.compute_logs_deleted += _delete_logs(instance, run_id)
        instance.delete_run(run_id)
        report.runs_deleted += 1
    _scrub_event_index(instance, set(finished), pattern, report)
    report.backfills_rewritten = _rewrite_backfills(instance, user_id, pattern)
    return report


# -- the job -------------------------------------------------------------------------------------


class ErasureRequest(dg.Config):
    provider: str = Field(description="The person's provider (oura, withings, simulated, ...).")
    subject: str = Field(
        description="HMAC-SHA256(salt, 'provider|user_id') in hex, from `python -m "
        "ohx_dagster.privacy.erasure subject` (never the id itself: run config is kept with "
        "the run)."
    )
    requested_by: str = Field(description="Who asked for the erasure (kept in `erasures`).")
    wait_for_runs_s: float = Field(
        default=900.0, description="How long to wait for runs naming the person to finish."
    )


@dg.op(
    name="erase_person",
    description="Erase one person everywhere: record store, FHIR files, FHIR server, Dagster "
    "runs naming them; record the erasure under a salted hash.",
)
def erase_person_op(
    context: dg.OpExecutionContext,
    config: ErasureRequest,
    store: RecordStoreResource,
    output: FhirOutputResource,
    fhir_server: FhirServerResource,
) -> dg.Output[dict[str, int]]:
    subject = check_subject(config.subject)
    salt = erasure_salt()
    record_store = store.get_store()
    user_id = resolve_subject(record_store, config.provider, subject, salt=salt)
    if user_id is None:
        before = previous_erasures(record_store, subject)
        record_erasure(record_store, subject, config.requested_by, {"found": 0})
        context.log.info(
            f"nothing of subject {subject[:12]}... is left at {config.provider}"
            + (f" (erased {len(before)} time(s) before)" if before else
               " (never erased here: check the provider and the salt it was hashed with)")
        )  # fmt: skip
        return dg.Output({"found": 0}, metadata={"found": 0, "erased_before": len(before)})
    own = {context.run_id}
    dagster = erase_from_dagster(
        context.instance, config.provider, user_id, wait_s=config.wait_for_runs_s, exclude=own
    )
    if dagster.runs_active:
        raise dg.Failure(
            description=f"{dagster.runs_active} runs naming subject {subject[:12]}... did not "
            f"finish within {config.wait_for_runs_s:.0f} s; nothing was erased yet: launch "
            "the job again with the same config",
            metadata=dagster.counts(),
        )
    client = fhir_server.client() if fhir_server.configured else None
    report = erase_person(
        record_store, output.get(), client, config.provider, user_id,
        requested_by=config.requested_by, salt=salt, record=False,
    )  # fmt: skip
    later = erase_from_dagster(
        context.instance, config.provider, user_id, wait_s=config.wait_for_runs_s, exclude=own
    )
    dagster.add(later)
    counts = {**report.counts, **dagster.counts(), "fhir_server_pending": report.server_pending}
    incomplete = not report.complete or dagster.runs_active
    record_erasure(
        record_store, subject, config.requested_by, counts,
        erasure_id=report.erasure_id, outcome="partial" if incomplete else "ok",
    )  # fmt: skip
    context.log.info(
        f"subject {subject[:12]}... erased: {report.total} rows and resources, "
        f"{dagster.runs_deleted} runs"
    )
    if incomplete:
        problem = report.server_error or (
            "no FHIR server is configured" if client is None else "runs still active"
        )
        raise dg.Failure(
            description=f"erasure incomplete: {report.server_pending} resources may still be on "
            f"the FHIR server, {dagster.runs_active} runs naming the subject still active "
            f"({problem}); launch the job again with the same config",
            metadata=counts,
        )
    return dg.Output(counts, metadata=counts)


@dg.job(
    description="Erase one person (run config: provider, subject hash, requested_by) from the "
    "store, the FHIR output, the FHIR server and Dagster's runs."
)
def erase_person_job() -> None:
    erase_person_op()
