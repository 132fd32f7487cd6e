"""The FHIR R5 server the product delivers to, when one is configured (secrets via EnvVar)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from ohx_dagster.core.errors import ConfigError
from ohx_dagster.fhir.delivery.auth import (
    Auth,
    BearerToken,
    ClientCredentials,
    SmartBackendServices,
)
from ohx_dagster.fhir.delivery.client import FhirClient, redacted_url


class FhirServerResource(dg.ConfigurableResource):
    """`base_url` empty = no server (fhir_delivery records "skipped"). Auth, the first that is
    configured: SMART Backend Services (`token_url` + `client_id` + `key_id` + a private key PEM
    in `private_key` or the file `private_key_file`), OAuth client credentials with a secret
    (`token_url` + `client_id` + `client_secret`), a static `bearer_token`, or none.

    Retries: each transaction is retried `max_retries` times (429/503 after Retry-After, other
    5xx and dropped connections after an exponential backoff from `retry_backoff_s`); when the
    server stays unavailable the step is retried `step_retries` times, `step_retry_wait_s`
    apart (doubling), then fails. The outbox keeps what was not delivered for the next run."""

    base_url: str = pydantic.Field(
        "",
        description="OHX_FHIR_SERVER_URL: the FHIR server's base URL (empty: no server, "
        "delivery skipped).",
    )
    bearer_token: str = pydantic.Field(
        "", description="OHX_FHIR_BEARER_TOKEN: a static bearer token (the last auth tried)."
    )
    token_url: str = pydantic.Field(
        "",
        description="OHX_FHIR_TOKEN_URL: the OAuth token endpoint (SMART Backend Services or "
        "client credentials).",
    )
    client_id: str = pydantic.Field("", description="OHX_FHIR_CLIENT_ID: the OAuth client id.")
    client_secret: str = pydantic.Field(
        "", description="OHX_FHIR_CLIENT_SECRET: the OAuth client secret (client credentials)."
    )
    private_key: str = pydantic.Field(
        "", description="OHX_FHIR_PRIVATE_KEY: the SMART Backend Services private key, PEM."
    )
    private_key_file: str = pydantic.Field(
        "", description="OHX_FHIR_PRIVATE_KEY_FILE: a file holding that PEM key."
    )
    key_id: str = pydantic.Field(
        "", description="OHX_FHIR_KEY_ID: the kid of the SMART Backend Services key."
    )
    scope: str = pydantic.Field(
        "system/*.write", description="OHX_FHIR_SCOPE: the OAuth scope asked for."
    )
    batch_size: int = pydantic.Field(
        100,
        description="OHX_FHIR_BATCH_SIZE: resources per transaction bundle (a whole number >= 1).",
    )
    max_retries: int = pydantic.Field(
        5,
        description="OHX_FHIR_MAX_RETRIES: retries of one transaction (429/503, other 5xx, "
        "dropped connections).",
    )
    retry_backoff_s: float = pydantic.Field(
        0.5,
        description="OHX_FHIR_RETRY_BACKOFF_S: seconds before a transaction's first retry, "
        "doubling.",
    )
    step_retries: int = pydantic.Field(
        3,
        description="OHX_FHIR_STEP_RETRIES: retries of the delivery step while the server stays "
        "unavailable.",
    )
    step_retry_wait_s: float = pydantic.Field(
        30.0, description="OHX_FHIR_STEP_RETRY_WAIT_S: seconds between step retries, doubling."
    )
    confirm_sample: int = pydantic.Field(
        20,
        description="OHX_FHIR_CONFIRM_SAMPLE: delivered resources read back to confirm a delivery.",
    )

    @property
    def configured(self) -> bool:
        return bool(self.base_url)

    @property
    def display_url(self) -> str:
        return redacted_url(self.base_url)

    def auth(self) -> Auth:
        if self.token_url and (self.private_key or self.private_key_file):
            pem = self.private_key or Path(self.private_key_file).expanduser().read_text()
            if "\\n" in pem and "\n" not in pem.strip():
                pem = pem.replace("\\n", "\n")  # a PEM squeezed onto one line of an env file
            return SmartBackendServices(
                self.token_url, self.client_id, pem, self.key_id, scope=self.scope
            )
        if self.token_url:
            return ClientCredentials(self.token_url, self.client_id, self.client_secret, self.scope)
        if self.bearer_token:
            return BearerToken(self.bearer_token)
        return Auth()

    def client(self) -> FhirClient:
        return FhirClient(
            self.base_url,
            auth=self.auth(),
            batch_size=self.batch_size,
            max_retries=self.max_retries,
            backoff_s=self.retry_backoff_s,
        )


# Secrets and URLs: passed as dg.EnvVar, so their values never land in run config or the UI.
_ENV: dict[str, str] = {
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
# Tuning, not secret: read as numbers here.
_NUMBERS: dict[str, tuple[str, type]] = {
    "batch_size": ("OHX_FHIR_BATCH_SIZE", int),
    "max_retries": ("OHX_FHIR_MAX_RETRIES", int),
    "retry_backoff_s": ("OHX_FHIR_RETRY_BACKOFF_S", float),
    "step_retries": ("OHX_FHIR_STEP_RETRIES", int),
    "step_retry_wait_s": ("OHX_FHIR_STEP_RETRY_WAIT_S", float),
    "confirm_sample": ("OHX_FHIR_CONFIRM_SAMPLE", int),
}


def fhir_server_from_env(environ: Mapping[str, str] | None = None) -> FhirServerResource:
    """The resource from OHX_FHIR_* variables; no OHX_FHIR_SERVER_URL = no server.

    | variable | meaning |
    |---|---|
    | OHX_FHIR_SERVER_URL | FHIR base URL (unset: delivery is skipped) |
    | OHX_FHIR_BEARER_TOKEN | static bearer token |
    | OHX_FHIR_TOKEN_URL, OHX_FHIR_CLIENT_ID | OAuth token endpoint and client id |
    | OHX_FHIR_CLIENT_SECRET | client credentials with a shared secret |
    | OHX_FHIR_PRIVATE_KEY / _FILE, OHX_FHIR_KEY_ID | SMART Backend Services: PEM (RSA: RS384, EC P-384: ES384) and its kid |
    | OHX_FHIR_SCOPE | default system/*.write |
    | OHX_FHIR_BATCH_SIZE, _MAX_RETRIES, _RETRY_BACKOFF_S, _STEP_RETRIES, _STEP_RETRY_WAIT_S, _CONFIRM_SAMPLE | tuning |
    """  # noqa: E501
    env = os.environ if environ is None else environ
    # Each field an EnvVar (read by Dagster when the resource is used) or a number checked here.
    values: dict[str, Any] = {
        field: dg.EnvVar(name) for field, name in _ENV.items() if env.get(name)
    }
    for field, (name, kind) in _NUMBERS.items():
        text = env.get(name)
        if text:
            try:
                values[field] = kind(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r}: expected a {kind.__name__}") from None
    return FhirServerResource(**values)
