"""Sync status in the UI: one `sync_status/<source>` asset per configured source, refreshed every
15 minutes by the sync_status_schedule (and by hand: Materialize), whose metadata is the per-person
table `ohx status` prints (ohx_dagster/sync/status.py computes both), with checks that fail when a
connected person falls behind.

- freshness (provider APIs and the simulator; an error): fails when an active person's type has
  waited longer than its allowed lag (OHX_MAX_SYNC_LAG; by default 2 x the person's sync interval
  + the provider's re-sync horizon);
- connections_authorized (the same sources; a warning): a connected person needs to connect
  their account again;
- last_sync_succeeded (every source; a warning): a type's last attempt failed (an error newer
  than its last success).

Unlike the partitions' metadata (assets/metadata.py: counts and spans only), this table lists
people: that is what it is for. It names them, and the checks' lists too, by their salted subject
(its first 12 hex digits, ohx_dagster/privacy/identity.py), never by id: Dagster keeps what erasure
would have to chase otherwise. `ohx status` prints the same table with ids, from the store; `python
-m ohx_dagster.privacy.erasure subject --provider P --user U` gives a person's subject.
"""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import dagster as dg

from assets.metadata import status_charts
from ohx_dagster.privacy.identity import redact
from ohx_dagster.privacy.subjects import erasure_salt
from ohx_dagster.sync.status import (
    ACTIVE,
    LagLimit,
    TypeStatus,
    collect,
    failing,
    is_behind,
    iso,
    table_rows,
    words,
)
from resources import RecordStoreResource, SourcesResource

T = TypeVar("T")

KEY_PREFIX = "sync_status"
SHOWN = 20  # people or types listed in a check's metadata

STATUS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(
            "person", "string", description="the person's salted subject (first 12 hex digits)"
        ),
        dg.TableColumn("type", "string", description="data type"),
        dg.TableColumn(
            "state",
            "string",
            description="active, needs reauthorization, disconnected, refused: <the provider's "
            "reason>, not enabled, not supported",
        ),
        dg.TableColumn("covered_until", "string", description="end of covered data, ISO UTC"),
        dg.TableColumn("lag", "string", description="now minus covered_until"),
        dg.TableColumn("allowed_lag", "string", description="what the freshness check allows"),
        dg.TableColumn("behind", "bool", description="waited longer than allowed"),
        dg.TableColumn("records_24h", "int", description="records of the last 24 hours"),
        dg.TableColumn("last_error", "string", description="when and what failed last"),
    ]
)


def status_key(source: str) -> dg.AssetKey:
    return dg.AssetKey([KEY_PREFIX, source])


def _listed(rows: Sequence[TypeStatus], now: datetime, limit: LagLimit | None) -> list[str]:
    found = []
    for row in rows[:SHOWN]:
        waited = row.waiting(now)
        text = f"{row.user_id} {row.data_type}"
        if waited is not None and limit is not None:
            text += f": {words(waited)} (allowed {words(limit.allowed(row.sync_frequency))})"
        found.append(text)
    return found


