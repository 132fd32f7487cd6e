"""Deterministic identifiers derived from content keys: re-running anything yields the same ids."""

from __future__ import annotations

import hashlib


def content_key(*parts: object) -> str:
    """A readable key of the parts, e.g. 'fitabase|2022484408|heart_rate|2016-04-01T07:00Z'."""
    return "|".join(str(part) for part in parts)


def stable_id(*parts: object) -> str:
    """A FHIR-legal id (64 chars max, [A-Za-z0-9-.]) that depends only on the parts."""
    return hashlib.sha256(content_key(*parts).encode()).hexdigest()[:40]
