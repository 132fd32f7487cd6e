"""The record store's per-type status: the `type_status` table.

Per person and type: the last success, the last error, and a refusal by the provider (403) with
the hash of the settings it happened under, so refused types are skipped until the person
reconnects or their settings change. Status readers (`ohx`, sync_status) show it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import now_us
from ohx_dagster.storage.schema import type_status
from ohx_dagster.storage.store_base import StoreBase


def config_hash(config: HealthSyncConfig) -> str:
    """A refusal applies to the settings it happened under: edited settings are tried again."""
    return hashlib.sha256(orjson.dumps(config.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()


class TypeStatusMixin(StoreBase):
    """Per-type status: last success, last error, the provider's refusals."""

    # -- per-type status -----------------------------------------------------------------------

    def _succeeded(
        self, conn: Connection, provider: str, user_id: str, types: Iterable[str]
    ) -> None:
        statement = self._insert(type_status)
        rows = [
            {"provider": provider, "user_id": user_id, "data_type": t, "last_success_us": now_us()}
            for t in types
        ]
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "user_id", "data_type"],
                set_={"last_success_us": statement.excluded.last_success_us},
            ),
            rows,
        )

    def record_errors(
        self,
        provider: str,
        user_id: str,
        errors: Mapping[str, str],
        *,
        refused: bool = False,
        config: HealthSyncConfig | None = None,
    ) -> None:
        """Note failures per type; `refused`: the provider will not serve these types to us (403):
        they are skipped until the person reconnects or `config` changes."""
        if not errors:
            return
        stamp = now_us()
        statement = self._insert(type_status)
        rows = []
        for data_type, message in errors.items():
            row = {
                "provider": provider,
                "user_id": user_id,
                "data_type": data_type,
                "last_error": message[:2000],
                "last_error_us": stamp,
            }
            if refused:
                row |= {
                    "refused_reason": message[:2000],
                    "refused_us": stamp,
                    "refused_config": None if config is None else config_hash(config),
                }
            rows.append(row)
        updated = ["last_error", "last_error_us"]
        if refused:
            updated += ["refused_reason", "refused_us", "refused_config"]
        with self.write() as conn:
            for row in rows:
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["provider", "user_id", "data_type"],
                        set_={name: statement.excluded[name] for name in updated},
                    ),
                    [row],
                )

    def refused_types(self, config: HealthSyncConfig) -> dict[str, str]:
        """Types the provider refused for this person under their current settings."""
        t = type_status
        query = sa.select(t.c.data_type, t.c.refused_reason, t.c.refused_config).where(
            t.c.provider == config.provider,
            t.c.user_id == config.user_id,
            t.c.refused_reason.is_not(None),
        )
        current = config_hash(config)
        with self.read() as conn:
            rows = conn.execute(query).all()
        return {r.data_type: r.refused_reason for r in rows if r.refused_config in (None, current)}

    def refused_types_of(
        self, provider: str, configs: Mapping[str, HealthSyncConfig]
    ) -> dict[str, dict[str, str]]:
        """`refused_types` of each of these people, in one read."""
        t = type_status
        query = sa.select(t.c.user_id, t.c.data_type, t.c.refused_reason, t.c.refused_config).where(
            t.c.provider == provider,
            t.c.user_id.in_(sorted(configs)),
            t.c.refused_reason.is_not(None),
        )
        with self.read() as conn:
            rows = conn.execute(query).all()
        current = {user_id: config_hash(config) for user_id, config in configs.items()}
        found: dict[str, dict[str, str]] = {user_id: {} for user_id in configs}
        for r in rows:
            if r.refused_config in (None, current[r.user_id]):
                found[r.user_id][r.data_type] = r.refused_reason
        return found

    def _clear_refusals(self, conn: Connection, provider: str, user_id: str) -> None:
        t = type_status
        conn.execute(
            t.update()
            .where(t.c.provider == provider, t.c.user_id == user_id)
            .values(refused_reason=None, refused_us=None, refused_config=None)
        )

    def type_statuses(self, provider: str | None = None) -> list[Any]:
        t = type_status
        query = sa.select(t)
        if provider is not None:
            query = query.where(t.c.provider == provider)
        with self.read() as conn:
            return list(conn.execute(query.order_by(t.c.provider, t.c.user_id, t.c.data_type)))
