"""One sync of one source for one partition day: fetch per user, commit, then advance sync state.

The order is the invariant: records are committed before the user's sync state moves, so a crash
anywhere repeats a fetch (idempotent upsert) but never skips data. One user's provider failure does
not stop the others; their data is committed and the failures are raised together at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Final

import pandas as pd

from ohx_dagster.errors import OhxError, ProviderError, RateLimited
from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.providers.base import HealthSource
from ohx_dagster.records import concat, dedupe
from ohx_dagster.shards import Shard
from ohx_dagster.store import RecordStore
from ohx_dagster.strategies import SyncStrategy, plan_for_partition

# Heart rate fetched around a linked recording (ECG, RR session) so the two are stored together.
LINK_MARGIN: Final = timedelta(minutes=1)


@dataclass
class SyncReport:
    source: str
    strategy: str
    partition: DateRange
    records_by_type: dict[str, int] = field(default_factory=dict)
    users_synced: list[str] = field(default_factory=list)
    users_skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    # Failures that a later attempt may not meet (provider outage, rate limit), and the longest
    # Retry-After any provider asked for.
    transient: bool = True
    retry_after_s: float | None = None
    first: datetime | None = None
    last: datetime | None = None

    @property
    def records(self) -> int:
        return sum(self.records_by_type.values())


class SyncFailed(OhxError):
    def __init__(self, report: SyncReport) -> None:
        self.report = report
        details = "; ".join(
            f"{user}: {message}" for user, message in sorted(report.failures.items())
        )
        super().__init__(
            f"{len(report.failures)} of {len(report.failures) + len(report.users_synced)} users of "
            f"{report.source} failed (the others were committed): {details}"
        )


def _linked_heart_rate_window(batch: pd.DataFrame, config: HealthSyncConfig) -> DateRange | None:
    linked = batch[batch["data_type"].isin([t.value for t in config.link_heart_rate_to])]
    if linked.empty:
        return None
    ends = linked["ts"] + pd.to_timedelta(linked["duration_s"].fillna(0.0), unit="s")
    return DateRange(
        linked["ts"].min().to_pydatetime() - LINK_MARGIN, ends.max().to_pydatetime() + LINK_MARGIN
    )


def fetch_user(
    source: HealthSource,
    store: RecordStore,
    config: HealthSyncConfig,
    *,
    strategy: SyncStrategy,
    partition: DateRange,
    now: datetime,
    since: datetime | None = None,
) -> tuple[pd.DataFrame, dict[HealthDataType, DateRange]]:
    """The user's records for the partition under the strategy, with linked heart rate added."""
    windows: dict[HealthDataType, DateRange] = {}
    batches = []
    for kind in sorted(config.enabled_types):
        last = store.last_synced(source.name, config.user_id, kind)
        plan = plan_for_partition(
            strategy, partition=partition, config=config, last_synced=last, now=now, since=since
        )
        if plan is None:
            continue
        windows[kind] = plan.window
        batches.append(source.fetch(config, [kind], plan.window, batch_size=plan.batch_size))
    batch = concat(batches)
    around = _linked_heart_rate_window(batch, config)
    heart_rate = windows.get(HealthDataType.HEART_RATE)
    if around is not None and (heart_rate is None or around.intersect(heart_rate) != around):
        batches.append(source.fetch(config, [HealthDataType.HEART_RATE], around, batch_size=1000))
        batch = dedupe(concat(batches))
    return batch, windows


def sync_partition(
    source: HealthSource,
    store: RecordStore,
    partition: DateRange,
    *,
    strategy: SyncStrategy | str = SyncStrategy.PARTITION,
    user_ids: Iterable[str] | None = None,
    select: Callable[[HealthSyncConfig, date], bool] | None = None,
    since: datetime | None = None,
    shard: Shard | None = None,
    now: datetime,
) -> SyncReport:
    """Sync the source's connected users (only `user_ids`, only those `select` accepts, and only
    those of the `shard` partition key, when given) for one partition day under a strategy."""
    strategy = SyncStrategy(strategy)
    store.add_users(source.discover_users())
    wanted = None if user_ids is None else set(user_ids)
    report = SyncReport(source.name, strategy.value, partition)
    for config in store.users(source.name):
        if shard is not None and not shard.holds(config.user_id):
            continue
        if wanted is not None and config.user_id not in wanted:
            continue
        if select is not None and not select(config, partition.start.date()):
            continue
        try:
            batch, windows = fetch_user(
                source, store, config, strategy=strategy, partition=partition, now=now, since=since
            )
        except (ProviderError, OhxError, ValueError, OSError) as exc:
            # OSError: a provider's network failure (reset, timeout) is one user's failure too.
            report.failures[config.user_id] = f"{type(exc).__name__}: {exc}"
            # Bad data or config stays bad on retry; a provider or network error may pass.
            report.transient &= isinstance(exc, ProviderError | OSError)
            if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
                report.retry_after_s = max(report.retry_after_s or 0.0, exc.retry_after_s)
            continue
        store.upsert_records(batch)
        for kind, window in windows.items():
            store.advance_sync_state(source.name, config.user_id, [kind], window.end)
        report.users_synced.append(config.user_id)
        for data_type, count in batch["data_type"].value_counts().items():
            report.records_by_type[data_type] = report.records_by_type.get(data_type, 0) + int(
                count
            )
        if not batch.empty:
            first, last = batch["ts"].min().to_pydatetime(), batch["ts"].max().to_pydatetime()
            report.first = first if report.first is None else min(report.first, first)
            report.last = last if report.last is None else max(report.last, last)
    if wanted is not None:
        known = {c.user_id for c in store.users(source.name)}
        for user_id in sorted(wanted - set(report.users_synced) - set(report.failures)):
            if user_id not in known:
                reason = "not connected"
            elif shard is not None and not shard.holds(user_id):
                reason = f"not in shard {shard.key}"
            else:
                reason = "not selected by this run"
            report.users_skipped[user_id] = reason
    if report.failures:
        raise SyncFailed(report)
    return report
