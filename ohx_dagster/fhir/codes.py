"""The one table of codes: LOINC per data type, UCUM units, categories, statistics.

Every FHIR builder reads from here; nothing else spells a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ohx_dagster.models import HealthDataType

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
STATISTICS: Final = "http://hl7.org/fhir/observation-statistics"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
IDENTIFIER_SYSTEM: Final = "urn:ohx:fhir"


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


_VS: Final = "http://hl7.org/fhir/StructureDefinition/"

TYPE_CODES: Final[dict[HealthDataType, TypeCodes]] = {
    HealthDataType.HEART_RATE: TypeCodes(
        Code(LOINC, "8867-4", "Heart rate"),
        "/min",
        "beats/minute",
        "vital-signs",
        _VS + "heartrate",
    ),
    HealthDataType.STEPS: TypeCodes(
        Code(LOINC, "55423-8", "Number of steps in unspecified time Pedometer"),
        "1",
        "steps",
        "activity",
        None,
    ),
    HealthDataType.RR_INTERVALS: TypeCodes(
        Code(LOINC, "8637-1", "R-R interval by EKG"), "ms", "ms", "vital-signs", None
    ),
    HealthDataType.ECG: TypeCodes(
        Code(LOINC, "11524-6", "EKG study"), "uV", "microvolt", "procedure", None
    ),
    HealthDataType.BLOOD_PRESSURE: TypeCodes(
        Code(LOINC, "85354-9", "Blood pressure panel with all children optional"),
        "mm[Hg]",
        "mmHg",
        "vital-signs",
        _VS + "bp",
    ),
    HealthDataType.WEIGHT: TypeCodes(
        Code(LOINC, "29463-7", "Body weight"), "kg", "kg", "vital-signs", _VS + "bodyweight"
    ),
    HealthDataType.TEMPERATURE: TypeCodes(
        Code(LOINC, "8310-5", "Body temperature"), "Cel", "C", "vital-signs", _VS + "bodytemp"
    ),
    HealthDataType.SPO2: TypeCodes(
        Code(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        "%",
        "%",
        "vital-signs",
        _VS + "oxygensat",
    ),
}

DAILY_STEPS: Final = Code(LOINC, "41950-7", "Number of steps in 24 hour Measured")
SYSTOLIC: Final = Code(LOINC, "8480-6", "Systolic blood pressure")
DIASTOLIC: Final = Code(LOINC, "8462-4", "Diastolic blood pressure")
OXYGEN_SATURATION: Final = Code(LOINC, "2708-6", "Oxygen saturation in Arterial blood")

STATISTIC: Final[dict[str, Code]] = {
    "mean": Code(STATISTICS, "average", "Average"),
    "min": Code(STATISTICS, "minimum", "Minimum"),
    "max": Code(STATISTICS, "maximum", "Maximum"),
    "count": Code(STATISTICS, "count", "Count"),
    "sum": Code(STATISTICS, "sum", "Sum"),
}

CATEGORY_DISPLAY: Final[dict[str, str]] = {
    "vital-signs": "Vital Signs",
    "activity": "Activity",
    "procedure": "Procedure",
}


def category(code: str) -> dict[str, object]:
    return Code(OBSERVATION_CATEGORY, code, CATEGORY_DISPLAY[code]).concept()
