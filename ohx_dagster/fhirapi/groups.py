"""Groups: the cohorts staff define for `Group/[id]/$export` (`ohx fhir groups add|list|remove`).

A group is one of
- everyone: every person in the store when the export runs;
- providers: the people of some providers (e.g. everyone on Oura and Withings);
- people: a list of people, named by their Patient id (what a hospital knows them by), kept as
  provider + user id rows in `fhir_group_members`, so erasing a person takes them out of every
  group with the rest of their rows.
Membership is resolved when an export runs: a person connected after the group was defined is in
an `everyone` or `providers` group's next export.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
import sqlalchemy as sa

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import now_us
from ohx_dagster.privacy import audit
from ohx_dagster.providers.registry import KNOWN_SOURCES
from ohx_dagster.storage.schema import fhir_group_members, fhir_groups, users

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

# A FHIR id (R5 datatype id), which the group's URL carries.
GROUP_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MAX_DESCRIPTION: Final = 500


@dataclass(frozen=True, slots=True)
class Group:
    group_id: str
    kind: str  # everyone, providers, people
    providers: tuple[str, ...]
    members: int  # people listed (kind people)
    description: str

    def describe(self) -> str:
        if self.kind == "everyone":
            return "everyone"
        if self.kind == "providers":
            return "the people of " + ", ".join(self.providers)
        return f"{self.members} people"


def _configs(conn: sa.Connection) -> list[HealthSyncConfig]:
    rows = conn.execute(sa.select(users.c.config)).scalars()
    return [HealthSyncConfig.from_json(orjson.loads(row)) for row in rows]


def add_group(
    store: RecordStore,
    group_id: str,
    *,
    everyone: bool = False,
    providers: Sequence[str] = (),
    patients: Sequence[str] = (),
    description: str = "",
    actor: str,
) -> Group:
    """Define a group by exactly one of: everyone, providers, Patient ids."""
    if GROUP_ID.fullmatch(group_id) is None:
        raise ValidationError("GROUP", group_id, "1-64 letters, digits, '-' or '.' (a FHIR id)")
    if sum((everyone, bool(providers), bool(patients))) != 1:
        raise ValidationError(
            "group", group_id, "exactly one of --everyone, --provider or --patient"
        )
    unknown = sorted(set(providers) - set(KNOWN_SOURCES))
    if unknown:
        raise ValidationError("--provider", unknown[0], f"one of {', '.join(KNOWN_SOURCES)}")
    if len(description) > MAX_DESCRIPTION:
        raise ValidationError("--description", description[:40] + "...", "at most 500 characters")
    kind = "everyone" if everyone else "providers" if providers else "people"
    with store.write() as conn:
        if conn.execute(sa.select(fhir_groups.c.group_id).where(
                fhir_groups.c.group_id == group_id)).first():  # fmt: skip
            raise ValidationError("GROUP", group_id, "a new group id (it exists: remove it first)")
        by_patient = {c.fhir_patient_id: c for c in _configs(conn)}
        missing = [p for p in patients if p.removeprefix("Patient/") not in by_patient]
        if missing:
            raise ValidationError("--patient", missing[0], "the Patient id of a person here")
        members = {
            (c.provider, c.user_id)
            for c in (by_patient[p.removeprefix("Patient/")] for p in patients)
        }
        chosen = orjson.dumps(sorted(set(providers))).decode()
        conn.execute(
            fhir_groups.insert().values(
                group_id=group_id, kind=kind, providers=chosen, description=description,
                added_at_us=now_us(), added_by=actor,
            )
        )  # fmt: skip
        if members:
            conn.execute(
                fhir_group_members.insert(),
                [{"group_id": group_id, "provider": p, "user_id": u} for p, u in sorted(members)],
            )
        audit.record(
            conn, actor=actor, action="group-add", detail=f"{group_id}: {kind}, {len(members)}"
        )
    return Group(group_id, kind, tuple(sorted(set(providers))), len(members), description)


def _group(row: sa.Row, members: int) -> Group:
    providers = tuple(orjson.loads(row.providers))
    return Group(row.group_id, row.kind, providers, members, row.description)


def list_groups(store: RecordStore) -> list[Group]:
    m = fhir_group_members
    with store.read() as conn:
        counts: dict[str, int] = dict(
            conn.execute(sa.select(m.c.group_id, sa.func.count()).group_by(m.c.group_id)).all()
        )
        rows = conn.execute(sa.select(fhir_groups).order_by(fhir_groups.c.group_id)).all()
    return [_group(row, int(counts.get(row.group_id, 0))) for row in rows]


def get_group(store: RecordStore, group_id: str) -> Group | None:
    return next((g for g in list_groups(store) if g.group_id == group_id), None)


def remove_group(store: RecordStore, group_id: str, *, actor: str) -> bool:
    with store.write() as conn:
        gone = conn.execute(fhir_groups.delete().where(fhir_groups.c.group_id == group_id))
        conn.execute(fhir_group_members.delete().where(fhir_group_members.c.group_id == group_id))
        if gone.rowcount:
            audit.record(conn, actor=actor, action="group-remove", detail=group_id)
    return bool(gone.rowcount)


def _members(
    conn: sa.Connection, group: Group, people: list[HealthSyncConfig]
) -> list[HealthSyncConfig]:
    """The group's people among `people` (everyone in the store)."""
    if group.kind == "everyone":
        return people
    if group.kind == "providers":
        return [c for c in people if c.provider in group.providers]
    m = fhir_group_members
    query = sa.select(m.c.provider, m.c.user_id).where(m.c.group_id == group.group_id)
    listed = set(conn.execute(query).tuples())
    return [c for c in people if (c.provider, c.user_id) in listed]


def cohort(store: RecordStore, group_id: str | None) -> list[HealthSyncConfig] | None:
    """The people of a group now (`None` group: everyone, Patient/$export); None when there is
    no such group."""
    with store.read() as conn:
        people = _configs(conn)
        if group_id is None:
            return people
        row = conn.execute(sa.select(fhir_groups).where(fhir_groups.c.group_id == group_id)).first()
        return None if row is None else _members(conn, _group(row, 0), people)


def as_resources(store: RecordStore, found: list[Group]) -> list[dict[str, Any]]:
    """The groups as R5 Groups (everyone in the store read once): listed people are members
    (enumerated); everyone and providers are definitional, with how many people they hold now."""
    with store.read() as conn:
        people = _configs(conn)
        return [_resource(group, _members(conn, group, people)) for group in found]


def _resource(group: Group, people: list[HealthSyncConfig]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Group",
        "id": group.group_id,
        "type": "person",
        "membership": "enumerated" if group.kind == "people" else "definitional",
        "name": group.group_id,
        "quantity": len(people),
    }
    if group.description:
        resource["description"] = group.description
    if group.kind == "providers":
        resource["characteristic"] = [
            {"code": {"text": "connected provider"}, "valueCodeableConcept": {"text": provider},
             "exclude": False}
            for provider in group.providers
        ]  # fmt: skip
    if group.kind == "people":
        resource["member"] = [
            {"entity": {"reference": f"Patient/{c.fhir_patient_id}"}}
            for c in sorted(people, key=lambda c: c.fhir_patient_id)
        ]
    return resource
