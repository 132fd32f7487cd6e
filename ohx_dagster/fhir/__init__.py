"""FHIR R5 output: codes, resource builders (plain dicts), NDJSON sinks and validation."""
