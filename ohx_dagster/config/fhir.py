"""FHIR settings: the FHIR server the product delivers to (resources/fhir_server.py builds its
Dagster resource from them) and where the official HL7 packages the validator reads are
(ohx_dagster/fhir/validation/packages.py).

| variable | meaning |
|---|---|
| OHX_FHIR_SERVER_URL | FHIR base URL (unset: delivery is skipped) |
| OHX_FHIR_BEARER_TOKEN | static bearer token |
| OHX_FHIR_TOKEN_URL, OHX_FHIR_CLIENT_ID | OAuth token endpoint and client id |
| OHX_FHIR_CLIENT_SECRET | client credentials with a shared secret |
| OHX_FHIR_PRIVATE_KEY / _FILE, OHX_FHIR_KEY_ID | SMART Backend Services: PEM (RSA: RS384, EC P-384: ES384) and its kid |
| OHX_FHIR_SCOPE | default system/*.write |
| OHX_FHIR_BATCH_SIZE, _MAX_RETRIES, _RETRY_BACKOFF_S, _STEP_RETRIES, _STEP_RETRY_WAIT_S, _CONFIRM_SAMPLE | tuning |
| OHX_FHIR_PACKAGES | (unset: the checkout's .fhir-packages/, or $XDG_CACHE_HOME/ohx/fhir-packages) | folder of the unpacked HL7 FHIR packages |
| XDG_CACHE_HOME | ~/.cache | the per-user cache an installed wheel keeps the packages in |

The server's secrets and URLs reach Dagster as EnvVar (the variable's name, never its value, in
run config and the UI); the tuning numbers are checked here.
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ohx_dagster.config import environment
from ohx_dagster.config.redact import Redacted
from ohx_dagster.core.errors import ConfigError

# FhirServerResource field -> its variable: secrets and URLs, passed to Dagster as EnvVar.
SERVER_VARIABLES: Final[dict[str, str]] = {
    "base_url": "OHX_FHIR_SERVER_URL",
    "bearer_token": "OHX_FHIR_BEARER_TOKEN",
    "token_url": "OHX_FHIR_TOKEN_URL",
    "client_id": "OHX_FHIR_CLIENT_ID",
    "client_secret": "OHX_FHIR_CLIENT_SECRET",
    "private_key": "OHX_FHIR_PRIVATE_KEY",
    "private_key_file": "OHX_FHIR_PRIVATE_KEY_FILE",
    "key_id": "OHX_FHIR_KEY_ID",
    "scope": "OHX_FHIR_SCOPE",
}
# Tuning, not secret: FhirServerResource field -> (variable, type), read as numbers.
NUMBER_VARIABLES: Final[dict[str, tuple[str, type[int] | type[float]]]] = {
    "batch_size": ("OHX_FHIR_BATCH_SIZE", int),
    "max_retries": ("OHX_FHIR_MAX_RETRIES", int),
    "retry_backoff_s": ("OHX_FHIR_RETRY_BACKOFF_S", float),
    "step_retries": ("OHX_FHIR_STEP_RETRIES", int),
    "step_retry_wait_s": ("OHX_FHIR_STEP_RETRY_WAIT_S", float),
    "confirm_sample": ("OHX_FHIR_CONFIRM_SAMPLE", int),
}
PACKAGES_ENV: Final = "OHX_FHIR_PACKAGES"


@dataclass(frozen=True, slots=True, repr=False)
class FhirServerSettings(Redacted):
    """The FHIR server variables as given ("" unset); `numbers()` checks the tuning ones."""

    _secrets = ("bearer_token", "client_secret", "private_key")
    _urls = ("base_url", "token_url")

    base_url: str = ""
    bearer_token: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    private_key: str = ""
    private_key_file: str = ""
    key_id: str = ""
    scope: str = ""
    # variable -> text, of the tuning variables that are set.
    tuning: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FhirServerSettings:
        env = environment.resolve(env)
        values = {name: env.get(variable) or "" for name, variable in SERVER_VARIABLES.items()}
        tuning = {
            variable: env[variable]
            for variable, _ in NUMBER_VARIABLES.values()
            if env.get(variable)
        }
        return cls(**values, tuning=tuning)

    @property
    def configured(self) -> dict[str, str]:
        """FhirServerResource field -> variable, of the set secrets and URLs (each an EnvVar)."""
        return {name: v for name, v in SERVER_VARIABLES.items() if getattr(self, name)}

    def numbers(self) -> dict[str, int | float]:
        """FhirServerResource field -> number, of the set tuning variables; ConfigError naming
        the variable for one that is not a number of its type."""
        found: dict[str, int | float] = {}
        for name, (variable, kind) in NUMBER_VARIABLES.items():
            text = self.tuning.get(variable)
            if text:
                try:
                    found[name] = kind(text)
                except ValueError:
                    raise ConfigError(f"{variable}={text!r}: expected a {kind.__name__}") from None
        return found


@dataclass(frozen=True, slots=True, repr=False)
class FhirPackageSettings(Redacted):
    """Where the HL7 packages are looked for: OHX_FHIR_PACKAGES when set, and the per-user
    cache (the checkout's folder is ohx_dagster/fhir/validation/packages.py's to find)."""

    packages_setting: str = ""  # OHX_FHIR_PACKAGES as given ("": unset)
    cache_home: str = ""  # XDG_CACHE_HOME as given ("": unset, ~/.cache)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FhirPackageSettings:
        env = environment.resolve(env)
        return cls(env.get(PACKAGES_ENV) or "", env.get("XDG_CACHE_HOME") or "")

    @property
    def configured(self) -> Path | None:
        """OHX_FHIR_PACKAGES, `~` expanded (None: unset)."""
        return Path(self.packages_setting).expanduser() if self.packages_setting else None

    @property
    def user_cache(self) -> Path:
        """$XDG_CACHE_HOME/ohx/fhir-packages (~/.cache/ohx/fhir-packages)."""
        base = self.cache_home or Path.home() / ".cache"
        return Path(base) / "ohx" / "fhir-packages"
