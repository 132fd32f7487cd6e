"""The partition's per-hour plot (assets/metadata.py): a PNG drawn without a plotting library,
decoded here by an independent reader (zlib and the PNG layout, not the writer's code)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pandas as pd
from png_reader import DATA_URI, bar_heights, read_png

from assets.metadata import BAR_PX, PLOT_HEIGHT_PX, bar_chart, hourly_charts, hourly_plot
from ohx_dagster.core.times import to_us


def test_bars_are_proportional_and_a_small_count_is_seen() -> None:
    counts = [0] * 24
    counts[1], counts[12], counts[13], counts[23] = 1, 370, 185, 37
    rows = read_png(bar_chart(counts))
    assert len(rows) == PLOT_HEIGHT_PX and len(rows[0]) == 24 * BAR_PX
    heights = bar_heights(rows, 24)
    plot = PLOT_HEIGHT_PX - 3
    assert heights[12] == plot  # the tallest fills the plot
    assert abs(heights[13] - plot / 2) <= 1 and abs(heights[23] - plot / 10) <= 1
    assert heights[1] == 1  # 1 of 370 is still drawn
    assert [h for n, h in enumerate(heights) if counts[n] == 0] == [0] * 20
    # The gap between bars and the background are transparent; the baseline is drawn.
    assert rows[plot - 1][12 * BAR_PX + BAR_PX - 1][3] == 0 and rows[0][0][3] == 0
    assert all(pixel[3] == 255 for pixel in rows[plot])


def test_the_partition_metadata_holds_a_plot_per_type() -> None:
    day = datetime(2026, 3, 1, tzinfo=UTC)
    hourly = pd.DataFrame(
        {
            "user_id": ["p", "q", "p", "p"],
            "data_type": ["heart_rate", "heart_rate", "heart_rate", "steps"],
            "bucket_start_us": [to_us(day + timedelta(hours=h)) for h in (5, 5, 6, 9)],
            "count": [300, 100, 200, 4],
        }
    )
    charts = hourly_charts(hourly)
    assert list(charts) == ["records_per_hour/heart_rate", "records_per_hour/steps"]
    images = {}
    for key, value in charts.items():
        # Each chart is shown in the UI's metadata table: a Markdown value under 1,000 chars.
        assert len(value.value) < 1000, (key, len(value.value))
        ((alt, data),) = DATA_URI.findall(value.value)
        assert alt == f"{key.split('/')[1]} records per UTC hour, 00 to 23 h"
        images[key] = base64.b64decode(data)
    heart = bar_heights(read_png(images["records_per_hour/heart_rate"]), 24)
    assert heart[5] == PLOT_HEIGHT_PX - 3 and abs(heart[6] - heart[5] * 2 / 4) <= 1
    assert sum(heart) == heart[5] + heart[6]
    steps = bar_heights(read_png(images["records_per_hour/steps"]), 24)
    assert [n for n, h in enumerate(steps) if h] == [9]
    # The text version beside them, unchanged: one line per type.
    text = hourly_plot(hourly).value
    assert "| heart_rate |" in text and text.rstrip().endswith("| 4 |")


def test_a_chart_stays_under_the_uis_inline_limit_whatever_the_counts() -> None:
    """The busiest drawing (24 different heights, the largest counts) is still shown inline."""
    day = datetime(2026, 3, 1, tzinfo=UTC)
    hourly = pd.DataFrame(
        {
            "user_id": "p",
            "data_type": "rr_intervals",
            "bucket_start_us": [to_us(day + timedelta(hours=h)) for h in range(24)],
            "count": [(h * 7919) % 24 * 10**9 + h + 1 for h in range(24)],
        }
    )
    (value,) = hourly_charts(hourly).values()
    assert len(value.value) < 1000
    heights = bar_heights(read_png(base64.b64decode(DATA_URI.findall(value.value)[0][1])), 24)
    assert len(set(heights)) == 24 and min(heights) >= 1