def build_sync_status_asset(
    source: str, *, live: bool, max_lag: timedelta | None = None
) -> dg.AssetsDefinition:
    """The status asset of one source. `live`: people connect to it and it is synced on a
    schedule (provider APIs, the simulator); exports have no lag to keep."""
    key = status_key(source)
    checks = [
        dg.AssetCheckSpec(
            "last_sync_succeeded",
            asset=key,
            description="No person's type whose last sync attempt failed (warning: the next run "
            "may succeed; the table's last_error says what failed).",
        )
    ]
    if live:
        checks += [
            dg.AssetCheckSpec(
                "freshness",
                asset=key,
                description="Every active connected person is in sync: no enabled type has "
                "waited longer than the allowed lag (OHX_MAX_SYNC_LAG; by default 2 x the "
                "person's sync interval + the provider's re-sync horizon).",
            ),
            dg.AssetCheckSpec(
                "connections_authorized",
                asset=key,
                description="No connected person needs to connect their account again "
                "(warning: only the person can fix it).",
            ),
            dg.AssetCheckSpec(
                "notified_data_arrived",
                asset=key,
                description="Every window a provider notification named has its data: none has "
                "answered empty for longer than the provider's re-sync horizon (such a window is "
                "asked again with backoff, shown as 'waiting for the provider', and given up on "
                "after 14 days).",
            ),
        ]

    @dg.asset(
        key=key,
        group_name="status",
        kinds={"sql"},
        owners=["team:data-engineering"],
        check_specs=checks,
        description=f"Sync status of the `{source}` source per person and data type, as `ohx "
        "status` prints it: state (needs reauthorization, refused with the provider's reason), "
        "covered until (ISO), lag, records in the last 24 hours, last error. Refreshed every "
        "15 minutes by sync_status_schedule; Materialize to refresh it now.",
    )
    def sync_status(store: RecordStoreResource, sources: SourcesResource) -> dg.MaterializeResult:
        now = datetime.now(UTC)
        rows = collect(store.get_store(), source, now)
        limit = LagLimit(sources.horizon(source), max_lag) if live else None
        behind = [r for r in rows if limit is not None and is_behind(r, now, limit)]
        reauthorize = sorted({r.user_id for r in rows if r.state == "needs reauthorization"})
        failed = [r for r in rows if r.state == ACTIVE and failing(r)]
        late = [r for r in rows if limit is not None and r.waiting_late(now, limit.horizon)]
        active = [r for r in rows if r.state == ACTIVE]
        waits = [w for w in (r.waiting(now) for r in active) if w is not None]
        oldest = min((r.covered_until for r in active if r.covered_until), default=None)
        # People by subject in everything the asset tells Dagster (module docstring).
        people = {r.user_id for r in rows}
        salt = erasure_salt()

        def hide(value: T) -> T:
            return redact(value, source, people, salt=salt)

        table = hide(table_rows(rows, now, limit))
        reauthorize = sorted(hide(reauthorize))
        metadata: dict[str, dg.RawMetadataValue] = {
            "as_of": iso(now),
            "people": len({r.user_id for r in rows}),
            "people_active": len({r.user_id for r in active}),
            "people_behind": len({r.user_id for r in behind}),
            "needs_reauthorization": len(reauthorize),
            "types_refused": sum(r.state == "refused" for r in rows),
            "types_failing": len(failed),
            "records_24h": sum(r.records_24h for r in rows),
            "oldest_covered_until": iso(oldest) or "never",
            "largest_lag": words(max(waits)) if waits else "",
            "allowed_lag": limit.rule()
            if limit is not None
            else "none: an export, imported when there is a file",
            "rows_shown": f"{len(table)} of {len(rows)} (problems first)",
            "status": dg.MetadataValue.table(
                [dg.TableRecord(row) for row in table], schema=STATUS_SCHEMA
            ),
            # Plots of counts, no person named (assets/metadata.py draws the partitions' too).
            **status_charts(store.get_store(), source, rows, now),
        }
        results = [
            dg.AssetCheckResult(
                check_name="last_sync_succeeded",
                passed=not failed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "types_failing": len(failed),
                    "failing": dg.MetadataValue.json(hide(_listed(failed, now, None))),
                },
            )
        ]
        if limit is not None:
            results += [
                dg.AssetCheckResult(
                    check_name="freshness",
                    passed=not behind,
                    metadata={
                        "people_behind": len({r.user_id for r in behind}),
                        "types_behind": len(behind),
                        "allowed_lag": limit.rule(),
                        "behind": dg.MetadataValue.json(hide(_listed(behind, now, limit))),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="connections_authorized",
                    passed=not reauthorize,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "needs_reauthorization": len(reauthorize),
                        "people": dg.MetadataValue.json(reauthorize[:SHOWN]),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="notified_data_arrived",
                    passed=not late,
                    metadata={
                        "types_late": len(late),
                        "windows_waiting": sum(r.waiting_windows for r in rows),
                        "windows_given_up": sum(r.given_up for r in rows),
                        "horizon": words(limit.horizon),
                        "late": dg.MetadataValue.json(hide(_listed(late, now, limit))),
                    },
                ),
            ]
        return dg.MaterializeResult(metadata=metadata, check_results=results)

    return sync_status


def build_sync_status_assets(
    sources: Sequence[str], live: Sequence[str], max_lags: Mapping[str, timedelta]
) -> list[dg.AssetsDefinition]:
    """One status asset per source (a sharded source's shards together: people, not keys)."""
    return [build_sync_status_asset(s, live=s in live, max_lag=max_lags.get(s)) for s in sources]
