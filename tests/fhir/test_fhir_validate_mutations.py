"""The validator misses nothing: resources built by the product's own builders are valid, and each
realistic mutation of them is caught with a message naming the element and what was expected.

Per resource: validate_resource (model, schema, profiles with required bindings, terminology,
SampledData arithmetic, product rules); per output: validate_output (references, ids)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from depth import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohx_dagster.core.models import HealthDataType
from ohx_dagster.fhir.validation import (
    Problem,
    sampled_data_problems,
    validate_output,
    validate_resource,
)

PATIENTS = frozenset({"Patient/p-001"})  # the FHIR server's Patients the output links to
HOUR_US = 1_775_001_600_000_000  # 2026-04-01T00:00Z


def product_resources(
    *,
    series_kind: HealthDataType = HealthDataType.HEART_RATE,
    series_ts_us: np.ndarray | None = None,
    series_values: np.ndarray | None = None,
    ecg_samples: np.ndarray | None = None,
    ecg_rate_hz: float = 130.0,
) -> dict[str, dict[str, Any]]:
    """The product's resources of one person and hour, built by its own builders (the one place
    that knows their signatures): name -> resource."""
    from ohx_dagster.core.models import HealthSyncConfig
    from ohx_dagster.fhir import common, ecg, measurements, observations, series, sleep, workouts

    config = HealthSyncConfig(user_id="u1", provider="simulated", fhir_patient_id="p-001")
    ts = HOUR_US + np.arange(0, 600, 5, dtype="int64") * 1_000_000
    values = 60 + np.arange(len(ts)) % 7
    if series_ts_us is not None:
        ts, values = HOUR_US + series_ts_us, series_values
    hourly = {"provider": "simulated", "device_id": "watch-1", "hour_us": HOUR_US}
    heart = series.series_observation(
        series_kind, config, **hourly, ts_us=ts, values=values, offset_min=60
    )
    rr_ts = HOUR_US + np.cumsum(np.array([800, 810, 790, 805, 820])) * 1000
    rr = series.series_observation(
        HealthDataType.RR_INTERVALS,
        config,
        **hourly,
        ts_us=rr_ts,
        values=np.array([800, 810, 790, 805, 820.5]),
        offset_min=60,
    )
    bucket = {"provider": "simulated", "user_id": "u1", "level": "hourly", "utc_offset_min": 60}
    bucket |= {"bucket_start_us": HOUR_US, "bucket_end_us": HOUR_US + 3_600_000_000}
    statistics = {"mean": 63.0, "min": 60.0, "max": 66.0, "sum": None, "count": 120}
    aggregate = observations.aggregate_observation(
        {**bucket, **statistics, "data_type": "heart_rate"},
        config,
        [{"reference": f"Observation/{heart['id']}"}],
    )
    at = {"provider": "simulated", "ts_us": HOUR_US + 60_000_000, "utc_offset_min": 60}
    bp = measurements.measurement_observation(
        {
            **at,
            "data_type": "blood_pressure",
            "device_id": "cuff-1",
            "value": 120.0,
            "diastolic": 80.0,
        },
        config,
    )
    weight = measurements.measurement_observation(
        {**at, "data_type": "weight", "device_id": "scale-1", "value": 71.5, "diastolic": None},
        config,
    )
    samples = np.round(np.sin(np.arange(260) / 10) * 500, 1) if ecg_samples is None else ecg_samples
    waveform, report = ecg.ecg_resources(
        {**at, "device_id": "watch-1", "samples": samples, "sampling_rate_hz": ecg_rate_hz},
        config,
        lambda user, start, end: [{"reference": f"Observation/{heart['id']}"}],
    )
    # A night of 7 h: 15 min awake, deep, light, 4 min awake, REM (ohx_dagster/core/sessions.py).
    stages = [0, 900, 4, 900, 6300, 1, 6300, 18000, 2, 18000, 18240, 4, 18240, 25200, 3]
    night = sleep.sleep_observation(
        {**at, "ts_us": HOUR_US + 25_200_000_000, "data_type": "sleep", "device_id": "watch-1",
         "value": 404.0, "duration_s": 25_200.0, "samples": stages},
        config,
    )  # fmt: skip
    run = workouts.workout_resources(
        {**at, "ts_us": HOUR_US + 2_700_000_000, "data_type": "workout", "device_id": "watch-1",
         "value": 42.0, "duration_s": 2_700.0, "context": "running",
         "samples": [410.5, 7_200.0, 148.0, 171.0]},
        config,
    )  # fmt: skip
    devices = {}
    for name in ("watch-1", "cuff-1", "scale-1"):
        device, association = common.device("simulated", config, name)
        devices |= {f"device-{name}": device, f"association-{name}": association}
    named = {"series": heart, "rr": rr, "aggregate": aggregate, "bp": bp, "weight": weight}
    named["sleep"] = night
    named |= dict(zip(["run", "run-activity", "run-duration", "run-energy", "run-distance",
                       "run-mean-hr", "run-max-hr"], run, strict=True))  # fmt: skip
    return {**named, "waveform": waveform, "report": report, **devices}


# -- helpers --------------------------------------------------------------------------------------


def _listing(problems: list[Problem]) -> str:
    return "\n".join(map(str, problems)) or "(no problems)"


def every_problem(output: dict[str, dict[str, Any]], *, changed: set[str] | None = None) -> list:
    """Per-resource problems of `changed` (default: all) plus the output's reference problems."""
    names = output if changed is None else changed
    per_resource = [p for name in names for p in validate_resource(output[name])]
    return [*per_resource, *validate_output(output.values(), external=PATIENTS)]


