"""Dagster resources: the record store, the health-data sources, the FHIR output."""

from resources.output import FhirOutputResource
from resources.sources import SourcesResource
from resources.store import RecordStoreResource

__all__ = ["FhirOutputResource", "RecordStoreResource", "SourcesResource"]
