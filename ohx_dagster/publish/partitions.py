"""Publishing one day partition: statistics and FHIR for the people whose data changed, one bucket
of people at a time, each bucket read from the store once.

People are split into FILE_BUCKETS buckets by a stable hash; a bucket's resources are one NDJSON
file per resource type. A run publishes only the buckets of people whose day changed since it was
last published (store.day_versions), so a webhook for one person costs that person's bucket, not
the partition, and memory stays flat however many people the partition holds.

Per bucket, in this order:
1. read the bucket's people's chunks and measurements around the day, and their day versions, in
   one snapshot;
2. compute hourly and daily statistics, and the FHIR resources; a resource the bucket published
   before and no longer produces (its data was deleted at the provider) is published again as
   entered-in-error;
3. validate a sample (a bucket that fails is not published: the previous version stays);
4. write the files (named by their content), then, in one transaction under the partition's lock:
   the aggregates, the file rows, the published versions, and the manifest naming exactly the
   files of this version. A render older than what is already published is dropped there.

Each partition publishes every person's local day of its date (ohx_dagster/core/localdays.py), so a
sample is published in exactly one partition, and a daily aggregate counts the whole day however
many UTC days hold it.

Status: a person's resources of the day stay `preliminary` until the coverage ledger holds their
whole local day for every type they sync and the provider's re-sync horizon has passed since the
day ended (late uploads may still change them), then `final`. A sample that arrives after that
re-publishes the day: the same ids, and resources that changed say `amended` (FHIR: changed
after being final).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

import orjson
import pandas as pd
import sqlalchemy as sa

from ohx_dagster.core import coverage as cov
from ohx_dagster.core.glucose import PERIOD_DAYS as CGM_PERIODS
from ohx_dagster.core.localdays import EPOCH_ORDINAL, MINUTE_US, Calendar
from ohx_dagster.core.models import AggregationLevel, HealthDataType, HealthSyncConfig
from ohx_dagster.core.times import DAY_US, HOUR_US, from_us, iso_us, now_us, to_us, utc_day
from ohx_dagster.fhir.common import (
    entered_in_error,
    is_clinical_patient,
    is_withdrawn,
    referenced,
)
from ohx_dagster.fhir.output import FhirOutput, OutputFile, file_name, ndjson
from ohx_dagster.fhir.partition import BucketData, bucket_resources, read_window
from ohx_dagster.fhir.validation import validate_output, validate_resources
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.subjects import erasure_salt
from ohx_dagster.publish import aggregate
from ohx_dagster.publish.subscription_events import record_events
from ohx_dagster.storage import db, record_tables
from ohx_dagster.storage.schema import aggregates, day_versions, fhir_changes, fhir_files, users
from ohx_dagster.storage.store import RecordStore, history_start
from ohx_dagster.sync.shards import Shard

FILE_BUCKETS: Final = 64
CGM_DAYS: Final = max(CGM_PERIODS)
CGM: Final = HealthDataType.INTERSTITIAL_GLUCOSE.value
WITHDRAWABLE: Final = frozenset({"Observation", "DiagnosticReport"})
WITHDRAWN_TYPES: Final = WITHDRAWABLE | {"DeviceAssociation"}

Validate = Callable[[list[dict[str, Any]]], list[str]]
# FHIR validation takes milliseconds a resource: each published bucket is validated on a
# stratified sample of its resources (every type and profile) before it is published.
VALIDATION_SAMPLE: Final = 12


def validate_sample(resources: list[dict[str, Any]]) -> list[str]:
    """The R5 validation every publisher passes as `validate` (the publish step of Dagster's
    runs, `ohx import`): a stratified sample of VALIDATION_SAMPLE resources of the bucket."""
    return [str(p) for p in validate_resources(resources, limit=VALIDATION_SAMPLE)]


def check_output(
    resources: list[dict[str, Any]],
    configs: Mapping[str, HealthSyncConfig],
    validate: Validate | None,
) -> list[str]:
    """Problems of a bucket's resources: every reference resolves inside them (or to a clinical
    system's Patient: a person's, or the one a withdrawn resource was filed under before the
    account was relinked), ids and identifiers are unique, and a sample validates against R5."""
    external = [f"Patient/{c.fhir_patient_id}" for c in configs.values() if is_clinical_patient(c)]
    external += sorted(
        {
            r["subject"]["reference"]
            for r in resources
            if is_withdrawn(r)
            and str(r.get("subject", {}).get("reference", "")).startswith("Patient/")
        }
    )
    problems = [str(p) for p in validate_output(resources, external=external)]
    if validate is not None:
        problems += validate(resources)
    return problems


def _owner(resource: dict[str, Any]) -> str:
    """The user whose resource it is (its content key, or its person identifier)."""
    from ohx_dagster.fhir.delivery.outbox import owner

    return owner(resource)[1]


def bucket_of(provider: str, user_id: str) -> int:
    digest = hashlib.blake2b(f"fhir\x00{provider}\x00{user_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % FILE_BUCKETS


def partition_key(day: date, key: str) -> str:
    return f"{day.isoformat()}|{key}"


def partition_dir(day: date, key: str) -> str:
    return f"{day.isoformat()}/{key}"


def final_at(day: date, config: HealthSyncConfig, horizon: timedelta) -> datetime:
    """When a person's local day can no longer change by time alone: it is over and the
    provider's re-sync horizon has passed (for records dated by their own offset, the day is
    over on every clock: UTC-12 included)."""
    return from_us(day_extent(day, config)[1]) + horizon


def day_extent(day: date, config: HealthSyncConfig, data_type: str | None = None) -> cov.Interval:
    """The instants a person's local day `day` can hold (of one type, or of any): their zone's
    day, or, for types whose records carry their own offset, that day on any clock."""
    calendar = Calendar.of(config)
    window = calendar.day_window(day)
    owned = calendar.own_offsets if data_type is None else calendar.own_offsets & {data_type}
    if not owned:
        return window
    midnight = (day.toordinal() - EPOCH_ORDINAL) * DAY_US
    return min(window[0], midnight - 14 * HOUR_US), max(window[1], midnight + DAY_US + 12 * HOUR_US)


def is_final(
    day: date,
    config: HealthSyncConfig,
    *,
    now: datetime,
    horizon: timedelta,
    covered: Mapping[str, Sequence[cov.Interval]],
    refused: Iterable[str] = (),
) -> bool:
    """Whether a person's local day is final: `final_at` has passed, and the coverage ledger
    holds the whole day for every type it keeps for them (enabled, not refused). A person whose
    data came without a ledger (nothing asked of a provider) is final by time alone."""
    if now < final_at(day, config, horizon):
        return False
    enabled = {t.value for t in config.enabled_types} - set(refused)
    zone_day = Calendar.of(config).day_window(day)
    for kind, spans in covered.items():
        if kind not in enabled:
            continue
        start, end = day_extent(day, config, kind)
        # Before the person's history begins (the ledger's first instant) there is nothing to
        # wait for (the early hours of the day on clocks ahead of their zone).
        first = min((s for s, _ in spans), default=start)
        if cov.gaps((max(start, min(first, zone_day[0])), end), cov.normalize(spans)):
            return False
    return True


def finality(
    store: RecordStore,
    provider: str,
    day: date,
    configs: Mapping[str, HealthSyncConfig],
    *,
    now: datetime,
    horizon: timedelta,
) -> dict[str, bool]:
    """`is_final` of each person's day, from one read of the ledger."""
    due = {u: c for u, c in configs.items() if now >= final_at(day, c, horizon)}
    found = dict.fromkeys(configs, False)
    if not due:
        return found
    ledger = store.coverage(provider, due)
    refused = store.refused_types_of(provider, due)
    for user_id, config in due.items():
        covered = {t: spans for (u, t), spans in ledger.items() if u == user_id}
        found[user_id] = is_final(day, config, now=now, horizon=horizon, covered=covered,
                                  refused=refused[user_id])  # fmt: skip
    return found


