"""The FHIR R5 API for clinical systems (`ohx fhir serve`): SMART Backend Services clients and
tokens (clients.py, scopes.py), the published resources it serves (search.py) and the ASGI app
(app.py). Dagster-free: it reads the store and the published NDJSON. docs/fhir-api.md."""
