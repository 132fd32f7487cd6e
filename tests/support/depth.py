"""How many examples a property test draws. The full suite (CI, the README's `scripts/test`) draws
each test's own number; the developer's fast loop (`scripts/test --fast` sets OHX_TEST_DEPTH=fast)
draws a fifth of it, at least 10, so that the unit tier answers within a minute while every
property is still exercised. A failure found in either is replayed from Hypothesis' database."""

from __future__ import annotations

import os


def examples(full: int) -> int:
    if os.environ.get("OHX_TEST_DEPTH") == "fast":
        return max(10, full // 5)
    return full
