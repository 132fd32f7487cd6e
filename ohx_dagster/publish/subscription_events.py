"""The events of R5 Subscriptions, recorded where data changes: in the transaction that commits a
published bucket (publish.partitions._record_changes), so an event exists exactly when its
change does, and no crash between the two loses one.

An event is one Observation a commit created or changed (its content digest differs from the
one `fhir_changes` held; the same content published again is none), for each active subscription
whose filter it matches (its person; its code, when the subscription names codes). A commit's
events for one subscription are one notification: numbered consecutively after the
subscription's last (`events`, incremented in the same UPDATE that reserves the numbers, so two
commits for the same person cannot take the same numbers), with the commit's notification
number. The FHIR API process delivers them in order (ohx_dagster/fhirapi/subscriptions.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa

from ohx_dagster.core.times import now_us
from ohx_dagster.storage.schema import fhir_changes, fhir_subscription_events, fhir_subscriptions

TOPIC_TYPES: Final = frozenset({"Observation"})


def _codes(resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    codings = (resource.get("code") or {}).get("coding") or []
    return {(str(c.get("system", "")), str(c.get("code", ""))) for c in codings}


def _matches(codes: list[list[str | None]], held: set[tuple[str, str]]) -> bool:
    if not codes:
        return True
    return any(code == c and (system is None or system == s) for system, code in codes
               for s, c in held)  # fmt: skip


def record_events(
    conn: sa.Connection, rows: Sequence[dict[str, Any]], resources: Mapping[tuple[str, str], dict]
) -> int:
    """Record the events of a commit's change rows (before they are upserted: their digests
    are compared with the ones stored); how many were recorded."""
    candidates = [r for r in rows if r["resource_type"] in TOPIC_TYPES]
    people = {(r["provider"], r["user_id"]) for r in candidates}
    if not people:
        return 0
    s = fhir_subscriptions
    subscriptions = [
        row
        for row in conn.execute(
            sa.select(s.c.subscription_id, s.c.provider, s.c.user_id, s.c.codes).where(
                s.c.status == "active",
                s.c.provider.in_({p for p, _ in people}),
                s.c.user_id.in_({u for _, u in people}),
            )
        )
        if (row.provider, row.user_id) in people
    ]
    if not subscriptions:
        return 0
    c = fhir_changes
    ids = [r["resource_id"] for r in candidates]
    query = sa.select(c.c.resource_id, c.c.digest).where(
        c.c.resource_type.in_(TOPIC_TYPES), c.c.resource_id.in_(ids)
    )
    stored = {resource_id: digest for resource_id, digest in conn.execute(query)}
    changed = [r for r in candidates if stored.get(r["resource_id"]) != r["digest"]]
    recorded = 0
    stamp = now_us()
    for subscription in subscriptions:
        codes = orjson.loads(subscription.codes)
        mine = sorted(
            (r for r in changed
             if (r["provider"], r["user_id"]) == (subscription.provider, subscription.user_id)
             and _matches(codes, _codes(resources[(r["resource_type"], r["resource_id"])]))),
            key=lambda r: r["resource_id"],
        )  # fmt: skip
        if not mine:
            continue
        last, notification = conn.execute(
            s.update()
            .where(s.c.subscription_id == subscription.subscription_id)
            .values(events=s.c.events + len(mine), notifications=s.c.notifications + 1)
            .returning(s.c.events, s.c.notifications)
        ).one()
        first = int(last) - len(mine) + 1
        conn.execute(
            fhir_subscription_events.insert(),
            [
                {"subscription_id": subscription.subscription_id, "event_number": first + i,
                 "notification": int(notification), "provider": r["provider"],
                 "user_id": r["user_id"], "resource_type": r["resource_type"],
                 "resource_id": r["resource_id"], "at_us": stamp}
                for i, r in enumerate(mine)
            ],
        )  # fmt: skip
        recorded += len(mine)
    return recorded
