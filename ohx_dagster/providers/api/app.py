"""What the product must know of a provider API, in one value each provider's folder exports
(`APP`): where its API and OAuth endpoints are, what its people authorize, what data it has, how
late that data may arrive, how many requests it allows, how its source reads it and how a newly
connected person is identified. ohx_dagster.providers.registry lists them; nothing else spells a
provider's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ohx_dagster.core.models import HealthDataType
from ohx_dagster.providers.api.budget import RequestLimit


@dataclass(frozen=True, slots=True)
class AuthorizeSpec:
    """The provider's OAuth 2 authorization request."""

    authorize_url: str
    scopes: tuple[str, ...]
    scope_separator: str = " "
    pkce: bool = False
    extra_params: Mapping[str, str] = field(default_factory=dict)


# (api client, token answer body, access token) -> the provider's id of the person who consented.
FindUserId = Callable[[Any, Mapping[str, Any], str], str]
# (store, subscription settings, api settings, person, backoff_s=) -> subscription results: what
# the provider needs subscribed once a person connected (ohx_dagster.providers.api.subscription).
AfterConnect = Callable[..., list[Any]]


@dataclass(frozen=True, slots=True)
class ProviderApp:
    name: str
    env_prefix: str  # OHX_OURA: _CLIENT_ID, _CLIENT_SECRET, _API_URL, _TOKEN_URL, _AUTHORIZE_URL
    api_url: str
    token_url: str
    authorize: AuthorizeSpec
    supported_types: frozenset[HealthDataType]
    resync_horizon: timedelta
    request_limit: RequestLimit
    source: Callable[..., Any]  # (store, ApiSettings, **connection) -> the source
    find_user_id: FindUserId
    # Fields the token endpoint wants beside the standard ones (Withings: action=requesttoken),
    # and whether it wraps its answers as {"status": 0, "body": {...}} (Withings).
    token_params: Mapping[str, str] = field(default_factory=dict)
    token_wrapped: bool = False
    after_connect: AfterConnect | None = None
    # How the token endpoint authenticates the client (RFC 6749 2.3.1): "form" sends client_id
    # and client_secret in the form body, "basic" an HTTP Basic Authorization header (Polar).
    token_auth: Literal["form", "basic"] = "form"
    # False: the provider issues long-lived access tokens without refresh tokens (Polar); an
    # access token it rejects (401) means the person must connect again.
    refresh_tokens: bool = True
    # The module whose `routes(receiver, secrets)` builds the provider's webhook routes, imported
    # only by the receiver (its web framework stays out of every sync run); None: no webhooks.
    webhook: str | None = None
