"""SMART v2 system scopes (ohx_dagster/fhirapi/scopes.py): every v2 scope is read back as
written, nothing else is a scope, and holding a scope allows exactly the interactions its
permissions name on its type (or every type, for `*`)."""

from __future__ import annotations

from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.fhirapi.scopes import Scope, allowed, parse_scopes

TYPES = st.sampled_from(["*", "Observation", "Patient", "Device", "Group"])
PERMISSIONS = st.sets(st.sampled_from("cruds"), min_size=1).map(
    lambda chosen: "".join(p for p in "cruds" if p in chosen)
)


@given(TYPES, PERMISSIONS)
@settings(max_examples=examples(200), deadline=None)
def test_a_v2_scope_reads_back_as_written(resource_type: str, permissions: str) -> None:
    text = f"system/{resource_type}.{permissions}"
    assert str(Scope.parse(text)) == text


@given(st.text(max_size=40))
@settings(max_examples=examples(300), deadline=None)
def test_only_v2_system_scopes_are_scopes(text: str) -> None:
    scopes, bad = parse_scopes(text)
    assert len(scopes) + len(bad) == len(text.split())
    for scope in scopes:
        assert str(scope) in text.split()


def test_v1_user_patient_and_out_of_order_scopes_are_refused() -> None:
    refused = ("system/Observation.read", "user/Observation.rs", "patient/*.rs",
               "system/Observation.sr", "system/Observation.", "system/observation.rs")  # fmt: skip
    for text in refused:
        assert Scope.parse(text) is None, text


@given(TYPES, PERMISSIONS, TYPES, PERMISSIONS, st.sampled_from(["Observation", "Patient"]),
       st.sampled_from("cruds"))  # fmt: skip
@settings(max_examples=examples(300), deadline=None)
def test_covers_and_allows_follow_type_and_permissions(
    held_type: str, held: str, asked_type: str, asked: str, resource_type: str, permission: str
) -> None:
    mine, theirs = Scope(held_type, held), Scope(asked_type, asked)
    same_type = held_type == "*" or held_type == asked_type
    assert mine.covers(theirs) == (same_type and set(asked) <= set(held))
    expected = held_type in ("*", resource_type) and permission in held
    assert allowed([mine], resource_type, permission) == expected
    # Whatever a covered scope allows, the covering one allows too.
    if mine.covers(theirs):
        assert not allowed([theirs], resource_type, permission) or allowed(
            [mine], resource_type, permission
        )
