"""Identifiers: deterministic ids derived from content keys (re-running anything yields the same
ids), and the one rule for the ids that enter the product from outside.

The rule (`check_id`, `check_user_id`, `check_patient_id`) is applied wherever an id enters: the
webhook receiver (every inbox event, ohx_dagster/sync/inbox.py), the connect flow (the Patient a
link is made for, the provider's user id after the code exchange), `connect_user`, and the `ohx`
commands that name a person. A provider's user id: 1..128 characters (the column), no control
characters (PostgreSQL refuses NUL in text, and no provider id contains one). A FHIR Patient id:
1..64 of [A-Za-z0-9-.] (FHIR R5 `id`). An error never repeats more than 40 characters of the value.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from ohx_dagster.core.errors import ValidationError

# The longest provider name and provider user id (the store's columns are this wide).
PROVIDER_CHARS: Final = 64
USER_CHARS: Final = 128
# C0 controls and DEL.
CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# FHIR R5 `id`: 1-64 of [A-Za-z0-9-.].
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def content_key(*parts: object, generation: int = 0) -> str:
    """A readable key of the parts, e.g. 'fitabase|2022484408|heart_rate|2016-04-01T07:00Z'.

    `generation`: the person's link generation (HealthSyncConfig.link_generation, bumped by
    `ohx users relink`). When > 0 it ends the key ('...|link-1'), so every resource of a person
    moved to another patient has a new id and identifier; 0 leaves the key (and every id of a
    person never moved) as it always was. At the end, the key still begins with provider|user
    (erasure, the outbox and partition owners read the user id from the third field of an
    identifier value)."""
    key = "|".join(str(part) for part in parts)
    return f"{key}|link-{generation}" if generation else key


def stable_id(*parts: object) -> str:
    """A FHIR-legal id (64 chars max, [A-Za-z0-9-.]) that depends only on the parts."""
    return hashlib.sha256(content_key(*parts).encode()).hexdigest()[:40]


def excerpt(value: object) -> object:
    """The value for an error message: a long string cut to its first 40 characters."""
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:40]}... ({len(value)} characters)"
    return value


def check_id(name: str, text: object, limit: int, *, controls: bool = True) -> str:
    """A non-empty string of at most `limit` characters, without control characters (without
    NUL only, when not `controls`); ValidationError naming the field otherwise."""
    expected = f"a non-empty string of at most {limit} characters"
    if not isinstance(text, str) or not text or len(text) > limit:
        raise ValidationError(name, excerpt(text), expected)
    if "\x00" in text or (controls and CONTROL.search(text)):
        raise ValidationError(name, excerpt(text), f"{expected}, without control characters")
    return text


def check_user_id(text: object, name: str = "user_id") -> str:
    """A provider's user id as every entry point accepts it (module docstring)."""
    return check_id(name, text, USER_CHARS)


def check_provider_name(text: object, name: str = "provider") -> str:
    return check_id(name, text, PROVIDER_CHARS)


def check_patient_id(text: object, name: str = "patient") -> str:
    """A FHIR Patient id (1-64 of A-Z a-z 0-9 - .)."""
    if not isinstance(text, str) or not FHIR_ID.fullmatch(text):
        raise ValidationError(name, excerpt(text), "a FHIR id: 1-64 of A-Z a-z 0-9 - .")
    return text
