"""The FHIR R5 server the product delivers to, when one is configured (secrets via EnvVar)."""

from __future__ import annotations

import dagster as dg

from ohx_dagster.fhir.delivery import Auth, BearerToken, ClientCredentials, FhirClient


class FhirServerResource(dg.ConfigurableResource):
    """`base_url` empty = no server (fhir_delivery records "skipped"). Auth: a bearer token, or
    OAuth client credentials against `token_url` (client_id + client_secret)."""

    base_url: str = ""
    bearer_token: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    scope: str = "system/*.write"
    batch_size: int = 100
    max_retries: int = 5

    @property
    def configured(self) -> bool:
        return bool(self.base_url)

    def client(self) -> FhirClient:
        auth: Auth = Auth()
        if self.token_url:
            auth = ClientCredentials(self.token_url, self.client_id, self.client_secret, self.scope)
        elif self.bearer_token:
            auth = BearerToken(self.bearer_token)
        return FhirClient(
            self.base_url, auth=auth, batch_size=self.batch_size, max_retries=self.max_retries
        )


_ENV: dict[str, str] = {
    "base_url": "OHX_FHIR_SERVER_URL",
    "bearer_token": "OHX_FHIR_BEARER_TOKEN",
    "token_url": "OHX_FHIR_TOKEN_URL",
    "client_id": "OHX_FHIR_CLIENT_ID",
    "client_secret": "OHX_FHIR_CLIENT_SECRET",
}


def fhir_server_from_env(environ: dict[str, str] | None = None) -> FhirServerResource:
    """The resource with each variable that is set passed as dg.EnvVar (secrets never land in
    run config or the UI); no OHX_FHIR_SERVER_URL = no server."""
    import os

    env = os.environ if environ is None else environ
    return FhirServerResource(
        **{field: dg.EnvVar(name) for field, name in _ENV.items() if env.get(name)}
    )
