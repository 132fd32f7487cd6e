"""Authentication to the FHIR server: the Authorization header the client sends with a request.

A static bearer token, OAuth client credentials with a secret, or SMART Backend Services
(client credentials authenticated by a JWT the client signs with its private key); tokens are
cached until shortly before they expire and fetched anew after a 401 (the client calls
`invalidate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from ohx_dagster.fhir.delivery.errors import DeliveryError


class Auth:
    def header(self, client: httpx.Client) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        """Forget a cached token (the server answered 401)."""


@dataclass
class BearerToken(Auth):
    token: str

    def header(self, client: httpx.Client) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class _TokenEndpoint(Auth):
    """An access token from an OAuth 2.0 token endpoint, cached until `margin_s` before it
    expires (then fetched anew) and forgotten when the FHIR server answers 401."""

    token_url: str
    margin_s: float = field(default=30.0, kw_only=True)
    clock: Callable[[], float] = field(default=time.monotonic, kw_only=True, repr=False)
    token_requests: int = field(default=0, kw_only=True)
    _token: str | None = field(default=None, kw_only=True, repr=False)
    _expires: float = field(default=0.0, kw_only=True, repr=False)

    def token_form(self) -> dict[str, str]:
        raise NotImplementedError

    def header(self, client: httpx.Client) -> dict[str, str]:
        if self._token is None or self.clock() >= self._expires:
            response = client.post(self.token_url, data=self.token_form())
            self.token_requests += 1
            if response.status_code != 200:
                raise DeliveryError(
                    f"token endpoint {self.token_url} answered {response.status_code}: "
                    f"{response.text[:300]}"
                )
            payload = response.json()
            self._token = str(payload["access_token"])
            lifetime = float(payload.get("expires_in", 300))
            self._expires = self.clock() + max(0.0, lifetime - self.margin_s)
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None


@dataclass
class ClientCredentials(_TokenEndpoint):
    """OAuth 2.0 client credentials with a shared secret (client_secret_post)."""

    client_id: str
    client_secret: str = field(repr=False)
    scope: str = "system/*.write"

    def token_form(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "scope": self.scope,
        }


CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: the assertion's exp is at most five minutes ahead; four leaves room for
# a client clock running ahead of the authorization server's.
ASSERTION_LIFETIME_S: Final = 240


def _signing_algorithm(private_key: object) -> str:
    """SMART Backend Services asks servers to support RS384 and ES384: the key decides which."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return "ES384"
    raise DeliveryError(
        f"SMART backend services: a {type(private_key).__name__} key; expected RSA or EC (P-384)"
    )


@dataclass
class SmartBackendServices(_TokenEndpoint):
    """SMART Backend Services (SMART App Launch, client-confidential-asymmetric): client
    credentials where the client authenticates with a JWT it signs with its private key
    (RS384 for an RSA key, ES384 for an EC key): header kid + typ JWT, claims iss = sub =
    client_id, aud = the token URL, exp at most five minutes ahead, a fresh jti every time."""

    client_id: str
    private_key_pem: str = field(repr=False)
    kid: str
    scope: str = "system/*.write"
    jku: str = ""
    _key: Any = field(init=False, repr=False)
    algorithm: str = field(init=False)

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        if not (self.client_id and self.kid and self.private_key_pem):
            raise DeliveryError(
                "SMART backend services needs a client id, a key id (kid) and a private key"
            )
        try:
            self._key = load_pem_private_key(self.private_key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise DeliveryError(f"SMART backend services: unreadable private key: {exc}") from None
        self.algorithm = _signing_algorithm(self._key)

    def client_assertion(self) -> str:
        import uuid

        import jwt

        now = int(time.time())
        headers = {"kid": self.kid, "typ": "JWT", **({"jku": self.jku} if self.jku else {})}
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def token_form(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
