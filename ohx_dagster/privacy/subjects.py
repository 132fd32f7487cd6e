"""A person's subject: HMAC-SHA256 of "provider|user_id" with this installation's secret salt.
What the erasure tombstones, the audit log, Dagster's run tags and every log line hold instead of
a person's id (ohx_dagster/privacy/identity.py keeps the rules built on it)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ohx_dagster.core.errors import ConfigError, ValidationError

SALT_ENV: Final = "OHX_ERASURE_SALT"
SALT_FILE: Final = "erasure-salt"
MIN_SALT_CHARS: Final = 16
# How many hex digits of a subject a message shows (enough to find its rows, 48 bits).
SHOWN: Final = 12


def erasure_salt(env: Mapping[str, str] | None = None) -> bytes:
    """OHX_ERASURE_SALT, or this installation's random salt in $OHX_HOME/erasure-salt (created
    on first use, readable by its owner only)."""
    env = os.environ if env is None else env
    configured = env.get(SALT_ENV, "")
    if configured:
        if len(configured) < MIN_SALT_CHARS:
            raise ConfigError(
                f"{SALT_ENV}: {len(configured)} characters; expected at least {MIN_SALT_CHARS}"
            )
        return configured.encode()
    home = Path(env.get("OHX_HOME") or Path.home() / ".ohx").expanduser()
    path = home / SALT_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
    salt = path.read_text().strip()
    if len(salt) < MIN_SALT_CHARS:
        raise ConfigError(f"{path}: the erasure salt is unreadable or too short; delete it")
    return salt.encode()


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