def summary_finality(
    store: RecordStore,
    provider: str,
    day: date,
    configs: Mapping[str, HealthSyncConfig],
    final: Mapping[str, bool],
    *,
    now: datetime,
) -> dict[str, bool]:
    """Whether each person's 14-day CGM summary ending on `day` is final: their day is, and the
    CGM ledger holds every earlier day of the period that their sync will ever ask for (from
    store.history_start), so a backfill that reached the later days first publishes the
    summary preliminary until the earlier ones are in. Without a CGM ledger (imported
    readings) or with CGM refused, the day's finality stands."""
    found = {u: bool(final.get(u, False)) for u in configs}
    waiting = [u for u, is_final in found.items() if is_final]
    ledger = store.coverage(provider, waiting) if waiting else {}
    kept = {u: configs[u] for u in waiting if (u, CGM) in ledger}
    if not kept:
        return found
    refused = store.refused_types_of(provider, kept)
    connected = store.connected_at(provider, kept)
    for user_id, config in kept.items():
        if CGM in refused[user_id] or user_id not in connected:
            continue
        first = Calendar.of(config).day_window(day - timedelta(days=CGM_DAYS - 1))[0]
        floor = to_us(history_start(config, connected[user_id], now))
        period = (max(first, floor), day_extent(day, config, CGM)[1])
        if period[0] < period[1] and cov.gaps(period, cov.normalize(ledger[(user_id, CGM)])):
            found[user_id] = False
    return found


