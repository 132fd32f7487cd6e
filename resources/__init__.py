"""Dagster resources: the record store and the health-data sources."""

from resources.sources import SourcesResource
from resources.store import RecordStoreResource

__all__ = ["RecordStoreResource", "SourcesResource"]
