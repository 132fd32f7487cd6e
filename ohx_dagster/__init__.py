"""Open Health Exchange sync: the domain, in plain Python (Dagster only in definitions.py)."""