@pytest.fixture(scope="module")
def product() -> dict[str, dict[str, Any]]:
    return product_resources()


def test_the_products_resources_are_valid(product: dict[str, dict[str, Any]]) -> None:
    problems = every_problem(product)
    assert problems == [], _listing(problems)


# -- the mutation table ---------------------------------------------------------------------------

Change = Callable[[dict[str, dict[str, Any]]], None]


@dataclass(frozen=True)
class Mutation:
    kind: str  # what an independent check would call the defect
    target: str  # the resource (by name) the problem is reported on
    change: Change  # edits the output in place
    path: str  # the element the problem must name
    expected: str  # ... and what it must say was expected


def _set(target: str, path: str, value: Any) -> Change:
    """Sets the element at a dotted path ("valueSampledData.origin.code", "name.0.type")."""

    def change(output: dict[str, dict[str, Any]]) -> None:
        node: Any = output[target]
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


def _data(target: str, edit: Callable[[str], str]) -> Change:
    def change(output: dict[str, dict[str, Any]]) -> None:
        sampled = output[target]["valueSampledData"]
        sampled["data"] = edit(sampled["data"])

    return change


def _both(*changes: Change) -> Change:
    def change(output: dict[str, dict[str, Any]]) -> None:
        for each in changes:
            each(output)

    return change


def _remove(name: str) -> Change:
    return lambda output: output.pop(name)


def _copy_as(source: str, name: str, **overrides: Any) -> Change:
    def change(output: dict[str, dict[str, Any]]) -> None:
        output[name] = {**copy.deepcopy(output[source]), **overrides}

    return change


def _id_of(name: str) -> Callable[[dict[str, dict[str, Any]]], str]:
    return lambda output: output[name]["id"]


def _reference(target: str, path: str, to: Callable[[dict], dict[str, Any]]) -> Change:
    def change(output: dict[str, dict[str, Any]]) -> None:
        _set(target, path, to(output))(output)

    return change


def _point_result_to_device(output: dict[str, dict[str, Any]]) -> None:
    device = output["device-watch-1"]["id"]
    output["report"]["result"].append({"reference": f"Device/{device}"})


_OBSERVATION_STATUS = "one of amended, cancelled, corrected, entered-in-error, final, preliminary"
_STATISTICS = "http://hl7.org/fhir/observation-statistics"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_UCUM = "http://unitsofmeasure.org"
SD = "valueSampledData"

