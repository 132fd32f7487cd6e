"""Validation of emitted resources against FHIR R5 and the HL7 packages, in layers.

Per resource (validate_resource; validate_resources on a sample):

1. model: fhir.resources (pydantic) models: cardinality, types, primitive formats (model.py);
2. schema: the official fhir.schema.json of hl7.fhir.r5.core 5.0.0 (schema.py);
3. structure / profile: the StructureDefinitions of that package, the base definition and every
   profile claimed or implied (vital signs): cardinality, fixed / pattern values, slicing,
   required bindings against value sets expanded from the packages, FHIRPath invariants
   (profile.py, structure.py, fhirpath.py);
4. terminology: codes of the code systems in hl7.fhir.r5.core and hl7.terminology.r5 exist (with
   their display); every UCUM code is valid UCUM (terminology.py, ucum.py);
5. sampled-data: SampledData arithmetic (sampled.py);
6. product: the units and sections this product's codes call for (product.py).

Per output (validate_output, on a whole partition: O(n)): references resolve, point to allowed
types, logical references are complete, ids and identifiers are unique (references.py).

The packages are fetched by scripts/fetch-fhir-packages (packages.py says where they are looked
for); nothing from them is copied into this repository or re-typed by hand. Codes of systems the
packages do not hold (LOINC, SNOMED CT, MDC ...) get no membership verdict.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from ohx_dagster.fhir.validation.model import model_problems
from ohx_dagster.fhir.validation.packages import (
    CORE_PACKAGE,
    EXAMPLES_PACKAGE,
    TERMINOLOGY_PACKAGE,
    package_path,
    packages_dir,
    read_json,
)
from ohx_dagster.fhir.validation.problems import Problem
from ohx_dagster.fhir.validation.product import product_problems
from ohx_dagster.fhir.validation.profile import (
    forget_invariant_outcomes,
    implied_profiles,
    profile_problems,
)
from ohx_dagster.fhir.validation.references import validate_output
from ohx_dagster.fhir.validation.sampled import sampled_data_problems
from ohx_dagster.fhir.validation.schema import forget_valid_values, schema_problems
from ohx_dagster.fhir.validation.structure import structure
from ohx_dagster.fhir.validation.terminology import coding_problems

__all__ = [
    "CORE_PACKAGE",
    "EXAMPLES_PACKAGE",
    "TERMINOLOGY_PACKAGE",
    "Problem",
    "coding_problems",
    "forget_remembered",
    "implied_profiles",
    "iter_examples",
    "model_problems",
    "package_path",
    "packages_dir",
    "product_problems",
    "profile_problems",
    "sample",
    "sampled_data_problems",
    "schema_problems",
    "structure",
    "validate_output",
    "validate_resource",
    "validate_resources",
]


def validate_resource(resource: dict) -> list[Problem]:
    """Every per-resource problem (layers 1 to 6)."""
    return [
        *model_problems(resource),
        *schema_problems(resource),
        *profile_problems(resource),
        *coding_problems(resource),
        *sampled_data_problems(resource),
        *product_problems(resource),
    ]


def forget_remembered() -> None:
    """Empty what the validator remembers between resources (invariant outcomes, values that
    passed the schema), as a new process starts: benchmarks."""
    forget_invariant_outcomes()
    forget_valid_values()


def sample(resources: Iterable[dict], size: int, *, seed: int = 0) -> list[dict]:
    """A deterministic sample with every resource type and profile represented."""
    strata: dict[tuple[str, str], list[dict]] = {}
    for resource in resources:
        profile = ",".join(resource.get("meta", {}).get("profile", []))
        strata.setdefault((resource["resourceType"], profile), []).append(resource)
    chosen = [items[0] for items in strata.values()]
    rest = [item for items in strata.values() for item in items[1:]]
    rng = random.Random(seed)
    return chosen + rng.sample(rest, max(0, min(len(rest), size - len(chosen))))


def validate_resources(resources: Iterable[dict], *, limit: int | None = None) -> list[Problem]:
    """Per-resource problems (validate_resource); with `limit`, of a stratified sample. The
    references between them are validate_output's, which sees the whole set."""
    items = list(resources)
    if limit is not None and len(items) > limit:
        items = sample(items, limit)
    return [problem for resource in items for problem in validate_resource(resource)]


def iter_examples(prefix: str) -> Iterator[tuple[str, dict]]:
    """Official R5 examples (hl7.fhir.r5.examples) whose file name starts with a prefix."""
    for path in sorted(package_path(EXAMPLES_PACKAGE).glob(f"{prefix}*.json")):
        yield path.name, read_json(path)
