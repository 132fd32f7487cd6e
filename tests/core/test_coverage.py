"""Coverage interval arithmetic: gaps and coverage always add up to the goal, never overlap."""

from __future__ import annotations

from itertools import pairwise

from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.core.coverage import gaps, intersect, normalize, total

intervals = st.lists(
    st.tuples(st.integers(0, 1000), st.integers(0, 1000)).map(lambda p: (min(p), max(p))),
    max_size=20,
)


def instants(spans) -> set[int]:
    return {t for s, e in spans for t in range(s, e)}


@given(intervals)
@settings(max_examples=examples(300))
def test_normalize_keeps_exactly_the_instants(spans) -> None:
    merged = normalize(spans)
    assert instants(merged) == instants(spans)
    assert all(a[1] < b[0] for a, b in pairwise(merged))


@given(st.integers(0, 1000), st.integers(0, 1000), intervals)
@settings(max_examples=examples(300))
def test_gaps_are_the_goal_minus_the_coverage(a, b, spans) -> None:
    goal = (min(a, b), max(a, b))
    covered = normalize(spans)
    missing = gaps(goal, covered)
    assert instants(missing) == instants([goal]) - instants(covered)
    assert total(missing) + total(intersect([goal], covered)) == goal[1] - goal[0]


def test_a_covered_goal_has_no_gap_and_an_empty_one_is_all_gap() -> None:
    assert gaps((10, 20), [(0, 30)]) == []
    assert gaps((10, 20), []) == [(10, 20)]
    assert gaps((10, 20), [(12, 14), (16, 18)]) == [(10, 12), (14, 16), (18, 20)]
