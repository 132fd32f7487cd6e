"""Dagster assets: raw records -> hourly -> daily aggregates -> FHIR NDJSON, all day x source."""
