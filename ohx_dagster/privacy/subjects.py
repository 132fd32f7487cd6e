"""A person's subject: HMAC-SHA256 of "provider|user_id" with this installation's secret salt.
What the erasure tombstones, the audit log, Dagster's run tags and every log line hold instead of
a person's id (ohx_dagster/privacy/identity.py keeps the rules built on it). The salt is
OHX_ERASURE_SALT or this installation's salt file (ohx_dagster/config/privacy.py)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from ohx_dagster.config.privacy import (  # noqa: F401 (SALT_ENV..: this module's names too)
    MIN_SALT_CHARS,
    SALT_ENV,
    SALT_FILE,
    erasure_salt,
)
from ohx_dagster.core.errors import ValidationError

# How many hex digits of a subject a message shows (enough to find its rows, 48 bits).
SHOWN: Final = 12


def subject_hash(provider: str, user_id: str, *, salt: bytes) -> str:
    """HMAC-SHA256(salt, "provider|user_id") in hex: what `erasures`, `audit_log` and the erase
    job's run config hold instead of the person."""
    return hmac.new(salt, f"{provider}|{user_id}".encode(), hashlib.sha256).hexdigest()


def patient_subject(patient_id: str, *, salt: bytes) -> str:
    """The salted hash of a FHIR Patient id (audit rows and messages name patients by it)."""
    return subject_hash("patient", patient_id, salt=salt)


def check_subject(subject: str) -> str:
    """The subject, if it is a hash; the error does not repeat the value (it may be an id)."""
    if not isinstance(subject, str) or not re.fullmatch(r"[0-9a-f]{64}", subject):
        shown = f"<{len(subject) if isinstance(subject, str) else type(subject).__name__}"
        raise ValidationError(
            "subject", f"{shown} characters, not shown>", "64 lowercase hex (HMAC-SHA256)"
        )
    return subject


def short(subject: str) -> str:
    """A subject as messages show it."""
    return subject[:SHOWN]
