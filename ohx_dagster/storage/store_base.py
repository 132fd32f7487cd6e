"""What each table group of the record store is written against; owns no table.

`RecordStore` (store.py) is composed of one mixin per table group (store_people.py,
store_records.py, store_coverage.py, store_type_status.py, store_day_versions.py,
store_cursors.py, store_aggregates.py). Each mixin subclasses `StoreBase`, the protocol below: the
store's engine and transactions, and the few methods one group calls on another (a commit writes
records, coverage, changed days, per-type success and cursors in one transaction). mypy checks
every mixin against these declarations, each group's own definition against them, and that
`RecordStore` provides all of them (one it lacks leaves it abstract, and it cannot be built).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ohx_dagster.core.coverage import Interval


class StoreBase(Protocol):
    # Given by RecordStore itself (store.py).
    url: str
    engine: Engine
    _insert: Any  # the dialect's INSERT (ON CONFLICT support)

    def write(self) -> AbstractContextManager[Connection]: ...

    def read(self, *, snapshot: bool = False) -> AbstractContextManager[Connection]: ...

    def upsert(self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None: ...

    # Given by one group, called by another, inside the caller's transaction.
    def _add_coverage(  # store_coverage.py
        self,
        conn: Connection,
        provider: str,
        user_id: str,
        covered: Mapping[str, Sequence[Interval]],
    ) -> dict[str, list[Interval]]: ...

    def _cut_coverage(  # store_coverage.py
        self, conn: Connection, provider: str, user_id: str, before: int
    ) -> None: ...

    def _succeeded(  # store_type_status.py
        self, conn: Connection, provider: str, user_id: str, types: Iterable[str]
    ) -> None: ...

    def _clear_refusals(  # store_type_status.py
        self, conn: Connection, provider: str, user_id: str
    ) -> None: ...

    def _bump_days(  # store_day_versions.py
        self, conn: Connection, provider: str, user_id: str, days: Iterable[date]
    ) -> None: ...

    def _bump_known_days(  # store_day_versions.py
        self, conn: Connection, provider: str, user_id: str, days: Iterable[date]
    ) -> None: ...

    def set_cursor(  # store_cursors.py
        self, conn: Connection, provider: str, user_id: str, name: str, value: str
    ) -> None: ...