MUTATIONS = [
    # terminology: required bindings of the R5 core StructureDefinitions
    Mutation(
        "status outside its value set",
        "series",
        _set("series", "status", "done"),
        "Observation.status",
        f"'done' is not in the value set http://hl7.org/fhir/ValueSet/observation-status "
        f"(required binding); expected {_OBSERVATION_STATUS}",
    ),
    Mutation(
        "report status outside its value set",
        "report",
        _set("report", "status", "complete"),
        "DiagnosticReport.status",
        "not in the value set http://hl7.org/fhir/ValueSet/diagnostic-report-status",
    ),
    Mutation(
        "device status outside its value set",
        "device-watch-1",
        _set("device-watch-1", "status", "on"),
        "Device.status",
        "expected one of active, entered-in-error, inactive",
    ),
    Mutation(
        "Device.name.type outside its value set",
        "device-watch-1",
        _set("device-watch-1", "name.0.type", "friendly"),
        "Device.name[0].type",
        "expected one of patient-reported-name, registered-name, user-friendly-name",
    ),
    Mutation(
        "Quantity.comparator outside its value set",
        "weight",
        _set("weight", "valueQuantity.comparator", "~"),
        "Observation.valueQuantity.comparator",
        "quantity-comparator (required binding); expected one of <, <=, >, >=, ad",
    ),
    Mutation(
        "intervalUnit not a UCUM code",
        "series",
        _set("series", f"{SD}.intervalUnit", "seconds"),
        f"Observation.{SD}.intervalUnit",
        "ucum-units (required binding); expected a valid UCUM code",
    ),
    # terminology: the vital-signs profiles' bindings and fixed units
    Mutation(
        "body weight in a unit outside the bodyweight profile's value set",
        "weight",
        _set("weight", "valueQuantity.code", "[lb_us]"),
        "Observation.valueQuantity.code",
        "ucum-bodyweight (required binding); expected one of [lb_av], g, kg [bodyweight]",
    ),
    Mutation(
        "heart rate in a unit other than the profile's fixed /min",
        "aggregate",
        _set("aggregate", "valueQuantity.code", "{beats}/min"),
        "Observation.valueQuantity.code",
        "'{beats}/min' found, fixed value '/min' required [heartrate]",
    ),
    Mutation(
        "vital-sign component in a unit outside ucum-vitals-common",
        "aggregate",
        _set("aggregate", "component.0.valueQuantity.code", "/s"),
        "Observation.component[0].valueQuantity",
        "ucum-vitals-common (required binding); expected one of %, /min, Cel",
    ),
    # terminology: code systems of the packages (core and hl7.terminology)
    Mutation(
        "category code not in observation-category",
        "waveform",
        _set("waveform", "category.0.coding.0.code", "vital-sign"),
        "Observation.category[0].coding[0].code",
        f"'vital-sign' is not a code of {_CATEGORY}; expected one of activity, exam",
    ),
    Mutation(
        "statistic code not in observation-statistics",
        "aggregate",
        _set("aggregate", "component.0.code.coding.0.code", "mean"),
        "Observation.component[0].code.coding[0].code",
        f"'mean' is not a code of {_STATISTICS}; expected one of 20-percent",
    ),
    Mutation(
        "statistic with a display of another code",
        "aggregate",
        _set("aggregate", "component.1.code.coding.0.display", "Maximum"),
        "Observation.component[1].code.coding[0].display",
        f"'Maximum' is not a display of {_STATISTICS}#minimum; expected 'minimum'",
    ),
    Mutation(
        "ECG section code not in v2-0074",
        "report",
        _set("report", "category.0.coding.0.code", "ECG"),
        "DiagnosticReport.category[0].coding[0].code",
        f"'ECG' is not a code of {_V2_0074}; expected one of AU, BG",
    ),
    Mutation(
        "ECG report in a section other than Electrocardiac (the design card's CG)",
        "report",
        _set("report", "category.0.coding.0.code", "CG"),
        "DiagnosticReport.category",
        f"{_V2_0074}#CG found; expected {_V2_0074}#EC",
    ),
    # UCUM
    Mutation(
        "non-UCUM unit on a series",
        "series",
        _set("series", f"{SD}.origin.code", "bpm"),
        f"Observation.{SD}.origin.code",
        "'bpm' is not a valid UCUM code (unexpected character 'p' at column 2); expected a UCUM",
    ),
    Mutation(
        "non-UCUM unit on RR intervals",
        "rr",
        _set("rr", f"{SD}.origin.code", "msec"),
        f"Observation.{SD}.origin.code",
        "'msec' is not a valid UCUM code",
    ),
    Mutation(
        "non-standard ECG unit: microvolt",
        "waveform",
        _set("waveform", f"{SD}.origin.code", "microvolt"),
        f"Observation.{SD}.origin.code",
        "'microvolt' is not a valid UCUM code",
    ),
    Mutation(
        "non-standard ECG unit: µV",
        "waveform",
        _set("waveform", f"{SD}.origin.code", "µV"),
        f"Observation.{SD}.origin.code",
        "'µV' is not a valid UCUM code (unexpected character 'µ' at column 1)",
    ),
    Mutation(
        "ECG in a UCUM unit that is no voltage",
        "waveform",
        _set("waveform", f"{SD}.origin.code", "mm[Hg]"),
        f"Observation.{SD}.origin.code",
        "'mm[Hg]' is not a UCUM voltage; expected uV, mV or V",
    ),
    Mutation(
        "SampledData.origin not UCUM",
        "waveform",
        _set("waveform", f"{SD}.origin.system", "http://example.org/units"),
        f"Observation.{SD}.origin.system",
        f"'http://example.org/units' found; expected {_UCUM}",
    ),
    Mutation(
        "UCUM quantity without a code",
        "weight",
        _set("weight", "valueQuantity.code", _DELETE),
        "Observation.valueQuantity.code",
        f"missing; expected a UCUM code (the system is {_UCUM})",
    ),
    Mutation(
        "unit of another dimension than the code's (unit/code mismatch)",
        "aggregate",
        _set("aggregate", "component.1.valueQuantity.code", "kg"),
        "Observation.component[1].valueQuantity.code",
        "'kg' ([mass]) is not a unit of 8867-4 Heart rate; expected a unit of the dimension of "
        "'/min' (1 / [time])",
    ),
    Mutation(
        "steps series in a rate unit",
        "series",
        _both(
            _set("series", "code", {"coding": [{"system": "http://loinc.org", "code": "55423-8"}]}),
            _set("series", "meta", _DELETE),
            _set("series", "category.0.coding.0.code", "activity"),
            _set("series", "category.0.coding.0.display", "Activity"),
        ),
        f"Observation.{SD}.origin.code",
        "'/min' (1 / [time]) is not a unit of 55423-8",
    ),
    # SampledData arithmetic
    Mutation(
        "non-numeric SampledData value",
        "series",
        _data("series", lambda d: d + " abc"),
        f"Observation.{SD}.data",
        "value 121 is 'abc'; expected decimals or E, U, L",
    ),
    Mutation(
        "SampledData values separated by commas",
        "series",
        _data("series", lambda d: d.replace(" ", ",", 1)),
        f"Observation.{SD}.data",
        "value 1 is '60,61'",
    ),
    Mutation(
        "SampledData values separated by two spaces",
        "series",
        _data("series", lambda d: d.replace(" ", "  ", 1)),
        f"Observation.{SD}.data",
        "values must be separated by single spaces (U+0020)",
    ),
    Mutation(
        "data count does not fit dimensions",
        "series",
        _set("series", f"{SD}.dimensions", 7),
        f"Observation.{SD}.data",
        "120 data points is not a multiple of dimensions (7); expected dimensions x samples",
    ),
    Mutation(
        "data count does not fit the offsets",
        "rr",
        _set("rr", f"{SD}.offsets", "0 810 1600"),
        f"Observation.{SD}.data",
        "5 data points for 3 offsets x 1 dimension(s); expected dimensions x samples = 3",
    ),
    Mutation(
        "decreasing offsets",
        "rr",
        _set("rr", f"{SD}.offsets", "0 810 700 2405 3225"),
        f"Observation.{SD}.offsets",
        "value 3 (700) is less than value 2 (810); expected non-decreasing offsets",
    ),
    Mutation(
        "non-numeric offsets",
        "rr",
        _set("rr", f"{SD}.offsets", "0 810 E 2405 3225"),
        f"Observation.{SD}.offsets",
        "value 3 is 'E'; expected decimals",
    ),
    Mutation(
        "zero interval",
        "series",
        _set("series", f"{SD}.interval", 0),
        f"Observation.{SD}.interval",
        "0 found; expected a number greater than 0",
    ),
    Mutation(
        "negative interval",
        "waveform",
        _set("waveform", f"{SD}.interval", -7.5),
        f"Observation.{SD}.interval",
        "-7.5 found; expected a number greater than 0",
    ),
    Mutation(
        "interval and offsets together",
        "rr",
        _set("rr", f"{SD}.interval", 800),
        f"Observation.{SD}",
        "invariant sdd-1 failed",
    ),
    Mutation(
        "neither interval nor offsets",
        "series",
        _set("series", f"{SD}.interval", _DELETE),
        f"Observation.{SD}",
        "invariant sdd-1 failed",
    ),
    Mutation(
        "zero factor",
        "waveform",
        _set("waveform", f"{SD}.factor", 0),
        f"Observation.{SD}.factor",
        "0 found; expected a non-zero factor",
    ),
    Mutation(
        "lower limit above the upper limit",
        "waveform",
        _both(
            _set("waveform", f"{SD}.lowerLimit", 3300), _set("waveform", f"{SD}.upperLimit", -3300)
        ),
        f"Observation.{SD}.lowerLimit",
        "3300 is above upperLimit (-3300); expected lowerLimit <= upperLimit",
    ),
    Mutation(
        "effectivePeriod ending before it starts",
        "series",
        _set("series", "effectivePeriod.end", "2026-03-31T23:00:00Z"),
        "Observation.effectivePeriod",
        "invariant per-1 failed",
    ),
    Mutation(
        "samples beyond effectivePeriod",
        "series",
        _set("series", f"{SD}.interval", 50),
        f"Observation.{SD}",
        "the last sample is 5950 s after effectivePeriod.start (120 samples every 50 s), past "
        "effectivePeriod.end at 595 s; expected every sample within effectivePeriod",
    ),
    Mutation(
        "ECG sampled at the wrong rate for its period",
        "waveform",
        _set("waveform", f"{SD}.interval", 15),
        f"Observation.{SD}",
        "the last sample is 3.885 s after effectivePeriod.start (260 samples every 15 ms), past "
        "effectivePeriod.end at 2 s",
    ),
    Mutation(
        "SampledData origin without a value",
        "series",
        _set("series", f"{SD}.origin.value", _DELETE),
        f"Observation.{SD}.origin.value",
        "missing; expected the value a data point of 0 stands for",
    ),
    # structure and profiles
    Mutation(
        "wrong code for the claimed profile",
        "aggregate",
        _set("aggregate", "code.coding.0.code", "8480-6"),
        "Observation.code.coding:HeartRateCode",
        "0 found, at least 1 required [heartrate]",
    ),
    Mutation(
        "blood pressure without its diastolic component",
        "bp",
        lambda output: output["bp"]["component"].pop(),
        "Observation.component:DiastolicBP",
        "0 found, at least 1 required [bp]",
    ),
    Mutation(
        "profile of another vital sign claimed",
        "series",
        _set("series", "meta.profile", ["http://hl7.org/fhir/StructureDefinition/bodyweight"]),
        "Observation.code.coding:BodyWeightCode",
        "0 found, at least 1 required [bodyweight]",
    ),
    Mutation(
        "impossible dateTime (30 February)",
        "bp",
        _set("bp", "effectiveDateTime", "2026-02-30T10:00:00+01:00"),
        "effectiveDateTime",
        "day value is outside expected range",
    ),
    Mutation(
        "dateTime without a UTC offset",
        "weight",
        _set("weight", "effectiveDateTime", "2026-04-01T01:01:00"),
        "effectiveDateTime",
        "does not match",
    ),
    Mutation(
        "R4 SampledData.period",
        "waveform",
        _set("waveform", f"{SD}.period", 7.7),
        f"{SD}.period",
        "Extra inputs are not permitted",
    ),
    # references (validate_output over the whole output)
    Mutation(
        "unresolvable Device reference",
        "series",
        _remove("device-watch-1"),
        "Observation.device.reference",
        "does not resolve; expected Device",
    ),
    Mutation(
        "derivedFrom a series that is not published",
        "aggregate",
        _set("aggregate", "derivedFrom.0.reference", "Observation/0000"),
        "Observation.derivedFrom[0].reference",
        "'Observation/0000' does not resolve; expected Observation '0000' in the output or among",
    ),
    Mutation(
        "subject not among the known Patients",
        "bp",
        _set("bp", "subject", {"reference": "Patient/p-002"}),
        "Observation.subject.reference",
        "'Patient/p-002' does not resolve",
    ),
    Mutation(
        "report result pointing to a Device",
        "report",
        _point_result_to_device,
        "DiagnosticReport.result[2]",
        "points to Device; expected a reference to Observation (targetProfile of "
        "DiagnosticReport.result)",
    ),
    Mutation(
        "vital sign about a Group (the profile allows only a Patient)",
        "bp",
        _set(
            "bp",
            "subject",
            {"identifier": {"system": "urn:ohx:group", "value": "g1"}, "type": "Group"},
        ),
        "Observation.subject",
        "points to Group; expected a reference to Patient (targetProfile of Observation.subject "
        "in bp)",
    ),
    Mutation(
        "logical reference without a system",
        "series",
        _set("series", "subject", {"identifier": {"value": "p-001"}}),
        "Observation.subject.identifier",
        "a logical reference without system; expected identifier.system and identifier.value",
    ),
    Mutation(
        "malformed reference",
        "series",
        _set("series", "subject", {"reference": "Patient/"}),
        "Observation.subject.reference",
        "'Patient/' is not a reference; expected 'Type/id'",
    ),
    Mutation(
        "reference type contradicting the reference",
        "weight",
        _reference(
            "weight",
            "device",
            lambda o: {"reference": f"Device/{o['device-scale-1']['id']}", "type": "DeviceMetric"},
        ),
        "Observation.device.type",
        "'DeviceMetric' but the reference points to a Device; expected equal",
    ),
    Mutation(
        "urn:uuid reference outside a Bundle",
        "series",
        _set("series", "device", {"reference": "urn:uuid:1f3b3c2e-8c53-4a8e-9d3b-2f0b8e9a1c11"}),
        "Observation.device.reference",
        "outside a Bundle; expected 'Type/id'",
    ),
    Mutation(
        "duplicated ids",
        "copy",
        _copy_as("series", "copy", identifier=[{"system": "urn:ohx:fhir", "value": "other"}]),
        "Observation.id",
        "is used by more than one Observation; expected ids unique per resource type",
    ),
    # product rules: a night's sleep (fhir/sleep.py)
    Mutation(
        "asleep longer than the night",
        "sleep",
        _set("sleep", "valueQuantity.value", 480),
        "Observation.valueQuantity",
        "480 min asleep in a session of 420 min (effectivePeriod); expected at most the session",
    ),
    Mutation(
        "sleep stages adding up to more than the night",
        "sleep",
        _set("sleep", "component.1.valueQuantity.value", 300),
        "Observation.component",
        "expected at most the session",
    ),
    Mutation(
        "sleep stage in a unit that is not a time",
        "sleep",
        _set("sleep", "component.0.valueQuantity.code", "kg"),
        "Observation.component[0].valueQuantity.code",
        "'kg' ([mass]) is not a unit of 93831-6 Deep sleep duration",
    ),
    Mutation(
        "sleep stage in hours stated as minutes' worth",
        "sleep",
        _set("sleep", "component.2.valueQuantity.code", "h"),
        "Observation.component",
        "expected at most the session",
    ),
    # product rules: a workout (fhir/workouts.py)
    Mutation(
        "exercising longer than the workout",
        "run-duration",
        _set("run-duration", "valueQuantity.value", 50),
        "Observation.valueQuantity",
        "50 min exercising in a session of 45 min (effectivePeriod); expected at most the session",
    ),
    Mutation(
        "workout energy in a unit that is not energy",
        "run-energy",
        _set("run-energy", "valueQuantity.code", "kg"),
        "Observation.valueQuantity.code",
        "is not a unit of 55424-6 Calories burned in unspecified time Pedometer",
    ),
    Mutation(
        "workout panel naming a member not in the output",
        "run",
        _set("run", "hasMember.0.reference", "Observation/not-in-the-output"),
        "Observation.hasMember[0].reference",
        "'Observation/not-in-the-output' does not resolve",
    ),
    Mutation(
        "duplicated identifiers",
        "copy",
        _copy_as("series", "copy", id="another-id"),
        "Observation.identifier[0]",
        "expected identifiers unique per resource type",
    ),
]


