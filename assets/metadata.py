"""Metadata a data engineer reads first, in Dagster's UI: ISO times, small plots, tables by type.

Nothing here names a person or shows a value of theirs: Dagster keeps event metadata forever and
erasure (ohx_dagster/erasure.py) cannot reach into it, so metadata counts and spans only.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import pandas as pd

from ohx_dagster.times import HOUR_US

# One character an hour: "·" no records, then eighths of the busiest hour (a non-zero hour is
# never drawn as nothing).
_BARS = "▁▂▃▄▅▆▇█"
_NONE = "·"


def span(first: datetime | None, last: datetime | None) -> dict[str, dg.MetadataValue]:
    if first is None or last is None:
        return {}
    return {
        "first_timestamp": dg.MetadataValue.text(pd.Timestamp(first).isoformat()),
        "last_timestamp": dg.MetadataValue.text(pd.Timestamp(last).isoformat()),
    }


def sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    return "".join(
        _NONE if c <= 0 else _BARS[max(0, -(-c * len(_BARS) // top) - 1)] for c in counts
    )


def hourly_plot(hourly: pd.DataFrame) -> dg.MetadataValue:
    """Records per UTC hour and type, as a one-line plot per type (00 .. 23 h)."""
    if hourly.empty:
        return dg.MetadataValue.md("(no records)")
    frame = hourly.assign(hour=(hourly["bucket_start_us"] // HOUR_US) % 24)
    lines = ["| type | 00 .. 23 h UTC | records |", "|---|---|---|"]
    for data_type, rows in frame.groupby("data_type"):
        per_hour = rows.groupby("hour")["count"].sum().reindex(range(24), fill_value=0)
        lines.append(f"| {data_type} | `{sparkline(per_hour.tolist())}` | {int(per_hour.sum())} |")
    return dg.MetadataValue.md("\n".join(lines))


def type_table(stats: pd.DataFrame) -> dg.MetadataValue:
    """People and records per type (no person, no value)."""
    if stats.empty:
        return dg.MetadataValue.md("(no rows)")
    table = stats.groupby("data_type").agg(people=("user_id", "nunique"), records=("count", "sum"))
    return dg.MetadataValue.md(table.reset_index().to_markdown(index=False))
