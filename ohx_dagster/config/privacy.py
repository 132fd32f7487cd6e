"""Privacy settings: the salt of people's subjects and how long the audit log keeps its rows.

| variable | default | meaning |
|---|---|---|
| OHX_ERASURE_SALT | $OHX_HOME/erasure-salt | salt of people's subjects (ohx_dagster/privacy/subjects.py), at least 16 characters |
| OHX_AUDIT_RETENTION | 2190d | how long audit log rows are kept (`Nd`, days), see below |

OHX_ERASURE_SALT unset: this installation's random salt in $OHX_HOME/erasure-salt, created on
first use, readable by its owner only. Every installation that shares a record store must share
the salt (the subjects in the store are hashed with it).

OHX_AUDIT_RETENTION: the daily retention job deletes audit log rows (ohx_dagster/privacy/audit.py)
older than this. The default, 2190 days (six years), is the HIPAA retention of security
documentation (45 CFR 164.316(b)(2)(i)), which hospitals apply to access logs too; an institution
with a longer rule sets it (the rows hold salted hashes only, so keeping them longer keeps no
personal data).
"""  # noqa: E501

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted
from ohx_dagster.config.storage import ohx_home
from ohx_dagster.core.errors import ConfigError

SALT_ENV: Final = "OHX_ERASURE_SALT"
SALT_FILE: Final = "erasure-salt"
MIN_SALT_CHARS: Final = 16
AUDIT_RETENTION_ENV: Final = "OHX_AUDIT_RETENTION"
AUDIT_RETENTION_DEFAULT: Final = "2190d"


@dataclass(frozen=True, slots=True, repr=False)
class PrivacySettings(Redacted):
    """The salt (as configured, or the file it is kept in) and the audit retention, checked when
    asked: `salt()` may create the salt file."""

    _secrets = ("configured_salt",)

    # OHX_HOME as given ("": unset, ~/.ohx): where the salt file is kept.
    home_setting: str = ""
    configured_salt: str = ""
    audit_retention_text: str = AUDIT_RETENTION_DEFAULT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PrivacySettings:
        env = environment.resolve(env)
        return cls(
            home_setting=env.get("OHX_HOME") or "",
            configured_salt=env.get(SALT_ENV, ""),
            audit_retention_text=(env.get(AUDIT_RETENTION_ENV) or AUDIT_RETENTION_DEFAULT).strip(),
        )

    @property
    def home(self) -> Path:
        """OHX_HOME (default ~/.ohx), `~` expanded."""
        return ohx_home({"OHX_HOME": self.home_setting} if self.home_setting else {})

    def salt(self) -> bytes:
        """OHX_ERASURE_SALT, or this installation's random salt in $OHX_HOME/erasure-salt
        (created on first use, readable by its owner only)."""
        configured = self.configured_salt
        if configured:
            if len(configured) < MIN_SALT_CHARS:
                raise ConfigError(
                    f"{SALT_ENV}: {len(configured)} characters; expected at least {MIN_SALT_CHARS}"
                )
            return configured.encode()
        home = self.home
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

    @property
    def audit_retention(self) -> timedelta:
        """OHX_AUDIT_RETENTION as a span: `N` days written `Nd` (N >= 1), default 2190d."""
        text = self.audit_retention_text
        number = text[:-1] if text.endswith("d") else ""
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(
                f"{AUDIT_RETENTION_ENV}={text!r}: expected a number of days >= 1 followed by d, "
                f"e.g. {AUDIT_RETENTION_DEFAULT} (six years, the default)"
            )
        return timedelta(days=int(number))


def erasure_salt(env: Mapping[str, str] | None = None) -> bytes:
    """The salt of people's subjects (PrivacySettings.salt)."""
    return PrivacySettings.from_env(env).salt()


def audit_retention(env: Mapping[str, str] | None = None) -> timedelta:
    """OHX_AUDIT_RETENTION (PrivacySettings.audit_retention), read alone by the retention job,
    which needs nothing else."""
    return PrivacySettings.from_env(env).audit_retention
