"""The validator on HL7's own R5 examples: they pass; mutated copies fail with clear messages.
(The mutations of this product's own resources are in test_fhir_validate_mutations.py.)"""

from __future__ import annotations

import copy
import tracemalloc

import depth
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ohx_dagster.fhir.validation import (
    Problem,
    iter_examples,
    model_problems,
    product_problems,
    profile_problems,
    sample,
    schema_problems,
    validate_resource,
    validate_resources,
)
from ohx_dagster.fhir.validation.profile import forget_invariant_outcomes
from ohx_dagster.fhir.validation.schema import forget_valid_values

HEARTRATE = "http://hl7.org/fhir/StructureDefinition/heartrate"
OFFICIAL = [
    "Observation-heart-rate.json",
    "Observation-blood-pressure.json",
    "Observation-ekg.json",
    "Observation-body-temperature.json",
    "Observation-body-height.json",
    "Observation-satO2.json",
    "Observation-respiratory-rate.json",
    "Observation-vitals-panel.json",
    "DiagnosticReport-f201.json",
    "Device-example.json",
]


@pytest.fixture(scope="module")
def examples() -> dict[str, dict]:
    found = {n: r for prefix in OFFICIAL for n, r in iter_examples(prefix.removesuffix(".json"))}
    missing = [name for name in OFFICIAL if name not in found]
    assert not missing, f"official examples not in hl7.fhir.r5.examples: {missing}"
    return found


