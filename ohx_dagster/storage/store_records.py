"""The record store's records: the `series_chunks` and `measurements` tables.

record_tables.py encodes a batch into those tables' rows inside a transaction and reads them back;
this group is the store's side of them: `commit`, a person's fetch in one transaction (records,
coverage, changed days, per-type success and cursors together, under the person's lock), reading
records back, counting them, and retention's `delete_before` (which cuts aggregates and coverage
with the records it deletes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ohx_dagster.core import coverage as cov
from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.glucose import days_summarizing
from ohx_dagster.core.localdays import Calendar, any_zone_days
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import concat, label_codes
from ohx_dagster.core.times import to_us
from ohx_dagster.storage import db, record_tables
from ohx_dagster.storage.record_tables import DENSE, Chunk
from ohx_dagster.storage.schema import aggregates, measurements, series_chunks, users
from ohx_dagster.storage.store_base import StoreBase

CGM = HealthDataType.INTERSTITIAL_GLUCOSE.value


@dataclass
class CommitReport:
    """What one person's commit changed."""

    changed: list[Interval] = field(default_factory=list)  # instants whose stored data changed
    days: set[date] = field(default_factory=set)  # day partitions to publish again
    unknown_person: bool = False  # not in users (erased meanwhile): nothing was written

    @property
    def changed_anything(self) -> bool:
        return bool(self.changed)


def days_touched(
    spans: Iterable[Interval], clock: HealthSyncConfig | ZoneInfo | Calendar
) -> set[date]:
    """Day partitions whose output depends on these instants: every local day of the person
    that holds one (a partition publishes each person's local day,
    ohx_dagster/core/localdays.py)."""
    calendar = Calendar.of(clock)
    days: set[date] = set()
    for start, end in spans:
        days.update(calendar.days_spanned(start, max(end, start + 1)))
        if calendar.own_offsets:  # a record with its own offset: the day of that offset
            days.update(any_zone_days(start, end))
    return days


