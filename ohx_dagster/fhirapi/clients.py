"""The FHIR API's client systems and their access tokens: SMART Backend Services (SMART App
Launch 2.x, "Backend Services"; the client assertion of RFC 7523).

A hospital's system is registered by staff (`ohx fhir clients add NAME --jwks FILE --scope ...`)
with its public keys (a JWKS: RSA of at least 2048 bits for RS384, EC P-384 for ES384, each with
a `kid`; never a private key) and the system scopes it may be granted. It then asks the token
endpoint for an access token with `client_credentials`, authenticating with a JWT it signs with
its private key (`private_key_jwt`), whose
- header names `alg` (RS384 or ES384) and the `kid` of a registered key (no `jku`: keys are
  registered, never fetched);
- claims are `iss` = `sub` = its client id, `aud` = this server's token URL, `exp` at most five
  minutes ahead, and a `jti` never used before by the client (kept until the assertion expires,
  so a replay is refused).

Granted: the requested scopes that a registered one covers (none covered: `invalid_scope`). An
access token is 256 random bits, valid five minutes; `fhir_tokens` keeps its SHA-256 and the
scopes, never the token. Refusals are OAuth 2.0 errors (RFC 6749 5.2: `invalid_client`,
`invalid_grant`, `invalid_scope`, ...), with a description that names what was wrong and never
echoes a secret.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
import sqlalchemy as sa

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.times import now_us
from ohx_dagster.fhirapi.scopes import Scope, parse_scopes
from ohx_dagster.privacy import audit
from ohx_dagster.storage.schema import fhir_assertions, fhir_clients, fhir_tokens

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

ALGORITHMS: Final = ("RS384", "ES384")
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_S: Final = 300  # an assertion's exp at most this far ahead (SMART: five minutes)
TOKEN_S: Final = 300  # an access token's lifetime
CLOCK_SKEW_S: Final = 30  # tolerated between the client's clock and ours
MIN_RSA_BITS: Final = 2048
MAX_ASSERTION_CHARS: Final = 16_384
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
_US: Final = 1_000_000


class TokenError(Exception):
    """A refused token request: the OAuth error code and what was wrong."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    keys: tuple[dict[str, Any], ...]
    scopes: tuple[Scope, ...]


@dataclass(frozen=True, slots=True)
class Grant:
    """What an access token allows: whose it is and its scopes."""

    client_id: str
    name: str
    scopes: tuple[Scope, ...]


def _key_problem(key: Any) -> str | None:
    """What is wrong with one JWK for this server, or None."""
    import jwt

    if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
        return "every key needs a kid"
    if "d" in key:
        return f"key {key['kid']!r} is a private key: register the public key only"
    if key.get("kty") == "EC" and key.get("crv") == "P-384":
        algorithm = "ES384"
    elif key.get("kty") == "RSA":
        algorithm = "RS384"
    else:
        return f"key {key['kid']!r}: expected an RSA key or an EC key on P-384"
    try:
        parsed = jwt.PyJWK(key, algorithm=algorithm)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        return f"key {key['kid']!r} is not a usable JWK ({exc})"
    if algorithm == "RS384" and parsed.key.key_size < MIN_RSA_BITS:
        return f"key {key['kid']!r}: an RSA key of at least {MIN_RSA_BITS} bits"
    return None


