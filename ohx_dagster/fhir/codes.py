"""The one table of codes: LOINC per data type, UCUM units, categories, statistics.

Every FHIR builder reads from here; nothing else spells a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ohx_dagster.core.datatypes import DATA_TYPES, LOINC_SYSTEM, DataType, HealthDataType

LOINC: Final = LOINC_SYSTEM
UCUM: Final = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
STATISTICS: Final = "http://hl7.org/fhir/observation-statistics"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
# ISO/IEEE 11073-10101 nomenclature (MDC), as HL7 names it in the R5 example Observation-ekg.
MDC: Final = "urn:oid:2.16.840.1.113883.6.24"
IDENTIFIER_SYSTEM: Final = "urn:ohx:fhir"
# A person's provider account: urn:ohx:user:<provider> | <the provider's user id>.
PERSON_SYSTEM: Final = "urn:ohx:user"
# The software that assembles the output (Provenance agent), and the Dagster run that did it.
SOFTWARE_SYSTEM: Final = "urn:ohx:software"
RUN_SYSTEM: Final = "urn:ohx:dagster-run"
SOURCE_SYSTEM: Final = "urn:ohx:source"
DEVICE_ASSOCIATION_STATUS: Final = "http://hl7.org/fhir/deviceassociation-status"
PARTICIPANT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self) -> dict[str, object]:
        return {"coding": [self.coding()], "text": self.display}


@dataclass(frozen=True, slots=True)
class TypeCodes:
    code: Code
    unit: str  # UCUM code
    unit_display: str
    category: str  # observation-category code
    profile: str | None  # R5 vital-signs profile canonical URL, where one applies
    also: tuple[Code, ...] = ()  # further codings a profile asks for (SpO2: 2708-6)

    def concept(self) -> dict[str, object]:
        """Observation.code: the type's coding first, then any the profile requires."""
        return {
            "coding": [self.code.coding(), *(c.coding() for c in self.also)],
            "text": self.code.display,
        }


_VS: Final = "http://hl7.org/fhir/StructureDefinition/"


def _type_codes(facts: DataType) -> TypeCodes:
    return TypeCodes(
        Code(facts.system, *facts.code),
        facts.unit,
        facts.unit_display,
        facts.category,
        None if facts.profile is None else _VS + facts.profile,
        tuple(Code(LOINC, *also) for also in facts.also_loinc),
    )


# The table of data types' FHIR face (ohx_dagster/core/datatypes.py).
TYPE_CODES: Final[dict[HealthDataType, TypeCodes]] = {
    kind: _type_codes(facts) for kind, facts in DATA_TYPES.items()
}

DAILY_STEPS: Final = Code(LOINC, "41950-7", "Number of steps in 24 hour Measured")
SYSTOLIC: Final = Code(LOINC, "8480-6", "Systolic blood pressure")
DIASTOLIC: Final = Code(LOINC, "8462-4", "Diastolic blood pressure")

# ECG: a DiagnosticReport (the TYPE_CODES code, 11524-6) in the electrocardiac section of HL7 v2
# table 0074 ("EC"; "CG" in that table is not electrocardiac), its waveform an Observation.
ECG_SECTION: Final = Code(V2_0074, "EC", "Electrocardiac (e.g., EKG,  EEC, Holter)")
ECG_WAVEFORM: Final = Code(MDC, "131328", "MDC_ECG_ELEC_POTL")

# Sleep, as the Personal Health Records IG (hl7.fhir.uv.phr) says it: the session an Observation
# coded with LOINC's sleep duration and the IG's "sleep episode", its stages components coded
# with LOINC's stage durations where LOINC has one and the IG's sleep-episode codes beside them
# (its pcd-sleep-observation-code value set: 93832-4, 93831-6, 93830-8, 93829-0).
PHR_PGHD: Final = "http://hl7.org/fhir/uv/phr/CodeSystem/observation-pghd-codes"
PHR_SLEEP: Final = "http://hl7.org/fhir/uv/phr/CodeSystem/sleep-episode-codes"
SLEEP_EPISODE: Final = Code(PHR_PGHD, "sleepEpisode", "Sleep episode")
# A component's codings, by the StageTotals field it states (ohx_dagster/core/sessions.py).
SLEEP_COMPONENTS: Final[dict[str, tuple[Code, ...]]] = {
    "deep": (
        Code(LOINC, "93831-6", "Deep sleep duration"),
        Code(PHR_SLEEP, "deepSleepDuration", "Deep sleep duration"),
    ),
    "light": (
        Code(LOINC, "93830-8", "Light sleep duration"),
        Code(PHR_SLEEP, "coreSleepDuration", "Core sleep Duration"),
    ),
    "rem": (
        Code(LOINC, "93829-0", "REM sleep duration"),
        Code(PHR_SLEEP, "remSleepDuration", "Rem sleep duration"),
    ),
    "awake_after_onset": (Code(PHR_SLEEP, "wakeAfterSleepOnset", "Wake after sleep onset"),),
    "awakenings": (Code(PHR_SLEEP, "numberOfAwakenings", "Number of awakenings"),),
}

