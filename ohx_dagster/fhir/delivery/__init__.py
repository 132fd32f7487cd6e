"""Delivery to a FHIR R5 server: outbox, bundle, auth and client, each imported from its module."""