@dataclass
class PublishReport:
    day: date
    key: str
    buckets: list[int] = field(default_factory=list)
    stale_buckets: list[int] = field(default_factory=list)
    invalid_buckets: dict[int, list[str]] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    resources_by_type: Counter = field(default_factory=Counter)
    withdrawn: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    count_mismatches: list[str] = field(default_factory=list)
    preliminary_users: list[str] = field(default_factory=list)
    hourly_frames: list[pd.DataFrame] = field(default_factory=list)
    daily_frames: list[pd.DataFrame] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def resources(self) -> int:
        return sum(self.resources_by_type.values())


def _published(
    conn: sa.Connection, provider: str, day: date, user_ids: Iterable[str]
) -> dict[str, tuple[int, bool]]:
    t = day_versions
    query = sa.select(t.c.user_id, t.c.published_version, t.c.published_final).where(
        t.c.provider == provider, t.c.day == day.isoformat(), t.c.user_id.in_(sorted(user_ids))
    )
    return {
        r.user_id: (int(r.published_version), bool(r.published_final)) for r in conn.execute(query)
    }


def people_to_publish(
    store: RecordStore,
    provider: str,
    day: date,
    configs: Mapping[str, HealthSyncConfig],
    *,
    now: datetime,
    horizon: timedelta,
    force: bool,
) -> set[str]:
    """Of these people, those whose day partition must be published: changed since last time,
    or now final while published preliminary (everyone in `configs`, when `force`)."""
    if force:
        return set(configs)
    with store.read() as conn:
        versions = store.day_versions(conn, provider, day, configs)
        published = _published(conn, provider, day, configs)
    due = set()
    waiting = {u: configs[u] for u, (_, done_final) in published.items() if not done_final}
    final = finality(store, provider, day, waiting, now=now, horizon=horizon)
    for user_id, version in versions.items():
        done_version, done_final = published.get(user_id, (0, False))
        if version > done_version or (final.get(user_id, False) and not done_final):
            due.add(user_id)
    return due


