"""Where the FHIR bulk output goes: a local path, or s3://bucket/prefix in production (credentials
from the standard AWS variables, an S3-compatible endpoint from OHX_S3_ENDPOINT_URL)."""

from __future__ import annotations

from functools import cache

import dagster as dg
import pydantic

from ohx_dagster.fhir.output import FhirOutput


@cache
def _output(root: str) -> FhirOutput:
    return FhirOutput(root)


class FhirOutputResource(dg.ConfigurableResource):
    """`root`: OHX_FHIR_DIR (not a secret: object-store credentials never pass through here)."""

    root: str = pydantic.Field(
        description="OHX_FHIR_DIR: the FHIR bulk output root, a folder or s3://bucket/prefix."
    )
    # OHX_PUBLISH_AMBIGUOUS: publish readings a shared device cannot attribute to one person.
    publish_ambiguous: bool = pydantic.Field(
        False,
        description="OHX_PUBLISH_AMBIGUOUS: publish readings a shared device cannot attribute "
        "to one person (true or false).",
    )

    def get(self) -> FhirOutput:
        return _output(self.root)