# Workouts, as the Physical Activity IG (hl7.fhir.us.physical-activity 1.0.0) groups the measures
# of one occurrence of exercise: a panel (its temporary code PAPanel, category activity and its
# PhysicalActivity) whose members are Observations with codes of its activity-measure value set
# (pa-observation-code-activity). Distance is in none of them: this project's own code.
PA_TEMPORARY: Final = "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes"
PA_PANEL: Final = Code(PA_TEMPORARY, "PAPanel", "Physical Activity Panel")
PA_CATEGORY: Final = Code(PA_TEMPORARY, "PhysicalActivity", "Physical Activity")
EXERCISE_ACTIVITY: Final = Code(LOINC, "73985-4", "Exercise activity")
EXERCISE_SYSTEM: Final = "urn:ohx:fhir:exercise"
# A member's code by the WORKOUT_MEASURES name it states (ohx_dagster/core/sessions.py).
WORKOUT_MEMBERS: Final[dict[str, Code]] = {
    "energy": Code(LOINC, "55424-6", "Calories burned in unspecified time Pedometer"),
    "distance": Code(EXERCISE_SYSTEM, "distance", "Distance covered during the exercise"),
    "mean_heart_rate": Code(LOINC, "55425-3", "Heart rate unspecified time mean by Pedometer"),
    "max_heart_rate": Code(LOINC, "55426-1", "Heart rate unspecified time maximum by Pedometer"),
}

# SampledData: the UCUM units of its time axis (interval / offsets).
INTERVAL_UNITS: Final = frozenset({"s", "ms"})

STATISTIC: Final[dict[str, Code]] = {
    "mean": Code(STATISTICS, "average", "Average"),
    "min": Code(STATISTICS, "minimum", "Minimum"),
    "max": Code(STATISTICS, "maximum", "Maximum"),
    "count": Code(STATISTICS, "count", "Count"),
    "sum": Code(STATISTICS, "sum", "Sum"),
}

# The decimals a statistic of a type is published with: one more than the readings carry, so a
# mean says something a reading cannot, and a float's tail (84.9000015258789 kg) never shows.
DECIMALS: Final[dict[HealthDataType, int]] = {
    kind: facts.decimals for kind, facts in DATA_TYPES.items() if facts.decimals is not None
}

# The extremes of a blood-pressure aggregate: no LOINC code names a minimum or maximum systolic
# or diastolic pressure over a period, so they carry this project's own, clearly named codes
# (the panel's systolic and diastolic components stay the LOINC ones, holding the averages).
BP_STATISTICS: Final = "urn:ohx:fhir:blood-pressure-statistic"
BP_EXTREMES: Final[dict[str, Code]] = {
    "min": Code(BP_STATISTICS, "systolic-minimum", "Lowest systolic blood pressure"),
    "max": Code(BP_STATISTICS, "systolic-maximum", "Highest systolic blood pressure"),
    "diastolic_min": Code(BP_STATISTICS, "diastolic-minimum", "Lowest diastolic blood pressure"),
    "diastolic_max": Code(BP_STATISTICS, "diastolic-maximum", "Highest diastolic blood pressure"),
}

CATEGORY_DISPLAY: Final[dict[str, str]] = {
    "vital-signs": "Vital Signs",
    "activity": "Activity",
    "procedure": "Procedure",
    "laboratory": "Laboratory",
    "social-history": "Social History",
}


def category(code: str) -> dict[str, object]:
    return Code(OBSERVATION_CATEGORY, code, CATEGORY_DISPLAY[code]).concept()


# R5 vital signs: an Observation with one of these codes SHALL conform to the matching profile,
# whether or not it claims it in meta.profile (the validator applies it either way).
VITAL_SIGN_PROFILES: Final[dict[tuple[str, str], str]] = {
    **{
        (c.code.system, c.code.code): c.profile
        for c in TYPE_CODES.values()
        if c.profile and not c.profile.endswith("/vitalsigns")
    },
    **{
        (also.system, also.code): c.profile
        for c in TYPE_CODES.values()
        for also in c.also
        if c.profile
    },
}
