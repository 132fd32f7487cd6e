"""Metadata a data engineer reads first, in Dagster's UI: ISO times, small plots, tables by type.

Nothing here names a person or shows a value of theirs: Dagster keeps event metadata forever and
erasure (ohx_dagster/privacy/erasure.py) cannot reach into it, so metadata counts and spans only.

Plots are small PNG bar charts drawn here (no plotting library in the product's image) and shown
through Dagster's Markdown metadata as `data:` URI images: Dagster 1.13's Markdown renderer lets
`data:` through for images (its sanitize schema adds it to `src`), and the UI's CSP sets no
img-src. The one-line text plots beside them serve terminals and screen readers.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from ohx_dagster.core.times import HOUR_US, to_us
from ohx_dagster.sync.status import TypeStatus, records_per_hour, window_start

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

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


# -- PNG bar charts --------------------------------------------------------------------------------

BAR_PX = 10  # width of one bar, its gap included
GAP_PX = 3
PLOT_HEIGHT_PX = 56
_BAR = (79, 67, 221, 255)  # Dagster's blue
_AXIS = (140, 140, 150, 255)
_TICK_EVERY = 6  # a tick under hours 0, 6, 12 and 18
_CLEAR = (0, 0, 0, 0)


def png(pixels: list[list[tuple[int, int, int, int]]]) -> bytes:
    """An RGBA PNG of rows of pixels (PNG 1.2: IHDR, one IDAT, IEND; filter 0 on every row)."""
    height, width = len(pixels), len(pixels[0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(c for pixel in row for c in pixel) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def bar_chart(counts: list[int], *, height: int = PLOT_HEIGHT_PX) -> bytes:
    """Counts as bars over a baseline with a tick every 6 bars; the tallest fills the height,
    a non-zero count is at least one pixel high. Transparent background (light and dark UI)."""
    top = max(counts, default=0)
    plot = height - 3  # the baseline and a tick below it
    width = len(counts) * BAR_PX
    pixels = [[_CLEAR] * width for _ in range(height)]
    for n, count in enumerate(counts):
        bar = 0 if top <= 0 or count <= 0 else max(1, round(count * plot / top))
        for x in range(n * BAR_PX, (n + 1) * BAR_PX - GAP_PX):
            for y in range(plot - bar, plot):
                pixels[y][x] = _BAR
    for x in range(width):
        pixels[plot][x] = _AXIS
    for n in range(0, len(counts), _TICK_EVERY):
        pixels[plot + 1][n * BAR_PX] = pixels[plot + 2][n * BAR_PX] = _AXIS
    return png(pixels)


def image(data: bytes, alt: str) -> str:
    """A Markdown image of PNG bytes, inline as a data: URI."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def _per_hour(hourly: pd.DataFrame) -> dict[str, list[int]]:
    """Records per UTC hour (00 .. 23) of each type."""
    frame = hourly.assign(hour=(hourly["bucket_start_us"] // HOUR_US) % 24)
    return {
        str(data_type): [
            int(c) for c in rows.groupby("hour")["count"].sum().reindex(range(24), fill_value=0)
        ]
        for data_type, rows in frame.groupby("data_type")
    }


def hourly_plot(hourly: pd.DataFrame) -> dg.MetadataValue:
    """Records per UTC hour and type, as a one-line plot per type (00 .. 23 h)."""
    if hourly.empty:
        return dg.MetadataValue.md("(no records)")
    lines = ["| type | 00 .. 23 h UTC | records |", "|---|---|---|"]
    for data_type, counts in _per_hour(hourly).items():
        lines.append(f"| {data_type} | `{sparkline(counts)}` | {sum(counts)} |")
    return dg.MetadataValue.md("\n".join(lines))


CHART_KEY = "records_per_hour/{data_type}"


def hourly_charts(hourly: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    """Records per UTC hour as a bar chart per type, one metadata entry each
    (`records_per_hour/heart_rate`, ...). One entry a chart: the UI shows a Markdown value in
    its table under 1,000 characters only (behind "[Show Markdown]" otherwise), and one chart
    stays far below that (at most ~650)."""
    return {
        CHART_KEY.format(data_type=data_type): dg.MetadataValue.md(
            image(bar_chart(counts), f"{data_type} records per UTC hour, 00 to 23 h")
        )
        for data_type, counts in _per_hour(hourly).items()
    }


PEOPLE_CHART_KEY = "records_24h_per_person"
PEOPLE_BARS = 60  # the busiest people drawn; a 600-pixel chart, still under the inline limit


def people_chart(counts: list[int]) -> dict[str, dg.MetadataValue]:
    """Records of the last 24 hours per person as one bar chart (metadata
    `records_24h_per_person`): a bar a person, busiest first, so no bar stands for anyone in
    particular (no id, no subject, no order by id); a person with none is a gap at the end."""
    if not counts:
        return {}
    ranked = sorted(counts, reverse=True)
    shown = ranked[:PEOPLE_BARS]
    alt = f"records of the last 24 hours per person, busiest first ({len(counts)} people"
    alt += f", the {len(shown)} busiest drawn)" if len(shown) < len(counts) else ")"
    return {PEOPLE_CHART_KEY: dg.MetadataValue.md(image(bar_chart(shown), alt))}


def status_charts(
    store: RecordStore, source: str, rows: Sequence[TypeStatus], now: datetime
) -> dict[str, dg.MetadataValue]:
    """The sync_status asset's plots of the last 24 hours (ohx_dagster/sync/status.window_start):
    records per UTC hour by type, every person together (`records_per_hour/<type>`, drawn as
    the partition view draws them), and records per person (`records_24h_per_person`)."""
    start_us = to_us(window_start(now))
    hourly = pd.DataFrame(
        records_per_hour(store, source, start_us, start_us + 24 * HOUR_US),
        columns=["bucket_start_us", "data_type", "count"],
    )
    per_person: dict[str, int] = {}
    for row in rows:
        per_person[row.user_id] = per_person.get(row.user_id, 0) + row.records_24h
    return {**hourly_charts(hourly), **people_chart(list(per_person.values()))}


def type_table(stats: pd.DataFrame) -> dg.MetadataValue:
    """People and records per type (no person, no value)."""
    if stats.empty:
        return dg.MetadataValue.md("(no rows)")
    table = stats.groupby("data_type").agg(people=("user_id", "nunique"), records=("count", "sum"))
    return dg.MetadataValue.md(table.reset_index().to_markdown(index=False))