def _messages(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_examples_pass_every_fhir_layer(examples: dict[str, dict], name: str) -> None:
    problems = [p for p in validate_resource(examples[name]) if p.layer != "product"]
    assert problems == [], _messages(problems)


def test_official_examples_break_only_the_rule_of_a_ucum_origin(examples: dict[str, dict]) -> None:
    """R5 allows a SampledData origin without a unit (HL7's ekg example has none); this product
    requires UCUM there, and nothing else of its rules fails on the official examples."""
    problems = [p for name in OFFICIAL for p in product_problems(examples[name])]
    assert [(p.resource_id, p.message) for p in problems] == [
        ("ekg", message)
        for index in range(3)
        for message in (
            f"Observation.component[{index}].valueSampledData.origin.system: None found; "
            "expected http://unitsofmeasure.org",
            f"Observation.component[{index}].valueSampledData.origin.code: missing; "
            "expected the UCUM code of the data's unit",
        )
    ]


def test_wrong_code_fails_the_claimed_heartrate_profile(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    resource["meta"]["profile"] = [HEARTRATE]
    assert validate_resource(resource) == []
    resource["code"]["coding"][0]["code"] = "8480-6"
    problems = profile_problems(resource)
    assert "Observation.code.coding:HeartRateCode: 0 found, at least 1 required [heartrate]" in (
        p.message for p in problems
    ), _messages(problems)


def test_heart_rate_in_the_wrong_unit_fails(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    resource["valueQuantity"]["code"] = "{beats}/min"
    problems = validate_resource(resource)
    assert any(
        "valueQuantity.code: '{beats}/min' found, fixed value '/min' required" in p.message
        for p in problems
    ), _messages(problems)


def test_missing_status_fails_model_and_structure(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    del resource["status"]
    assert any("status" in p.message and "required" in p.message for p in model_problems(resource))
    # fhir.schema.json marks only `code` as required; the StructureDefinition knows better.
    assert schema_problems(resource) == []
    assert any(
        "Observation.status: 0 found, at least 1 required" in p.message
        for p in profile_problems(resource)
    )


def test_sampled_data_with_r4_period_fails(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-ekg.json"])
    sampled = resource["component"][0]["valueSampledData"]
    sampled["period"] = sampled.pop("interval")
    del sampled["intervalUnit"]
    problems = validate_resource(resource)
    text = _messages(problems)
    assert "('period' was unexpected)" in text
    assert "valueSampledData.period: Extra inputs are not permitted" in text
    assert "intervalUnit" in text  # R5 requires the unit of the interval


def test_values_remembered_valid_never_hide_an_error(examples: dict[str, dict]) -> None:
    """The schema layer remembers values that passed a definition; a value that differs in one
    element, or only in its JSON type (True == 1 in Python), is evaluated again."""
    forget_valid_values()
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    assert schema_problems(resource) == []
    coding = copy.deepcopy(resource)
    coding["code"]["coding"][0]["userSelected"] = "yes"
    assert "code.coding.0.userSelected: 'yes' is not of type 'boolean'" in _messages(
        schema_problems(coding)
    )
    counted = copy.deepcopy(resource)
    counted["valueQuantity"]["value"] = 1
    assert schema_problems(counted) == []
    counted["valueQuantity"]["value"] = True
    assert "valueQuantity.value: True is not of type 'number'" in _messages(
        schema_problems(counted)
    )
    assert schema_problems(resource) == []


def test_sampled_data_with_interval_and_offsets_fails_sdd_1(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-ekg.json"])
    resource["component"][0]["valueSampledData"]["offsets"] = "0 10 20"
    problems = profile_problems(resource)
    assert any("invariant sdd-1 failed" in p.message for p in problems), _messages(problems)


def test_diastolic_coded_as_heart_rate_fails_the_bp_profile(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-blood-pressure.json"])
    diastolic = next(c for c in resource["component"] if c["code"]["coding"][0]["code"] == "8462-4")
    diastolic["code"]["coding"][0]["code"] = "8867-4"
    problems = validate_resource(resource)
    assert [p.message for p in problems] == [
        "Observation.component:DiastolicBP: 0 found, at least 1 required [bp]",
        "Observation.component[1].valueQuantity.code: 'mm[Hg]' ([mass] / [length] / [time] ** 2) "
        "is not a unit of 8867-4 Heart rate; expected a unit of the dimension of '/min' "
        "(1 / [time])",
    ]


def test_date_time_without_offset_fails(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    resource["effectiveDateTime"] = "1999-07-02T10:30:00"
    problems = validate_resource(resource)
    assert any(
        p.message.startswith("effectiveDateTime") and "regex" in p.message for p in problems
    ), _messages(problems)


def test_period_ending_before_it_starts_fails_per_1(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    del resource["effectiveDateTime"]
    resource["effectivePeriod"] = {"start": "2024-01-02T10:00:00Z", "end": "2024-01-01T10:00:00Z"}
    problems = profile_problems(resource)
    assert any("invariant per-1 failed" in p.message for p in problems), _messages(problems)


def test_vital_sign_without_vital_signs_category_fails(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    resource["category"][0]["coding"][0]["code"] = "activity"
    problems = profile_problems(resource)
    assert [p.message for p in problems] == [
        "Observation.category:VSCat: 0 found, at least 1 required [vitalsigns]"
    ]


def test_oxygen_saturation_without_2708_6_fails(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-satO2.json"])
    resource["code"]["coding"] = [c for c in resource["code"]["coding"] if c["code"] != "2708-6"]
    problems = profile_problems(resource)
    assert any("OxygenSatCode: 0 found" in p.message for p in problems), _messages(problems)


def test_unknown_profile_is_a_problem(examples: dict[str, dict]) -> None:
    resource = copy.deepcopy(examples["Observation-heart-rate.json"])
    resource["meta"]["profile"] = ["http://example.org/StructureDefinition/nope"]
    assert [p.message for p in profile_problems(resource)] == [
        "unknown profile http://example.org/StructureDefinition/nope"
    ]


def test_sample_keeps_every_type_and_profile(examples: dict[str, dict]) -> None:
    resources = [examples[name] for name in OFFICIAL] * 5
    strata = {(r["resourceType"], str(r.get("meta", {}).get("profile"))) for r in resources}
    chosen = sample(resources, len(strata) + 2)
    assert len(chosen) == len(strata) + 2
    assert {(r["resourceType"], str(r.get("meta", {}).get("profile"))) for r in chosen} == strata
    assert sample(resources, 12) == sample(resources, 12)  # deterministic


def test_validate_resources_reports_each_broken_resource(examples: dict[str, dict]) -> None:
    broken = copy.deepcopy(examples["Observation-ekg.json"])
    broken["component"][0]["valueSampledData"]["offsets"] = "0 10"
    problems = validate_resources([examples["Observation-heart-rate.json"], broken])
    assert problems and {p.resource_id for p in problems} == {"ekg"}


# -- Reference invariants answered without the engine (profile.PLAINLY_HOLDS) ---------------------

_REFERENCE_PARTS = {
    "reference": st.sampled_from(["Patient/p1", "Observation/o-1", "#c1", "#", "", "urn:uuid:1"]),
    "display": st.sampled_from(["ring", ""]),
    "identifier": st.just({"system": "urn:ohx:patient", "value": "u1"}),
    "type": st.just("Patient"),
    "extension": st.just([{"url": "http://example.org/x", "valueString": "x"}]),
    "_reference": st.just({"extension": [{"url": "http://example.org/y", "valueCode": "z"}]}),
}


@settings(max_examples=depth.examples(300), deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(_REFERENCE_PARTS)), st.none(), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: _REFERENCE_PARTS[k] for k in keys})
    ),
    st.booleans(),
)
def test_what_is_answered_without_the_engine_is_what_the_engine_answers(value, contained) -> None:
    """Whenever a shortcut says a Reference invariant holds, FHIRPath (fhirpathpy, the R5
    expression from the packages) says so too; and both shortcuts are R5's own expressions."""
    from fhirpathpy.engine.nodes import ResourceNode

    from ohx_dagster.fhir.validation.fhirpath import compiled
    from ohx_dagster.fhir.validation.profile import PLAINLY_HOLDS
    from ohx_dagster.fhir.validation.structure import structure

    expressions = {expression for _, _, expression in structure("Reference").invariants}
    assert set(PLAINLY_HOLDS) <= expressions and len(PLAINLY_HOLDS) == 2
    root = {"resourceType": "Provenance", "target": [value]}
    if contained:
        root["contained"] = [{"resourceType": "Device", "id": "c1"}]
    variables = {"resource": root, "rootResource": root}
    for expression, plainly in PLAINLY_HOLDS.items():
        if plainly(value):
            result = compiled(expression)(ResourceNode.create_node(value, "Reference"), variables)
            assert all(r is True for r in result), (expression, value, result)


def test_remembered_values_keep_their_own_size(examples: dict[str, dict]) -> None:
    """orjson's bytes keep the 4 KiB buffer they were written into; the validator's memories of
    valid values and invariant outcomes keep a copy of each value's own length (about 3 KiB for
    each of these resources, the whole resource's JSON among them; 25 KiB with the buffers), so
    they stay a few MB when full. With the buffers they grew 0.33 MiB for every day `ohx import`
    published, toward 200 MB."""
    forget_valid_values()
    forget_invariant_outcomes()
    resource = examples["Observation-heart-rate.json"]
    validate_resource(resource)  # the packages and definitions loaded (kept for the process)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(200):  # a heart rate a minute, as a day's resources differ
            changed = copy.deepcopy(resource)
            changed["valueQuantity"]["value"] = 40 + n % 100
            changed["effectiveDateTime"] = f"1999-07-02T{n // 60:02d}:{n % 60:02d}:00Z"
            assert [p for p in validate_resource(changed) if p.layer != "product"] == []
            del changed
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / 200 < 6 * 1024, grown / 200