def parse_jwks(text: str | bytes) -> tuple[dict[str, Any], ...]:
    """The keys of a JWKS document, checked (a ValidationError naming the problem)."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("jwks", "<file>", f"a JSON Web Key Set ({exc})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValidationError("jwks", "<file>", 'a JSON object with a non-empty "keys" list')
    for key in keys:
        problem = _key_problem(key)
        if problem:
            raise ValidationError("jwks", "<file>", problem)
    kids = [key["kid"] for key in keys]
    if len(set(kids)) != len(kids):
        raise ValidationError("jwks", "<file>", "keys with distinct kids")
    return tuple(keys)


def add_client(
    store: RecordStore, name: str, jwks: str | bytes, scopes: str, *, actor: str
) -> Client:
    """Register a client system; returns it with its new client id. Audited (client-add)."""
    if not _NAME.fullmatch(name):
        raise ValidationError(
            "name", name, "2-63 of a-z, 0-9 and -, starting with a letter or digit"
        )
    keys = parse_jwks(jwks)
    allowed, bad = parse_scopes(scopes)
    if bad or not allowed:
        raise ValidationError("scope", " ".join(bad) or scopes, "SMART v2 system scopes, e.g. "
                              "'system/Observation.rs system/Patient.rs'")  # fmt: skip
    client = Client(f"ohxc-{secrets.token_hex(12)}", name, keys, tuple(allowed))
    t = fhir_clients
    with store.write() as conn:
        if conn.execute(sa.select(t.c.client_id).where(t.c.name == name)).first():
            raise ValidationError("name", name, "a name no other client has")
        conn.execute(
            t.insert().values(
                client_id=client.client_id,
                name=name,
                jwks=orjson.dumps({"keys": list(keys)}).decode(),
                scopes=" ".join(str(s) for s in allowed),
                added_at_us=now_us(),
                added_by=actor,
            )
        )
        detail = f"client {name} ({client.client_id}), scopes {' '.join(map(str, allowed))}"
        audit.record(conn, actor=actor, action="client-add", detail=detail)
    return client


def _client(row: Any) -> Client:
    scopes, _ = parse_scopes(row.scopes)
    keys = tuple(orjson.loads(row.jwks)["keys"])
    return Client(row.client_id, row.name, keys, tuple(scopes))


def list_clients(store: RecordStore) -> list[Client]:
    with store.read() as conn:
        rows = conn.execute(sa.select(fhir_clients).order_by(fhir_clients.c.name)).all()
    return [_client(row) for row in rows]


def remove_client(store: RecordStore, name_or_id: str, *, actor: str) -> bool:
    """Remove a client and revoke its tokens at once. Audited (client-remove)."""
    t = fhir_clients
    with store.write() as conn:
        row = conn.execute(
            sa.select(t).where((t.c.name == name_or_id) | (t.c.client_id == name_or_id))
        ).first()
        if row is None:
            return False
        conn.execute(t.delete().where(t.c.client_id == row.client_id))
        conn.execute(fhir_tokens.delete().where(fhir_tokens.c.client_id == row.client_id))
        conn.execute(fhir_assertions.delete().where(fhir_assertions.c.client_id == row.client_id))
        detail = f"client {row.name} ({row.client_id})"
        audit.record(conn, actor=actor, action="client-remove", detail=detail)
    return True


def _verified_claims(assertion: str, client: Client, token_url: str) -> dict[str, Any]:
    import jwt

    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise TokenError("invalid_client", "client_assertion is not a JWT") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if algorithm not in ALGORITHMS:
        raise TokenError("invalid_client", f"alg {algorithm!r}: expected one of {list(ALGORITHMS)}")
    if "jku" in header:
        raise TokenError("invalid_client", "jku is not accepted: keys are registered by staff")
    key = next((k for k in client.keys if k["kid"] == kid), None)
    if key is None:
        raise TokenError("invalid_client", f"no registered key has kid {kid!r}")
    try:
        signing_key = jwt.PyJWK(key, algorithm=algorithm)
        claims: dict[str, Any] = jwt.decode(
            assertion,
            signing_key.key,
            algorithms=[algorithm],
            audience=token_url,
            issuer=client.client_id,
            leeway=CLOCK_SKEW_S,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("invalid_client", "the client assertion has expired") from None
    except jwt.InvalidAudienceError:
        raise TokenError(
            "invalid_client", f"aud must be this server's token URL {token_url}"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError("invalid_client", f"the client assertion has no {exc.claim}") from None
    except jwt.InvalidSignatureError:
        raise TokenError(
            "invalid_client", "the client assertion's signature does not verify"
        ) from None
    except (jwt.InvalidTokenError, jwt.PyJWKError) as exc:
        raise TokenError("invalid_client", f"the client assertion is invalid ({exc})") from None
    if claims.get("sub") != client.client_id:
        raise TokenError("invalid_client", "sub must equal iss, the client id")
    if not isinstance(claims["exp"], int | float):
        raise TokenError("invalid_client", "exp must be a number")
    if claims["exp"] * _US - now_us() > (MAX_ASSERTION_S + CLOCK_SKEW_S) * _US:
        raise TokenError("invalid_client", f"exp is more than {MAX_ASSERTION_S} s ahead")
    if not isinstance(claims["jti"], str) or not 0 < len(claims["jti"]) <= 256:
        raise TokenError("invalid_client", "jti must be a string of 1-256 characters")
    return claims


def issue_token(
    store: RecordStore, form: Mapping[str, str], token_url: str
) -> tuple[Client, dict[str, Any]]:
    """Answer a token request (the endpoint's form fields): the client and the token response,
    or a TokenError."""
    import jwt

    if form.get("grant_type") != "client_credentials":
        raise TokenError("unsupported_grant_type", "grant_type must be client_credentials")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion") or ""
    if not assertion or len(assertion) > MAX_ASSERTION_CHARS:
        raise TokenError("invalid_request", "client_assertion is missing or too long")
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise TokenError("invalid_client", "client_assertion is not a JWT") from None
    client_id = unverified.get("iss")
    t = fhir_clients
    with store.read() as conn:
        row = conn.execute(sa.select(t).where(t.c.client_id == str(client_id))).first()
    if row is None:
        raise TokenError("invalid_client", "unknown client (iss names no registered client)")
    client = _client(row)
    claims = _verified_claims(assertion, client, token_url)
    asked, bad = parse_scopes(form.get("scope") or "")
    if bad:
        raise TokenError("invalid_scope", f"not a SMART v2 system scope: {' '.join(bad)[:200]}")
    granted = [s for s in asked if any(mine.covers(s) for mine in client.scopes)]
    if not granted:
        raise TokenError("invalid_scope", "none of the requested scopes is allowed this client")
    token = f"ohxa_{secrets.token_urlsafe(32)}"
    stamp = now_us()
    try:  # the key (client, jti) refuses a replay, even two at once
        with store.write() as conn:
            conn.execute(fhir_assertions.delete().where(fhir_assertions.c.expires_us < stamp))
            conn.execute(
                fhir_assertions.insert().values(
                    client_id=client.client_id,
                    jti=claims["jti"],
                    expires_us=int(claims["exp"] * _US) + CLOCK_SKEW_S * _US,
                )
            )
    except sa.exc.IntegrityError:
        raise TokenError(
            "invalid_client", "this client assertion (its jti) was used before"
        ) from None
    with store.write() as conn:
        conn.execute(fhir_tokens.delete().where(fhir_tokens.c.expires_us < stamp))
        conn.execute(
            fhir_tokens.insert().values(
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                client_id=client.client_id,
                scopes=" ".join(str(s) for s in granted),
                expires_us=stamp + TOKEN_S * _US,
            )
        )
    scope = " ".join(str(s) for s in granted)
    return client, {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": TOKEN_S,
        "scope": scope,
    }


def check_token(store: RecordStore, token: str) -> Grant | None:
    """The grant of a valid, unexpired access token; None otherwise."""
    if not token.startswith("ohxa_") or len(token) > 128:
        return None
    digest = hashlib.sha256(token.encode()).hexdigest()
    t, c = fhir_tokens, fhir_clients
    query = (
        sa.select(t.c.client_id, t.c.scopes, t.c.expires_us, c.c.name)
        .join(c, c.c.client_id == t.c.client_id)
        .where(t.c.token_sha256 == digest)
    )
    with store.read() as conn:
        row = conn.execute(query).first()
    if row is None or row.expires_us <= now_us():
        return None
    scopes, _ = parse_scopes(row.scopes)
    return Grant(row.client_id, row.name, tuple(scopes))
