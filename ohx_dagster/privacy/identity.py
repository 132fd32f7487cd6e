"""Who a person is to the product, to which patient their data goes, and who may come in.

The salted subject. HMAC-SHA256(salt, "provider|user_id") in hex (`subject_hash`): what the
`erasures` and `audit_log` tables, the erase job's run config, the connect flow's answers and its
log lines hold instead of a person's id. A Patient id is hashed the same way as
("patient", id) (`patient_subject`). The salt: OHX_ERASURE_SALT (16+ characters, a secret like
OHX_TOKEN_KEY) when set; else one random salt per installation, created on first use in
$OHX_HOME/erasure-salt (mode 0600). Never in the database: a salt beside the hashes would let
anyone who can read the tables test a guessed id. Deployments whose processes do not share
OHX_HOME must set the variable, so that every process computes the same subjects.

One account, one patient. A (provider, provider user id) belongs to exactly one patient: the
`users` row's config names it (fhir_patient_id). `connect_user` (the one way an account arrives:
the connect flow, tests, seeds) refuses, under the person's lock, an account already connected
for another patient (`LinkConflict`, naming both by subject only); nothing is stored. Moving an
account to another patient is a staff decision: `relink` (`ohx users relink`) rewrites the
patient in the config, bumps the person's link generation (HealthSyncConfig.link_generation),
marks every stored day of the person changed (day_versions: version + 1) so that the republish
sensor publishes their whole history again, and writes an audit row with who, when and why, all
in one transaction. The generation is part of the content key of every resource of the person's
data (ohx_dagster.core.ids.content_key), so the republished history is new resources (new ids and
identifiers) under the new patient, and the resources published before, which the data no longer
yields, are published `entered-in-error` with their old subject (publish._withdrawn): the FHIR
way to correct a record filed under the wrong patient, never a subject changed in place. The
Patient the product derived for the person, if any, stays in the output while withdrawn
resources reference it.

Tombstones. An `erasures` row whose `readmitted_at_us` is empty keeps its subject out: every way
a person comes in consults it -- a sync's discovery of a source's people (file exports and the
simulated source re-discover people on every run: `admit_discovered`), `connect_user`, and the
webhook inbox (events of an erased subject are acknowledged to the provider and not stored).
Those left out are counted and logged without their id. `readmit` (`ohx users readmit`) lifts
the tombstone of one subject, audited; the next run or connection brings the person back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.errors import ConfigError, OhxError
from ohx_dagster.core.ids import check_patient_id, check_user_id
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import now_us
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.subjects import (
    SHOWN,
    erasure_salt,
    patient_subject,
    short,
    subject_hash,
)
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import day_versions, erasures, users

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore


log = logging.getLogger("ohx_dagster.privacy.identity")
T = TypeVar("T")


class LinkConflict(OhxError):
    """The account is connected for another patient: connecting it for this one is refused."""


class Erased(OhxError):
    """The person was erased and not re-admitted: nothing of theirs may be stored."""


# -- tombstones ----------------------------------------------------------------------------------


def tombstones(conn: Connection) -> set[str]:
    """The subjects erased and not re-admitted."""
    t = erasures
    query = sa.select(t.c.subject_hash).where(t.c.readmitted_at_us.is_(None)).distinct()
    return set(conn.execute(query).scalars())


def is_erased(conn: Connection, provider: str, user_id: str, *, salt: bytes | None = None) -> bool:
    dead = tombstones(conn)
    if not dead:
        return False  # no tombstone at all: no salt needed
    salt = erasure_salt() if salt is None else salt
    return subject_hash(provider, user_id, salt=salt) in dead


def admit_discovered(
    store: RecordStore, configs: Iterable[HealthSyncConfig], *, salt: bytes | None = None
) -> frozenset[str]:
    """Register the people a source offers (store.add_users) but those whose erasure stands;
    the user ids left out (for the caller to leave out of its run: it says how many, never
    who). People not yet in `users` are checked and added under their locks in one
    transaction, the lock erasure's first step holds while it deletes them and writes their
    tombstone: an erasure running meanwhile either comes first (its tombstone is seen) or after
    (it deletes what was added)."""
    configs = list(configs)
    if not configs:
        return frozenset()
    with store.write() as conn:
        known = {
            (r.provider, r.user_id)
            for r in conn.execute(
                sa.select(users.c.provider, users.c.user_id).where(
                    users.c.provider.in_(sorted({c.provider for c in configs}))
                )
            )
        }
        new = sorted(
            (c for c in configs if (c.provider, c.user_id) not in known),
            key=lambda c: (c.provider, c.user_id),
        )
        for config in new:
            db.lock(conn, "person", config.provider, config.user_id)
        dead = tombstones(conn) if new else set()
        if dead:
            salt = erasure_salt() if salt is None else salt
            kept = [c for c in new if subject_hash(c.provider, c.user_id, salt=salt) not in dead]
        else:
            kept = new
        store.add_users(kept, conn=conn)
    left_out = frozenset(c.user_id for c in new) - {c.user_id for c in kept}
    if left_out:
        log.info(
            "%s: %d erased people left out (their erasure stands until `ohx users readmit`)",
            configs[0].provider,
            len(left_out),
        )
    return left_out


def erased_among(store: RecordStore, provider: str, user_ids: Iterable[str]) -> int:
    """How many of these people of the provider are erased (a count: for messages)."""
    with store.read() as conn:
        dead = tombstones(conn)
    if not dead:
        return 0
    salt = erasure_salt()
    return sum(1 for u in set(user_ids) if subject_hash(provider, u, salt=salt) in dead)


def readmit(
    conn: Connection, provider: str, user_id: str, *, actor: str, reason: str, salt: bytes
) -> int:
    """Lift the person's tombstone (every erasure of their subject); how many erasures it lifted
    (0: they were not erased). Audited in the same transaction."""
    check_user_id(user_id)
    subject = subject_hash(provider, user_id, salt=salt)
    t = erasures
    lifted = int(
        conn.execute(
            t.update()
            .where(t.c.subject_hash == subject, t.c.readmitted_at_us.is_(None))
            .values(readmitted_at_us=now_us())
        ).rowcount
        or 0
    )
    audit.record(
        conn,
        actor=actor,
        action="readmit",
        subject=subject,
        outcome="ok" if lifted else "refused",
        detail=f"provider {provider}; {lifted} erasures lifted; reason: {reason}",
    )
    return lifted


# -- one account, one patient --------------------------------------------------------------------


def current_patient(conn: Connection, provider: str, user_id: str) -> str | None:
    """The patient the account is connected for (None: not in the store)."""
    row = conn.execute(
        sa.select(users.c.config).where(users.c.provider == provider, users.c.user_id == user_id)
    ).scalar_one_or_none()
    if row is None:
        return None
    return HealthSyncConfig.from_json(orjson.loads(row)).fhir_patient_id


def check_admission(conn: Connection, config: HealthSyncConfig, *, salt: bytes | None) -> None:
    """Under the person's lock: raise Erased for an erased subject, LinkConflict for an account
    connected for another patient (messages name subjects only)."""
    provider, user_id = config.provider, config.user_id
    check_user_id(user_id)
    salt = erasure_salt() if salt is None else salt
    subject = subject_hash(provider, user_id, salt=salt)
    if is_erased(conn, provider, user_id, salt=salt):
        raise Erased(
            f"{provider} account {short(subject)} was erased from this service: nothing is "
            "stored for it until staff re-admit it (`ohx users readmit`)"
        )
    patient = current_patient(conn, provider, user_id)
    if patient is not None and patient != config.fhir_patient_id:
        raise LinkConflict(
            f"{provider} account {short(subject)} is already connected for patient "
            f"{short(patient_subject(patient, salt=salt))}; connecting it for patient "
            f"{short(patient_subject(config.fhir_patient_id, salt=salt))} is refused and "
            "nothing changed: if the account belongs to that patient, staff move it with "
            "`ohx users relink`"
        )


@dataclass(frozen=True)
class Relink:
    subject: str
    old_patient: str  # subjects, as the audit row holds them
    new_patient: str
    days: int  # stored days marked changed (the republish sensor publishes them again)


def relink(
    conn: Connection,
    provider: str,
    user_id: str,
    patient: str,
    *,
    actor: str,
    reason: str,
    salt: bytes,
) -> Relink | None:
    """Move the account to another patient (module docstring), in the caller's transaction;
    None when it is not in the store. A move to the patient it already has changes nothing and
    is not audited."""
    check_user_id(user_id)
    check_patient_id(patient, "--patient")
    db.lock(conn, "person", provider, user_id)
    row = conn.execute(
        sa.select(users.c.config).where(users.c.provider == provider, users.c.user_id == user_id)
    ).scalar_one_or_none()
    if row is None:
        return None
    data = orjson.loads(row)
    config = HealthSyncConfig.from_json(data)
    subject = subject_hash(provider, user_id, salt=salt)
    old = patient_subject(config.fhir_patient_id, salt=salt)
    new = patient_subject(patient, salt=salt)
    if config.fhir_patient_id == patient:
        return Relink(subject, old, new, 0)
    conn.execute(
        users.update()
        .where(users.c.provider == provider, users.c.user_id == user_id)
        .values(
            config=orjson.dumps(
                {**data, "fhir_patient_id": patient, "link_generation": config.link_generation + 1}
            ).decode()
        )
    )
    v = day_versions
    days = int(
        conn.execute(
            v.update()
            .where(v.c.provider == provider, v.c.user_id == user_id)
            .values(version=v.c.version + 1, changed_us=now_us())
        ).rowcount
        or 0
    )
    audit.record(
        conn,
        actor=actor,
        action="relink",
        subject=subject,
        outcome="ok",
        detail=f"provider {provider}; patient {short(old)} -> {short(new)}; {days} days to "
        f"republish; reason: {reason}",
    )
    return Relink(subject, old, new, days)


# -- Dagster names people by subject -------------------------------------------------------------
# Run tags (`ohx/subjects`), asset and check metadata, log lines and failures of the product's
# runs name people by their salted subject, never by id (issue 19): erasure then has nothing of
# them to chase in Dagster's storage. A run resolves subjects back to people through the store,
# the one place ids live (`match_subjects`); what it reports is passed through `redact`.

# What an operator may type for a person in `ohx/subjects`: the whole subject, or its first
# SHOWN hex digits at least (what metadata and log lines show).
SUBJECT_TEXT: Final = re.compile(rf"[0-9a-f]{{{SHOWN},64}}")


def match_subjects(
    provider: str, user_ids: Iterable[str], subjects: Iterable[str], *, salt: bytes
) -> tuple[dict[str, str], frozenset[str]]:
    """The people of `user_ids` (one provider's) that the subjects name, as {subject: user_id}
    (a subject as given: whole, or a prefix of SHOWN+ hex digits), and the subjects that name
    nobody. A prefix shared by two people is refused (the error names the prefix only)."""
    wanted = set(subjects)
    found: dict[str, str] = {}
    if not wanted:
        return found, frozenset()
    prefixes = {len(s) for s in wanted}
    for user_id in user_ids:
        digest = subject_hash(provider, user_id, salt=salt)
        for length in prefixes:
            given = digest[:length]
            if given not in wanted:
                continue
            if given in found and found[given] != user_id:
                raise ConfigError(
                    f"subject {given} names more than one {provider} person: give more of its "
                    "64 hex digits"
                )
            found[given] = user_id
    return found, frozenset(wanted - set(found))


def _id_pattern(user_ids: Iterable[str]) -> re.Pattern[str] | None:
    """The ids as whole tokens (not inside a longer id), raw or JSON-escaped, longest first."""
    forms = {f for u in user_ids if u for f in (u, orjson.dumps(u).decode()[1:-1])}
    if not forms:
        return None
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def redact(value: T, provider: str, user_ids: Iterable[str], *, salt: bytes) -> T:
    """`value` (a string, or dicts, lists and tuples of them: metadata, a log line, an error)
    with every id of `user_ids` replaced by the person's shown subject, keys included."""
    ids = {u for u in user_ids if u}
    pattern = _id_pattern(ids)
    if pattern is None:
        return value
    shown: dict[str, str] = {}
    for user_id in ids:
        subject = short(subject_hash(provider, user_id, salt=salt))
        shown[user_id] = shown[orjson.dumps(user_id).decode()[1:-1]] = subject

    def walk(item: object) -> object:
        if isinstance(item, str):
            return pattern.sub(lambda m: shown[m.group(0)], item)
        if isinstance(item, Mapping):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return type(item)(walk(v) for v in item)
        return item

    return walk(value)  # type: ignore[return-value]
