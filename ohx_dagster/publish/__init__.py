"""Publishing a day partition: aggregates of each person's local hours and days, and the FHIR files
of the day."""