def test_the_table_covers_every_kind_the_independent_check_found() -> None:
    kinds = {m.kind for m in MUTATIONS}
    for kind in (
        "status outside its value set",
        "non-UCUM unit on a series",
        "non-numeric SampledData value",
        "non-standard ECG unit: microvolt",
        "unresolvable Device reference",
        "data count does not fit dimensions",
    ):
        assert kind in kinds
    assert len(MUTATIONS) == len(kinds)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.kind for m in MUTATIONS])
def test_mutation_is_caught_and_named(
    product: dict[str, dict[str, Any]], mutation: Mutation
) -> None:
    output = copy.deepcopy(product)
    mutation.change(output)
    changed = {name for name in output if output[name] != product.get(name)}
    assert changed or output.keys() != product.keys(), "the mutation changed nothing"
    problems = every_problem(output, changed=changed)
    target = output[mutation.target]["id"]
    named = [p for p in problems if p.path == mutation.path and p.resource_id == target]
    assert any(mutation.expected in p.message for p in named), (
        f"{mutation.kind}: no problem at {mutation.path} saying {mutation.expected!r}\n"
        + _listing(problems)
    )


# -- resources the product is about to publish: the checks are generic ----------------------------


def _patient_device_provenance(product: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    watch = product["device-watch-1"]["id"]
    series_id = product["series"]["id"]
    return {
        "patient": {
            "resourceType": "Patient",
            "id": "p-001",
            "identifier": [{"system": "urn:ohx:patient", "value": "u1"}],
            "gender": "female",
        },
        "association": {
            "resourceType": "DeviceAssociation",
            "id": "watch-of-u1",
            "device": {"reference": f"Device/{watch}"},
            "subject": {"identifier": {"system": "urn:ohx:patient", "value": "u1"}},
            "status": {
                "coding": [
                    {"system": "http://hl7.org/fhir/deviceassociation-status", "code": "attached"}
                ]
            },
        },
        "provenance": {
            "resourceType": "Provenance",
            "id": "series-from-watch",
            "target": [{"reference": f"Observation/{series_id}"}],
            "recorded": "2026-04-01T01:00:00+01:00",
            "agent": [{"who": {"reference": f"Device/{watch}"}}],
            "entity": [{"role": "source", "what": {"reference": f"Device/{watch}"}}],
        },
    }


def test_patient_association_and_provenance_are_valid(product: dict[str, dict[str, Any]]) -> None:
    extra = _patient_device_provenance(product)
    problems = [p for resource in extra.values() for p in validate_resource(resource)]
    problems += validate_output([*product.values(), *extra.values()])
    assert problems == [], _listing(problems)


@pytest.mark.parametrize(
    ("target", "path", "value", "where", "expected"),
    [
        ("patient", "gender", "f", "Patient.gender", "expected one of female, male, other"),
        (
            "association",
            "status",
            {
                "coding": [
                    {"system": "http://hl7.org/fhir/deviceassociation-status", "code": "worn"}
                ]
            },
            "DeviceAssociation.status",
            "deviceassociation-status (required binding); expected a coding with one of attached",
        ),
        (
            "provenance",
            "entity",
            [{"role": "origin", "what": {"reference": "Device/x"}}],
            "Provenance.entity[0].role",
            "expected one of instantiates, quotation, removal, revision, source",
        ),
        (
            "provenance",
            "target",
            [{"reference": "Observation/not-published"}],
            "Provenance.target[0].reference",
            "does not resolve",
        ),
        (
            "provenance",
            "agent",
            [{"who": {"reference": "Observation/x"}}],
            "Provenance.agent[0].who",
            "points to Observation; expected a reference to CareTeam | Device | Organization",
        ),
        (
            "association",
            "device",
            {"reference": "Patient/p-001"},
            "DeviceAssociation.device",
            "points to Patient; expected a reference to Device",
        ),
    ],
)
def test_mutations_of_upcoming_resources_are_caught(
    product: dict[str, dict[str, Any]],
    target: str,
    path: str,
    value: Any,
    where: str,
    expected: str,
) -> None:
    extra = _patient_device_provenance(product)
    extra[target][path] = value
    problems = [
        *validate_resource(extra[target]),
        *validate_output([*product.values(), *extra.values()]),
    ]
    assert any(p.path == where and expected in p.message for p in problems), _listing(problems)


def test_logical_references_by_identifier_and_external_ones_are_accepted(
    product: dict[str, dict[str, Any]],
) -> None:
    output = copy.deepcopy(product)
    output["series"]["subject"] = {"identifier": {"system": "urn:ohx:patient", "value": "u1"}}
    output["bp"]["subject"] = {"reference": "https://fhir.example.org/r5/Patient/p-001"}
    external = {*PATIENTS, "https://fhir.example.org/r5/Patient/p-001"}
    assert validate_output(output.values(), external=external) == []
    problems = validate_output(output.values(), external=PATIENTS)
    assert [p.path for p in problems] == ["Observation.subject.reference"]


def test_references_in_extensions_and_contained_resources_are_checked(
    product: dict[str, dict[str, Any]],
) -> None:
    output = copy.deepcopy(product)
    coding = output["series"]["code"]["coding"][0]
    coding["extension"] = [{"url": "urn:ohx:x", "valueReference": {"reference": "Device/gone"}}]
    report = output["report"]
    heart_rate = {**copy.deepcopy(product["series"]), "id": "hr"}
    del heart_rate["device"]
    report["contained"] = [heart_rate, {**copy.deepcopy(product["device-cuff-1"]), "id": "cuff"}]
    report["result"] += [{"reference": "#hr"}, {"reference": "#cuff"}, {"reference": "#gone"}]
    problems = validate_output(output.values(), external=PATIENTS)
    assert {(p.path, p.message.split(": ", 1)[1]) for p in problems} == {
        (
            "Observation.code.coding[0].extension[0].valueReference.reference",
            "'Device/gone' does not resolve; expected Device 'gone' in the output or among the "
            "external resources",
        ),
        (
            "DiagnosticReport.result[3]",
            "points to Device; expected a reference to Observation (targetProfile of "
            "DiagnosticReport.result)",
        ),
        (
            "DiagnosticReport.result[4].reference",
            "'#gone' names no contained resource; expected one of cuff, hr",
        ),
    }


def test_references_inside_a_bundle_resolve_by_full_url(product: dict[str, dict[str, Any]]) -> None:
    urls = {
        f"{r['resourceType']}/{r['id']}": f"urn:uuid:{i:08d}-0000-4000-8000-000000000000"
        for i, r in enumerate(product.values())
    }
    entries = []
    for resource in copy.deepcopy(list(product.values())):
        for key in ("device", "derivedFrom", "result"):
            value = resource.get(key)
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, dict) and ref.get("reference") in urls:
                    ref["reference"] = urls[ref["reference"]]
        key = f"{resource['resourceType']}/{resource['id']}"
        request = {"method": "PUT", "url": f"{resource['resourceType']}?identifier=x"}
        entries.append({"fullUrl": urls[key], "resource": resource, "request": request})
    bundle = {"resourceType": "Bundle", "id": "tx", "type": "transaction", "entry": entries}
    assert validate_output([bundle], external=PATIENTS) == []
    broken = copy.deepcopy(bundle)
    broken["entry"][0]["resource"]["device"]["reference"] = "urn:uuid:no-such-entry"
    broken["entry"][2]["fullUrl"] = broken["entry"][1]["fullUrl"]
    messages = {(p.path, p.message.split(": ", 1)[1]) for p in validate_output([broken])}
    assert (
        "Observation.device.reference",
        "'urn:uuid:no-such-entry' matches no entry.fullUrl of the Bundle",
    ) in messages
    assert any(path == "Bundle.entry[2].fullUrl" for path, _ in messages), messages


