"""The UCUM answers the product keeps (ucum.KNOWN) are the library's, and validating what the
product publishes never builds the library's parser or registry (a CPU-second per run)."""

from __future__ import annotations

import pytest

from ohx_dagster.core.datatypes import DATA_TYPES
from ohx_dagster.fhir.validation import ucum


@pytest.mark.parametrize("code", sorted(ucum.KNOWN))
def test_each_known_answer_is_the_librarys(code: str) -> None:
    problem = ucum._library_problem(code)
    dimension = ucum._library_dimension(code) if problem is None else None
    seconds = ucum._library_seconds(code) if problem is None else None
    assert ucum.KNOWN[code] == (problem, dimension, seconds)


def test_every_unit_the_product_publishes_is_known() -> None:
    missing = {f.unit for f in DATA_TYPES.values()} - set(ucum.KNOWN)
    assert not missing, f"add {sorted(missing)} to ucum.KNOWN (the library's answers)"


def test_known_and_library_answers_agree_across_the_two() -> None:
    # A known unit against a foreign one goes to the library, and gives its answer.
    assert ucum.commensurable("uV", "kV") is True
    assert ucum.commensurable("ms", "wk") is True
    assert ucum.commensurable("mm[Hg]", "kPa") is True
    assert ucum.commensurable("kg", "[lb_av]") is True
    assert ucum.commensurable("kg", "m") is False
    assert ucum.seconds("wk") == 604_800.0
    assert ucum.problem("bpm") is not None
    assert ucum.dimension("{steps}") is None  # an annotation alone: no dimension, no error


def test_validating_the_products_resources_never_builds_the_library() -> None:
    from test_fhir_validate_mutations import PATIENTS, product_resources

    from ohx_dagster.fhir.validation import validate_output, validate_resource

    ucum._parser.cache_clear()
    ucum._registry.cache_clear()
    ucum.problem.cache_clear()
    ucum.seconds.cache_clear()
    resources = product_resources()
    problems = [p for r in resources.values() for p in validate_resource(r)]
    problems += validate_output(resources.values(), external=PATIENTS)
    assert problems == []
    assert ucum._parser.cache_info().currsize == 0
    assert ucum._registry.cache_info().currsize == 0