class RecordsMixin(StoreBase):
    """The records: a person's commit, reading and counting records, deleting old ones."""

    # -- records -------------------------------------------------------------------------------

    def commit(
        self,
        provider: str,
        user_id: str,
        zone: HealthSyncConfig | ZoneInfo | Calendar,
        batch: pd.DataFrame,
        *,
        covered: Mapping[str, Sequence[Interval]] | None = None,
        replace: Mapping[str, Sequence[Interval]] | None = None,
        cursors: Mapping[str, str] | None = None,
        asked_at_us: int | None = None,
    ) -> CommitReport:
        """One person's fetch in one transaction: records merged, `covered` added to coverage,
        the changed day partitions marked for publishing, the types' last success noted, and the
        provider's `cursors` moved (only ever with the records they led to).

        `replace`: windows the provider answered in full, whose stored records it did not send
        again are gone (deleted at the provider). `asked_at_us`: when this answer was asked for;
        records another run stored after that came from a later answer, and this one does not
        take them away (two runs of one day overlapping while the provider receives data)."""
        covered = covered or {}
        replace = replace or {}
        dense_rows, sparse = np.zeros(0, dtype=np.int64), batch
        if not batch.empty:
            codes, labels = label_codes(batch["data_type"].to_numpy())
            is_dense = np.isin(codes, [n for n, label in enumerate(labels) if label in DENSE])
            dense_rows, sparse = np.flatnonzero(is_dense), batch[~is_dense]
        report = CommitReport()
        with self.write() as conn:
            db.lock(conn, "person", provider, user_id)
            if not self._known(conn, provider, user_id):
                # Erased (or never connected) while this fetch ran: nothing of theirs is written.
                report.unknown_person = True
                return report
            if asked_at_us is not None and replace:
                replace = self._answered_last(conn, provider, user_id, replace, asked_at_us)
            series = record_tables.write_series(
                conn, provider, user_id, batch, replace, rows=dense_rows
            )
            report.changed += [span for spans in series.values() for span in spans]
            report.changed += record_tables.write_measurements(
                conn, provider, user_id, sparse, replace
            )
            gained = self._add_coverage(conn, provider, user_id, covered)
            report.days = days_touched(report.changed, zone)
            self._bump_days(conn, provider, user_id, report.days)
            # Later days' 14-day CGM summaries count these readings, and are final only once
            # their earlier days are covered: those the store knows go (again) to publishing.
            glucose = days_touched([*series.get(CGM, []), *gained.get(CGM, [])], zone)
            later = {d for day in glucose for d in days_summarizing(day)} - report.days
            self._bump_known_days(conn, provider, user_id, later)
            if covered:
                self._succeeded(conn, provider, user_id, covered)
            for name, value in (cursors or {}).items():
                self.set_cursor(conn, provider, user_id, name, value)
        return report

    @staticmethod
    def _answered_last(
        conn: Connection,
        provider: str,
        user_id: str,
        replace: Mapping[str, Sequence[Interval]],
        asked_at_us: int,
    ) -> dict[str, list[Interval]]:
        """The `replace` windows without the stored hours (series) and instants (measurements)
        that another run wrote after `asked_at_us`: a later answer of the provider stands."""
        wanted = {t: cov.normalize(w) for t, w in replace.items()}
        wanted = {t: w for t, w in wanted.items() if w}
        if not wanted:
            return {}
        # One query per table for every type (a push's commit asks about a dozen types: a query
        # each was a tenth of a realtime step), split by type below.
        low = min(w[0][0] for w in wanted.values())
        high = max(w[-1][1] for w in wanted.values())
        dense = sorted(t for t in wanted if t in DENSE)
        sparse = sorted(t for t in wanted if t not in DENSE)
        newer: dict[str, list[Interval]] = {}
        if dense:
            s = series_chunks
            query = sa.select(s.c.data_type, s.c.hour_us).where(
                s.c.provider == provider,
                s.c.user_id == user_id,
                s.c.data_type.in_(dense),
                s.c.hour_us > low - record_tables.HOUR_US,
                s.c.hour_us < high,
                s.c.updated_at_us >= asked_at_us,
            )
            for kind, hour in conn.execute(query):
                newer.setdefault(kind, []).append((hour, hour + record_tables.HOUR_US))
        if sparse:
            m = measurements
            query = sa.select(m.c.data_type, m.c.ts_us).where(
                m.c.provider == provider,
                m.c.user_id == user_id,
                m.c.data_type.in_(sparse),
                m.c.ts_us >= low,
                m.c.ts_us < high,
                m.c.updated_at_us >= asked_at_us,
            )
            for kind, ts in conn.execute(query):
                newer.setdefault(kind, []).append((ts, ts + 1))
        kept: dict[str, list[Interval]] = {}
        for data_type, windows in wanted.items():
            holes = cov.normalize(newer.get(data_type, []))
            kept[data_type] = [g for w in windows for g in cov.gaps(w, holes)] if holes else windows
        return kept

    @staticmethod
    def _known(conn: Connection, provider: str, user_id: str) -> bool:
        query = sa.select(users.c.user_id).where(
            users.c.provider == provider, users.c.user_id == user_id
        )
        return conn.execute(query).first() is not None

    def read_chunks(
        self,
        provider: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
        data_types: Iterable[str] | None = None,
    ) -> list[Chunk]:
        with self.read() as conn:
            return record_tables.read_chunks(
                conn,
                provider,
                to_us(window.start),
                to_us(window.end),
                user_ids=user_ids,
                data_types=data_types,
            )

    def read_records(
        self,
        provider: str,
        window: DateRange,
        *,
        user_ids: Iterable[str] | None = None,
        data_types: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Every record in the window as one batch (one row per sample: for checks and tests;
        the publishing path reads chunks)."""
        start, end = to_us(window.start), to_us(window.end)
        users_ = None if user_ids is None else list(user_ids)
        types = None if data_types is None else [str(t) for t in data_types]
        with self.read(snapshot=True) as conn:
            found = record_tables.read_chunks(
                conn, provider, start, end, user_ids=users_, data_types=types
            )
            sparse = record_tables.read_measurements(
                conn, provider, start, end, user_ids=users_, data_types=types
            )
        batch = concat([record_tables.chunks_to_batch(provider, found), sparse])
        return batch.sort_values(
            ["user_id", "data_type", "ts", "device_id"], ignore_index=True, kind="stable"
        )

    def count_records(self, provider: str | None = None) -> int:
        """Samples and measurements stored (a chunk counts its samples)."""
        s, m = series_chunks, measurements
        dense = sa.select(sa.func.coalesce(sa.func.sum(s.c.samples), 0))
        sparse = sa.select(sa.func.count()).select_from(m)
        if provider is not None:
            dense = dense.where(s.c.provider == provider)
            sparse = sparse.where(m.c.provider == provider)
        with self.read() as conn:
            return int(conn.execute(dense).scalar_one()) + int(conn.execute(sparse).scalar_one())

    def delete_before(self, provider: str, user_id: str, cutoff: datetime) -> tuple[int, int]:
        """Delete a person's records and whole aggregate buckets older than `cutoff`, and the
        coverage before it; returns (records, aggregates) deleted."""
        before = to_us(cutoff)
        s, m, a = series_chunks, measurements, aggregates
        person = (s.c.provider == provider) & (s.c.user_id == user_id)
        with self.write() as conn:
            db.lock(conn, "person", provider, user_id)
            whole = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(s.c.samples), 0)).where(
                    person, s.c.hour_us + record_tables.HOUR_US <= before
                )
            ).scalar_one()
            conn.execute(s.delete().where(person, s.c.hour_us + record_tables.HOUR_US <= before))
            # The hour that straddles the cutoff keeps its later samples only.
            straddling = conn.execute(
                sa.select(s.c.data_type).where(
                    person, s.c.hour_us < before, s.c.hour_us + record_tables.HOUR_US > before
                )
            ).scalars()
            trim = {kind: [(before - record_tables.HOUR_US, before)] for kind in straddling}
            before_trim = self._count_in(conn, provider, user_id, before)
            record_tables.write_series(conn, provider, user_id, pd.DataFrame(), trim)
            trimmed = before_trim - self._count_in(conn, provider, user_id, before)
            sparse = conn.execute(
                m.delete().where(
                    m.c.provider == provider, m.c.user_id == user_id, m.c.ts_us < before
                )
            ).rowcount
            buckets = conn.execute(
                a.delete().where(
                    a.c.provider == provider, a.c.user_id == user_id, a.c.bucket_end_us <= before
                )
            ).rowcount
            self._cut_coverage(conn, provider, user_id, before)
        return int(whole) + int(trimmed) + int(sparse or 0), int(buckets or 0)

    @staticmethod
    def _count_in(conn: Connection, provider: str, user_id: str, before: int) -> int:
        s = series_chunks
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(s.c.samples), 0)).where(
                    s.c.provider == provider,
                    s.c.user_id == user_id,
                    s.c.hour_us > before - record_tables.HOUR_US,
                    s.c.hour_us < before,
                )
            ).scalar_one()
        )

    def holds(
        self, provider: str, user_id: str, data_type: str, start_us: int, end_us: int
    ) -> bool:
        """Whether the store holds any of the person's data of a type in [start, end): an index
        seek, no record decoded (a chunk's hour overlapping the window is read to be sure)."""
        with self.read() as conn:
            if data_type in DENSE:
                s = series_chunks
                query = sa.select(s.c.hour_us).where(
                    s.c.provider == provider,
                    s.c.user_id == user_id,
                    s.c.data_type == data_type,
                    s.c.hour_us > start_us - record_tables.HOUR_US,
                    s.c.hour_us < end_us,
                )
                hours = list(conn.execute(query).scalars())
                if not hours:
                    return False
                found = record_tables.read_chunks(
                    conn, provider, start_us, end_us, user_ids=[user_id], data_types=[data_type]
                )
                return any(len(c.samples) for c in found)
            m = measurements
            query = sa.select(m.c.ts_us).where(
                m.c.provider == provider,
                m.c.user_id == user_id,
                m.c.data_type == data_type,
                m.c.ts_us >= start_us,
                m.c.ts_us < end_us,
            )
            return conn.execute(query.limit(1)).first() is not None
