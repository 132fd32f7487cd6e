"""Coverage: the time windows of a person's data that a sync has fetched and stored, per provider
and data type, as sorted disjoint half-open intervals [start, end) of epoch microseconds.

A run records what it fetched in the same transaction as the records it stored, so coverage never
claims data that is not in the store. What is left to fetch is always `gaps(goal, coverage)`,
never a guess from a clock: two runs of one day in any order, or at once, leave the day covered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[int, int]


def normalize(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, non-empty; touching intervals are joined."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def gaps(goal: Interval, covered: Sequence[Interval]) -> list[Interval]:
    """The parts of `goal` that no interval of `covered` (normalized) holds."""
    start, end = goal
    missing: list[Interval] = []
    cursor = start
    for c_start, c_end in covered:
        if c_end <= cursor:
            continue
        if c_start >= end:
            break
        if c_start > cursor:
            missing.append((cursor, c_start))
        cursor = max(cursor, c_end)
        if cursor >= end:
            break
    if cursor < end:
        missing.append((cursor, end))
    return missing


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The instants in both (each normalized)."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def total(intervals: Iterable[Interval]) -> int:
    return sum(end - start for start, end in intervals)