def test_validate_output_is_linear_in_the_output(product: dict[str, dict[str, Any]]) -> None:
    """10 000 resources: every reference is looked up once (a set), never searched for."""
    series = product["series"]
    many = [
        {**series, "id": f"s{i}", "identifier": [{"system": "s", "value": str(i)}]}
        for i in range(10_000)
    ]
    many += [product["device-watch-1"]]
    assert validate_output(many, external=PATIENTS) == []
    many[5]["device"] = {"reference": "Device/gone"}
    assert [p.resource_id for p in validate_output(many, external=PATIENTS)] == ["s5"]


# -- SampledData arithmetic, property-based (hypothesis) -----------------------------------------

_SERIES_KINDS = st.sampled_from(
    [HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.RR_INTERVALS]
)
# Device readings: whole numbers or up to three decimals. (Arbitrary floats are not: the builders
# write float64 values at full precision, and a value under 0.1 can then take 18 digits after the
# point, more than the decimal type allows; see test_a_decimal_with_18_digits_after_the_point.)
_VALUES = st.one_of(
    st.integers(0, 250).map(float),
    st.integers(-(10**9), 10**9).map(lambda thousandths: thousandths / 1000),
)


@st.composite
def hours_of_samples(draw: st.DrawFn) -> tuple[HealthDataType, np.ndarray, np.ndarray]:
    """A type, sorted sample times within one hour (regular or not), and finite values."""
    count = draw(st.integers(1, 150))
    if draw(st.booleans()):  # evenly spaced: interval
        step = draw(st.integers(1, 3_600_000_000 // max(count, 1) - 1))
        ts = np.arange(count, dtype="int64") * step
    else:  # irregular: offsets
        ts = np.sort(
            np.array(
                draw(st.lists(st.integers(0, 3_599_999_999), min_size=count, max_size=count)),
                dtype="int64",
            )
        )
    values = np.array(draw(st.lists(_VALUES, min_size=count, max_size=count)), dtype="float64")
    return draw(_SERIES_KINDS), ts, values


def _series_of(drawn: tuple[HealthDataType, np.ndarray, np.ndarray]) -> dict[str, Any]:
    kind, ts, values = drawn
    return product_resources(series_kind=kind, series_ts_us=ts, series_values=values)["series"]


_HYPOTHESIS = settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_HYPOTHESIS
@given(hours_of_samples())
def test_every_series_the_builder_makes_is_valid(drawn) -> None:
    resource = _series_of(drawn)
    problems = validate_resource(resource)
    assert problems == [], _listing(problems)


@_HYPOTHESIS
@given(
    st.lists(st.integers(-4000, 4000), min_size=2, max_size=400),
    st.sampled_from([125.0, 130.0, 250.0, 256.0, 500.0, 1000.0]),
    st.integers(0, 3),
)
def test_every_ecg_the_builder_makes_is_valid(steps: list[int], rate: float, digits: int) -> None:
    samples = np.array(steps, dtype="float64") / 10**digits
    output = product_resources(ecg_samples=samples, ecg_rate_hz=rate)
    problems = [*validate_resource(output["waveform"]), *validate_resource(output["report"])]
    assert problems == [], _listing(problems)


def _sampled_messages(resource: dict[str, Any]) -> list[str]:
    return [p.message for p in sampled_data_problems(resource)]


@_HYPOTHESIS
@given(hours_of_samples(), st.integers(1, 5), st.booleans())
def test_a_data_count_off_dimensions_times_samples_is_caught(drawn, extra: int, drop: bool):
    resource = _series_of(drawn)
    sampled = resource[SD]
    points = sampled["data"].split(" ")
    if drop and len(points) > extra:
        points = points[:-extra]
    else:
        points += ["1"] * extra
    sampled["data"] = " ".join(points)
    messages = _sampled_messages(resource)
    if "offsets" in sampled:
        samples = len(sampled["offsets"].split(" "))
        wanted = (
            f"{SD}.data: {len(points)} data points for {samples} offsets x 1 dimension(s); "
            f"expected dimensions x samples = {samples}"
        )
        assert wanted in " ".join(messages), messages
    elif not drop:  # more samples than the period holds (its end is the last sample)
        assert any("past effectivePeriod.end" in m for m in messages), messages
    # fewer regular samples is a shorter series: nothing to catch


@_HYPOTHESIS
@given(hours_of_samples(), st.integers(2, 6))
def test_data_points_not_a_multiple_of_dimensions_are_caught(drawn, dimensions: int) -> None:
    resource = _series_of(drawn)
    sampled = resource[SD]
    points = len(sampled["data"].split(" "))
    sampled["dimensions"] = dimensions
    messages = _sampled_messages(resource)
    if "offsets" in sampled:
        wrong = points != dimensions * len(sampled["offsets"].split(" "))
        assert wrong == any("expected dimensions x samples" in m for m in messages), messages
    else:
        wrong = points % dimensions != 0
        assert wrong == any(
            f"{points} data points is not a multiple of dimensions ({dimensions})" in m
            for m in messages
        ), messages


_BAD_CHARACTERS = st.sampled_from(list("abcdfghijkXYZ,;_/#%"))


@_HYPOTHESIS
@given(hours_of_samples(), st.data())
def test_a_token_that_is_no_decimal_is_caught_at_its_position(drawn, data) -> None:
    resource = _series_of(drawn)
    sampled = resource[SD]
    points = sampled["data"].split(" ")
    index = data.draw(st.integers(0, len(points) - 1))
    where = data.draw(st.integers(0, len(points[index])))
    bad = points[index][:where] + data.draw(_BAD_CHARACTERS) + points[index][where:]
    points[index] = bad
    sampled["data"] = " ".join(points)
    assert f"{SD}.data: value {index + 1} is {bad!r}; expected decimals or E, U, L" in " ".join(
        _sampled_messages(resource)
    )


@_HYPOTHESIS
@given(hours_of_samples(), st.sampled_from(["E", "U", "L"]), st.data())
def test_the_codes_e_u_l_are_data(drawn, code: str, data) -> None:
    resource = _series_of(drawn)
    sampled = resource[SD]
    points = sampled["data"].split(" ")
    points[data.draw(st.integers(0, len(points) - 1))] = code
    sampled["data"] = " ".join(points)
    assert _sampled_messages(resource) == []


@_HYPOTHESIS
@given(hours_of_samples(), st.data())
def test_decreasing_offsets_are_caught(drawn, data) -> None:
    resource = _series_of(drawn)
    sampled = resource[SD]
    offsets = [float(v) for v in sampled.get("offsets", "0 1").split(" ")]
    if len(offsets) < 2:
        offsets.append(offsets[0] + 1)
    index = data.draw(st.integers(1, len(offsets) - 1))
    offsets[index] = offsets[index - 1] - data.draw(st.integers(1, 10_000))
    sampled.pop("interval", None)
    sampled["offsets"] = " ".join(f"{v:g}" for v in offsets)
    sampled["data"] = " ".join(["1"] * len(offsets))
    messages = " ".join(_sampled_messages(resource))
    assert f"{SD}.offsets: value {index + 1} (" in messages
    assert "expected non-decreasing offsets" in messages or "is negative" in messages


@_HYPOTHESIS
@given(
    hours_of_samples(),
    st.floats(-1e6, 0, allow_nan=False) | st.just(0),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(0.001, 1e6, allow_nan=False),
)
def test_interval_factor_and_limits_are_caught(drawn, interval, low, gap) -> None:
    resource = _series_of(drawn)
    sampled = resource[SD]
    sampled.pop("offsets", None)
    sampled |= {"interval": interval, "factor": 0, "lowerLimit": low + gap, "upperLimit": low}
    messages = _sampled_messages(resource)
    paths = {m.partition(": ")[0] for m in messages}
    assert {f"Observation.{SD}.{e}" for e in ("interval", "factor", "lowerLimit")} <= paths
    assert any("expected a number greater than 0" in m for m in messages)


@_HYPOTHESIS
@given(hours_of_samples(), st.floats(1.001, 50))
def test_a_series_longer_than_its_period_is_caught(drawn, stretch: float) -> None:
    """Stretched by a factor, the last sample lands (stretch - 1) x span after the period's end
    (the builder ends the period at the last sample): caught from a microsecond on."""
    resource = _series_of(drawn)
    sampled = resource[SD]
    _, ts, _ = drawn
    beyond_us = (stretch - 1) * float(ts[-1] - ts[0])
    if "interval" in sampled:
        sampled["interval"] = sampled["interval"] * stretch
    else:
        stretched = (float(v) * stretch for v in sampled["offsets"].split())
        sampled["offsets"] = " ".join(f"{v:.6f}" for v in stretched)
    caught = any("past effectivePeriod.end" in m for m in _sampled_messages(resource))
    if beyond_us >= 1:
        assert caught, _sampled_messages(resource)
    elif beyond_us < 0.25:
        assert not caught, _sampled_messages(resource)


def test_a_decimal_with_18_digits_after_the_point_is_no_fhir_decimal(
    product: dict[str, dict[str, Any]],
) -> None:
    """What the builders write for a float64 under 0.1 at full precision (found by hypothesis):
    the decimal type allows 17 digits after the point."""
    resource = copy.deepcopy(product["series"])
    resource[SD]["data"] = "0 0.018106084719940713 " + resource[SD]["data"].split(" ", 2)[2]
    assert _sampled_messages(resource) == [
        f"Observation.{SD}.data: value 2 is '0.018106084719940713'; expected decimals or E, U, L"
    ]


def test_messages_name_the_element_and_the_expectation(product: dict[str, dict[str, Any]]) -> None:
    """Every message of the table starts with an element path and says what was expected."""
    for mutation in MUTATIONS:
        output = copy.deepcopy(product)
        mutation.change(output)
        for problem in every_problem(output):
            if problem.layer in ("terminology", "sampled-data", "product", "output"):
                assert problem.path and re.match(r"^[A-Za-z]", problem.path), problem
                assert "expected" in problem.message, problem


def test_remembered_invariant_outcomes_follow_the_element(
    product: dict[str, dict[str, Any]],
) -> None:
    """The validator remembers invariant outcomes per element (profile.py): a broken element
    met after its valid twin still fails, and the valid one still passes after it."""
    valid = product["series"]
    broken = copy.deepcopy(valid)
    broken["effectivePeriod"]["end"] = "2026-03-31T23:00:00Z"
    for resource, fails in ((valid, False), (broken, True), (valid, False), (broken, True)):
        found = [p for p in validate_resource(resource) if "invariant per-1" in p.message]
        assert bool(found) is fails, found
