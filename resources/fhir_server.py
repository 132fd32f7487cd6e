"""The FHIR R5 server the product delivers to, when one is configured (secrets via EnvVar)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from ohx_dagster.config.fhir import FhirServerSettings
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


def fhir_server_from_env(environ: Mapping[str, str] | None = None) -> FhirServerResource:
    """The resource from the OHX_FHIR_* variables (FhirServerSettings, ohx_dagster/config/fhir.py,
    lists them); no OHX_FHIR_SERVER_URL = no server. Secrets and URLs are passed as dg.EnvVar
    (read by Dagster when the resource is used), so their values never land in run config or the
    UI; the tuning numbers are checked here."""
    settings = FhirServerSettings.from_env(environ)
    values: dict[str, Any] = {field: dg.EnvVar(name) for field, name in settings.configured.items()}
    values.update(settings.numbers())
    return FhirServerResource(**values)
