"""Validation of emitted resources against FHIR R5: the entry point its callers import.

The checks live in the ohx_dagster.fhir.validation package (its docstring lists the layers);
this module keeps the names the asset checks, tests and benchmarks use.
"""

from __future__ import annotations

from ohx_dagster.fhir.validation import (
    CORE_PACKAGE,
    EXAMPLES_PACKAGE,
    TERMINOLOGY_PACKAGE,
    Problem,
    coding_problems,
    implied_profiles,
    iter_examples,
    model_problems,
    package_path,
    packages_dir,
    product_problems,
    profile_problems,
    sample,
    sampled_data_problems,
    schema_problems,
    structure,
    validate_output,
    validate_resource,
    validate_resources,
)

__all__ = [
    "CORE_PACKAGE",
    "EXAMPLES_PACKAGE",
    "TERMINOLOGY_PACKAGE",
    "Problem",
    "coding_problems",
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