def _read_bucket(
    store: RecordStore, provider: str, day: date, configs: Mapping[str, HealthSyncConfig]
) -> tuple[BucketData, dict[str, int]]:
    window = read_window(day)
    start, end = to_us(window.start), to_us(window.end)
    with store.read(snapshot=True) as conn:
        versions = store.day_versions(conn, provider, day, configs)
        found = record_tables.read_chunks(conn, provider, start, end, user_ids=configs)
        sparse = record_tables.read_measurements(conn, provider, start, end, user_ids=configs)
        # The 14-day CGM summary's earlier days (one small read: 288 readings a day).
        history = record_tables.read_chunks(
            conn, provider, start - (CGM_DAYS - 1) * DAY_US, start, user_ids=configs,
            data_types=[HealthDataType.INTERSTITIAL_GLUCOSE.value],
        )  # fmt: skip
    return BucketData(provider, day, configs, found, sparse, history), versions


def _withdrawn(
    previous: Iterable[dict[str, Any]], current_ids: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Resources published before that the data no longer yields, as entered-in-error: clinical
    ones, and a DeviceAssociation (it names the patient: after `ohx users relink`, the one of
    the person's former patient)."""
    gone = []
    for resource in previous:
        key = (resource["resourceType"], resource["id"])
        if resource["resourceType"] in WITHDRAWN_TYPES and key not in current_ids:
            gone.append(entered_in_error(resource))
    return gone


AFTER_FINAL: Final = frozenset({"final", "amended", "corrected"})


def _amended(
    resources: list[dict[str, Any]], previous: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Resources published final before whose content changed since (a sample that arrived
    after the day was final) say `amended`, as FHIR has it; once amended, a resource stays so
    while its content is the same."""
    earlier = {
        (r["resourceType"], r["id"]): r
        for r in previous
        if r["resourceType"] in WITHDRAWABLE and r.get("status") in AFTER_FINAL
    }
    if not earlier:
        return resources
    marked = []
    for resource in resources:
        before = earlier.get((resource["resourceType"], resource["id"]))
        if before is not None and resource.get("status") == "final":
            same = {**before, "status": "final"} == resource
            if not same or before["status"] != "final":
                resource = {**resource, "status": "amended" if not same else before["status"]}
        marked.append(resource)
    return marked


def _keep_referenced(
    resources: list[dict[str, Any]], previous: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The resources, plus the previous ones they reference and no longer include: the Patient
    and Devices of a person whose every Observation of the day was withdrawn, so references in
    the output still resolve inside it."""
    present = {f"{r['resourceType']}/{r['id']}" for r in resources}
    earlier = {f"{r['resourceType']}/{r['id']}": r for r in previous}
    kept = list(resources)
    wanted = referenced(kept) - present
    while wanted:
        found = [earlier[key] for key in sorted(wanted) if key in earlier]
        kept += found
        present |= {f"{r['resourceType']}/{r['id']}" for r in found}
        wanted = referenced(found) - present
    return kept


def _keep_provenance(
    resources: list[dict[str, Any]], previous: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The previous Provenance when the clinical resources are exactly those published before: a
    run that changes no data (a forced re-publish) then changes no file and sends nothing."""

    def clinical(items: list[dict[str, Any]]) -> list[bytes]:
        return sorted(ndjson([r]) for r in items if r["resourceType"] != "Provenance")

    def provenance_ids(items: list[dict[str, Any]]) -> set[str]:
        return {r["id"] for r in items if r["resourceType"] == "Provenance"}

    if not previous or clinical(resources) != clinical(previous):
        return resources
    if provenance_ids(previous) != provenance_ids(resources):  # a person's Provenance is missing
        return resources
    return [r for r in resources if r["resourceType"] != "Provenance"] + [
        r for r in previous if r["resourceType"] == "Provenance"
    ]


def _previous_files(conn: sa.Connection, key: str, bucket: int) -> list[str]:
    t = fhir_files
    query = sa.select(t.c.name).where(t.c.partition_key == key, t.c.bucket == bucket)
    return list(conn.execute(query).scalars())


def _erased(conn: sa.Connection, provider: str, configs: Mapping[str, HealthSyncConfig]) -> bool:
    query = sa.select(users.c.user_id).where(
        users.c.provider == provider, users.c.user_id.in_(sorted(configs))
    )
    return len(set(conn.execute(query).scalars())) < len(configs)


def _write_aggregates(
    conn: sa.Connection,
    provider: str,
    day: date,
    configs: Mapping[str, HealthSyncConfig],
    hourly: pd.DataFrame,
    daily: pd.DataFrame,
) -> None:
    """The bucket's people's buckets of their local day become exactly these rows: their hours
    inside it, and their daily row of this date in whatever zone it was cut before (a zone
    changed since: the old rows go)."""
    t = aggregates
    midnight = to_us(utc_day(day).start)
    any_zone = (midnight - 14 * HOUR_US, midnight + 12 * HOUR_US)  # UTC+14 .. UTC-12
    local_midnight = (day.toordinal() - EPOCH_ORDINAL) * DAY_US  # day `day` on a naive clock
    for user_id, config in configs.items():
        calendar = Calendar.of(config)
        start, end = calendar.day_window(day)
        person = (t.c.provider == provider) & (t.c.user_id == user_id)
        own = t.c.data_type.in_(sorted(calendar.own_offsets))
        # An hour is the day's when it begins inside it: on the zone's clock, or, for records
        # with their own offset, on the clock of the offset it is written with.
        local_start = t.c.bucket_start_us + sa.cast(t.c.utc_offset_min, sa.BigInteger) * MINUTE_US
        on_zone_clock = sa.and_(~own, t.c.bucket_start_us >= start, t.c.bucket_start_us < end)
        on_own_clock = sa.and_(
            own, local_start >= local_midnight, local_start < local_midnight + DAY_US
        )
        conn.execute(
            t.delete().where(
                person,
                t.c.level == AggregationLevel.HOURLY.value,
                sa.or_(on_zone_clock, on_own_clock),
            )
        )
        conn.execute(
            t.delete().where(
                person,
                t.c.level == AggregationLevel.DAILY.value,
                t.c.bucket_start_us >= any_zone[0],
                t.c.bucket_start_us <= any_zone[1],
            )
        )
    columns = aggregate.AGGREGATE_COLUMNS
    for frame in (hourly, daily):
        if not frame.empty:
            db.upsert(conn, t, db.plain_rows(frame[columns]))


def _commit_bucket(
    store: RecordStore,
    output: FhirOutput,
    *,
    provider: str,
    key: str,
    day: date,
    bucket: int,
    files: list[OutputFile],
    versions: Mapping[str, int],
    final: Mapping[str, bool],
    configs: Mapping[str, HealthSyncConfig],
    hourly: pd.DataFrame,
    daily: pd.DataFrame,
    bodies: Mapping[str, bytes] | None = None,
    exported: Callable[[sa.Connection], None] | None = None,
    expected: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """Make the bucket's new files part of the partition; None if a newer render already is.

    Newer: any person of the bucket published at a version above the one this render read
    (none read = 0: a person whose first data arrived after this render's snapshot must not be
    published away by it). The files were written before the lock; another run's garbage
    collection may have removed one since (it was nobody's yet), so under the lock each is
    written again if it is not there. `exported` writes the audit rows of the commit in its
    transaction (an export is never committed without them). `expected`: a partial render's
    files of the version it kept the other people's resources from; another version committed
    since makes this render stale too."""
    partition = partition_key(day, key)
    directory = partition_dir(day, key)
    t, v = fhir_files, day_versions
    with store.write() as conn:
        db.lock(conn, "fhir", partition)
        published = _published(conn, provider, day, configs)
        if any(published.get(u, (0, False))[0] > versions.get(u, 0) for u in configs):
            return None
        if _erased(conn, provider, configs):  # erased since this bucket was read: render again
            return None
        if expected is not None and sorted(_previous_files(conn, partition, bucket)) != sorted(
            expected
        ):
            return None
        for f in files:
            if bodies and f.name in bodies and not output.exists(f"{directory}/{f.name}"):
                output.write(f"{directory}/{f.name}", bodies[f.name])
        _write_aggregates(conn, provider, day, configs, hourly, daily)
        conn.execute(t.delete().where(t.c.partition_key == partition, t.c.bucket == bucket))
        stamp = now_us()
        if files:
            conn.execute(
                t.insert(),
                [
                    {"partition_key": partition, "bucket": bucket, "resource_type": f.resource_type,
                     "name": f.name, "count": f.count, "published_us": stamp, "enqueued": False}
                    for f in files
                ],
            )  # fmt: skip
        statement = db.insert_for(conn)(v)
        rows = [
            {"provider": provider, "user_id": u, "day": day.isoformat(), "version": n,
             "published_version": n, "published_final": final.get(u, False),
             "published_us": stamp}
            for u, n in versions.items()
        ]  # fmt: skip
        if rows:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["provider", "user_id", "day"],
                    set_={
                        "published_version": statement.excluded.published_version,
                        "published_final": statement.excluded.published_final,
                        "published_us": statement.excluded.published_us,
                    },
                ),
                rows,
            )
        if exported is not None:
            exported(conn)
        current = [
            # r.count: the column, which SQLAlchemy's Row serves (its stubs: Sequence.count).
            OutputFile(r.resource_type, r.bucket, r.name, r.count)  # type: ignore[arg-type]
            for r in conn.execute(sa.select(t).where(t.c.partition_key == partition))
        ]
        return output.write_manifest(
            partition_dir(day, key),
            current,
            export_time=iso_us(stamp) or "",
            request=f"urn:ohx:partition:{partition}",
        )


def _changed(
    resources: Sequence[dict[str, Any]], previous: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The resources of a render that its bucket's committed version does not hold as they are
    (new, or with other content): what `fhir_changes` records."""
    before = {(r["resourceType"], r["id"]): r for r in previous}
    return [r for r in resources if before.get((r["resourceType"], r["id"])) != r]


def _record_changes(
    changed: Sequence[dict[str, Any]], partition: str, bucket: int
) -> Callable[[sa.Connection], None]:
    from ohx_dagster.fhir.delivery.outbox import owner

    rows = []
    held = {(r["resourceType"], r["id"]): r for r in changed}
    for resource in changed:
        provider, user_id = owner(resource)
        if user_id:
            digest = hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS))
            rows.append({"provider": provider, "user_id": user_id, "partition_key": partition,
                         "bucket": bucket, "resource_type": resource["resourceType"],
                         "resource_id": resource["id"], "digest": digest.hexdigest()})  # fmt: skip

    def write(conn: sa.Connection) -> None:
        if not rows:
            return
        # Stamped under the partition's lock, as the commit ends: a Bulk Data export that starts
        # reading a moment after its transactionTime sees every change stamped before it
        # (ohx_dagster/fhirapi/bulk.py), whatever the commit waited for. A resource published
        # again with the same content (on another day) keeps its time and moves to this file.
        stamp = now_us()
        # Before the upsert: an event is a change of content (the stored digest differs).
        record_events(conn, rows, held)
        statement = db.insert_for(conn)(fhir_changes)
        new = statement.excluded
        kept = sa.case((fhir_changes.c.digest == new.digest, fhir_changes.c.at_us), else_=new.at_us)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["resource_type", "resource_id"],
                set_={"provider": new.provider, "user_id": new.user_id,
                      "partition_key": new.partition_key, "bucket": new.bucket,
                      "digest": new.digest, "at_us": kept},
            ),
            [{**row, "at_us": stamp} for row in rows],
        )  # fmt: skip

    return write


def _both(
    first: Callable[[sa.Connection], None], second: Callable[[sa.Connection], None]
) -> Callable[[sa.Connection], None]:
    def write(conn: sa.Connection) -> None:
        first(conn)
        second(conn)

    return write


def _exports(
    provider: str, resources: Sequence[dict], configs: Mapping[str, HealthSyncConfig], where: str
) -> dict[str, tuple[str, str]]:
    """The audit rows of a bucket's files: per person whose resources they hold, how many."""
    from ohx_dagster.fhir.delivery.outbox import owner

    held: Counter[str] = Counter()
    withdrawn: Counter[str] = Counter()
    for resource in resources:
        source, user_id = owner(resource)
        if source == provider and user_id in configs:
            held[user_id] += 1
            withdrawn[user_id] += is_withdrawn(resource)
    return {
        u: (
            "ok",
            f"FHIR NDJSON {where}: {n:,} resources"
            + (f" ({withdrawn[u]:,} entered-in-error)" if withdrawn[u] else ""),
        )
        for u, n in held.items()
    }


def publish_partition(
    store: RecordStore,
    output: FhirOutput,
    *,
    provider: str,
    key: str,
    shard: Shard,
    day: date,
    scope: Iterable[str] | None,
    now: datetime,
    horizon: timedelta,
    force: bool = False,
    validate: Validate | None = None,
    run_id: str = "",
    publish_ambiguous: bool = False,
    actor: str | None = None,
) -> PublishReport:
    """Publish the partition's buckets whose people changed (of `scope` when given). Readings a
    shared device cannot attribute are left out unless `publish_ambiguous`.

    Audited (ohx_dagster/privacy/audit.py, action `export`, by `actor`: default "dagster run
    <run_id>"): one row per person whose resources a committed bucket holds, in the transaction that
    commits it (ok: how many resources, how many withdrawn, where); one per person due in a bucket
    that
    failed validation (failed: nothing of it published)."""
    report = PublishReport(day, key)
    actor = actor or (f"dagster run {run_id}" if run_id else "publish")
    salt = erasure_salt()

    def exported(rows: Mapping[str, tuple[str, str]]) -> Callable[[sa.Connection], None]:
        def write(conn: sa.Connection) -> None:
            audit.record_people(
                conn, actor=actor, action="export", provider=provider, outcomes=rows, salt=salt
            )

        return write

    people = {
        p.config.user_id: p.config for p in store.people(provider) if shard.holds(p.config.user_id)
    }
    wanted = {u: c for u, c in people.items() if scope is None or u in set(scope)}
    due = people_to_publish(store, provider, day, wanted, now=now, horizon=horizon, force=force)
    by_bucket: dict[int, dict[str, HealthSyncConfig]] = defaultdict(dict)
    for user_id, config in people.items():
        by_bucket[bucket_of(provider, user_id)][user_id] = config
    directory = partition_dir(day, key)
    for bucket in sorted({bucket_of(provider, u) for u in due}):
        everyone = by_bucket[bucket]
        with store.read() as conn:
            previous_names = _previous_files(conn, partition_key(day, key), bucket)
        # The committed version whole, or not at all: with a file of it gone (an output moved or
        # restored, objects expired), a part of it would pass for all of it.
        previous = (
            [r for name in previous_names for r in output.read_resources(f"{directory}/{name}")]
            if all(output.exists(f"{directory}/{name}") for name in previous_names)
            else []
        )
        # Only the bucket's due people are rendered again: the others did not change, and their
        # resources are taken as the committed version holds them (a webhook for one person
        # costs that person, not the bucket's 150). A first version, a version whose files are
        # gone and a forced publish render everyone.
        partial = bool(previous) and not force
        configs = {u: c for u, c in everyone.items() if u in due} if partial else everyone
        # Kept as published: the bucket's people who are not due. Whoever else the committed
        # version holds (someone erased or gone since) goes through the render as before.
        unchanged = set(everyone) - set(configs)
        kept = [r for r in previous if _owner(r) in unchanged]
        previous = [r for r in previous if _owner(r) not in unchanged]
        data, versions = _read_bucket(store, provider, day, configs)
        if not publish_ambiguous:
            data = data.without_ambiguous()
        # From the chunks as read: no row per sample (aggregate.hourly/daily of the records).
        hourly, daily, mismatches = aggregate.bucket_statistics(
            provider, data.chunks, data.sparse, dict(configs), day
        )
        report.count_mismatches += mismatches
        final = finality(store, provider, day, configs, now=now, horizon=horizon)
        statuses = {u: "final" if is_final else "preliminary" for u, is_final in final.items()}
        summaries = summary_finality(store, provider, day, configs, final, now=now)
        resources = bucket_resources(
            data, hourly, daily, statuses, run_id=run_id, recorded_us=to_us(now),
            summary_statuses={u: "final" if f else "preliminary" for u, f in summaries.items()},
        )  # fmt: skip
        ids = {(r["resourceType"], r["id"]) for r in resources}
        withdrawn = _withdrawn(previous, ids)
        resources = _amended(resources, previous)
        resources = _keep_referenced(resources + withdrawn, previous)
        resources = _keep_provenance(resources, previous)
        changed = _changed(resources, previous)
        # The sample validated is of what this render made; references are checked on the
        # whole bucket.
        problems = check_output(resources, configs, validate)
        if kept:
            problems += check_output(kept + resources, everyone, None)
            resources = kept + resources
        where = f"{output.root_url.rstrip('/')}/{directory}/ bucket {bucket}"
        if problems:
            report.invalid_buckets[bucket] = problems
            failed = {
                u: ("failed", f"FHIR NDJSON {where}: not published, {len(problems)} problem(s)")
                for u in configs
                if u in due
            }
            with store.write() as conn:
                exported(failed)(conn)
            continue
        by_type: dict[str, list[dict]] = defaultdict(list)
        # In id order: a partial and a whole render of the same data write the same bytes.
        for resource in sorted(resources, key=lambda r: r["id"]):
            by_type[resource["resourceType"]].append(resource)
        files = []
        bodies: dict[str, bytes] = {}
        for resource_type, items in sorted(by_type.items()):
            body = ndjson(items)
            name = file_name(resource_type, bucket, body)
            output.write_fresh(f"{directory}/{name}", body)
            files.append(OutputFile(resource_type, bucket, name, len(items)))
            bodies[name] = body
        exports = _exports(provider, resources, configs, where)
        manifest = _commit_bucket(
            store,
            output,
            provider=provider,
            key=key,
            day=day,
            bucket=bucket,
            files=files,
            bodies=bodies,
            versions=versions,
            final=final,
            configs=configs,
            hourly=hourly,
            daily=daily,
            exported=_both(
                exported(exports),
                _record_changes(changed, partition_key(day, key), bucket),
            ),
            expected=previous_names if partial else None,
        )
        if manifest is None:
            report.stale_buckets.append(bucket)
            continue
        report.manifest = manifest
        report.buckets.append(bucket)
        report.users += sorted(configs)
        report.preliminary_users += sorted(u for u, f in final.items() if not f)
        report.withdrawn += len(withdrawn)
        report.resources_by_type.update({t: len(items) for t, items in by_type.items()})
        report.hourly_rows += len(hourly)
        report.daily_rows += len(daily)
        report.hourly_frames.append(hourly)
        report.daily_frames.append(daily)
        seen = Counter(r["id"] for r in resources)
        report.duplicate_ids += [i for i, n in seen.items() if n > 1]
    if report.buckets:
        # Under the partition's lock: a run between writing its files and committing them
        # (above) finds any of them removed here and writes it again.
        partition = partition_key(day, key)
        with store.write() as conn:
            db.lock(conn, "fhir", partition)
            keep = list(
                conn.execute(
                    sa.select(fhir_files.c.name).where(fhir_files.c.partition_key == partition)
                ).scalars()
            )
            output.collect_garbage(directory, keep)
    return report
