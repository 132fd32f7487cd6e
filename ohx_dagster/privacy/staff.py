"""Staff credentials: one bearer token per staff member, for the receiver's /connect and for the
deployment's authenticating proxy (nginx `auth_request` to the receiver's /auth/staff,
docs/deployment.md).

A token is `ohxs_<id>_<secret>`: `id` 12 hex characters (public, the row's key), `secret` 43
URL-safe characters (256 random bits). `staff_tokens` keeps the id and the SHA-256 of the secret,
never the token, so a copy of the database authenticates no one; `ohx staff add` prints the token
once. A check looks the row up by id and compares the hashes in constant time. A random 256-bit
secret needs no slow password hash: there is nothing to guess from its SHA-256.

Given as `Authorization: Bearer <token>` (scripts, curl) or HTTP Basic with the staff name as
user and the token as password (a browser's login prompt, through the proxy). Never in a URL.

Adding and removing staff are audited (ohx_dagster/privacy/audit.py: staff-add, staff-remove, the
name in the detail; staff are not patients, so no subject). A removed token's id stays in
`staff_revoked` with its name (no secret), so that `refusal` can say whose a revoked token was:
a credential refused at /connect or the proxy is audited under the staff member its token names
(current or revoked), else as "unknown"; never with the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.times import now_us
from ohx_dagster.privacy import audit
from ohx_dagster.storage.schema import staff_revoked, staff_tokens

if TYPE_CHECKING:
    from ohx_dagster.storage.store import RecordStore

PREFIX: Final = "ohxs_"
NAME: Final = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
TOKEN: Final = re.compile(r"ohxs_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class StaffMember:
    name: str
    token_id: str
    created_at_us: int
    created_by: str


def check_name(text: str) -> str:
    """A staff name: lower-case letters, digits and . _ @ -, up to 64 characters."""
    if not NAME.fullmatch(text):
        raise ValidationError(
            "name", text[:80], "1-64 lower-case letters, digits or . _ @ - (e.g. j.doe)"
        )
    return text


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def add(store: RecordStore, name: str, *, actor: str) -> str:
    """A new staff member's token (the only time it is in clear); refused if the name has one."""
    check_name(name)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    t = staff_tokens
    with store.write() as conn:
        if conn.execute(sa.select(t.c.name).where(t.c.name == name)).first() is not None:
            raise ValidationError(
                "name", name, "a name without a token (remove it first to issue a new one)"
            )
        conn.execute(
            t.insert().values(
                name=name,
                token_id=token_id,
                secret_sha256=_sha256(secret),
                created_at_us=now_us(),
                created_by=actor,
            )
        )
        audit.record(
            conn, actor=actor, action="staff-add", detail=f"staff {name} (token {token_id})"
        )
    return f"{PREFIX}{token_id}_{secret}"


def members(store: RecordStore) -> list[StaffMember]:
    t = staff_tokens
    query = sa.select(t.c.name, t.c.token_id, t.c.created_at_us, t.c.created_by).order_by(t.c.name)
    with store.read() as conn:
        return [StaffMember(**row._mapping) for row in conn.execute(query)]


def remove(store: RecordStore, name: str, *, actor: str) -> bool:
    """Revoke a staff member's token at once; False if there was none."""
    t = staff_tokens
    with store.write() as conn:
        token_id = conn.execute(sa.select(t.c.token_id).where(t.c.name == name)).scalar()
        if token_id is None:
            return False
        conn.execute(t.delete().where(t.c.name == name))
        conn.execute(
            staff_revoked.insert().values(
                token_id=token_id, name=name, revoked_at_us=now_us(), revoked_by=actor
            )
        )
        audit.record(conn, actor=actor, action="staff-remove", detail=f"staff {name}")
    return True


def verify(store: RecordStore, token: str | None, *, name: str | None = None) -> str | None:
    """The staff member the token belongs to (and, with `name`, only if it is theirs), else None."""
    found = TOKEN.fullmatch(token or "")
    if found is None:
        return None
    token_id, secret = found.groups()
    t = staff_tokens
    with store.read() as conn:
        row = conn.execute(
            sa.select(t.c.name, t.c.secret_sha256).where(t.c.token_id == token_id)
        ).first()
    if row is None or not hmac.compare_digest(row.secret_sha256, _sha256(secret)):
        return None
    if name is not None and not hmac.compare_digest(name.encode(), row.name.encode()):
        return None
    return str(row.name)


def from_authorization(store: RecordStore, header: str | None) -> str | None:
    """The staff member an Authorization header authenticates: `Bearer <token>`, or `Basic` with
    the staff name and the token as the password; None for anything else."""
    scheme, _, value = (header or "").strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return verify(store, value)
    if scheme == "basic":
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return verify(store, password, name=user) if sep else None
    return None


# -- why a credential was refused (for the audit log) --------------------------------------------

# Why a credential authenticates no one: a fixed vocabulary, so that counts of them stay small.
NO_CREDENTIALS: Final = "no staff credentials"
MALFORMED: Final = "not a staff token"
UNKNOWN: Final = "a token never issued"
REVOKED: Final = "a revoked token"
WRONG_SECRET: Final = "a token with a wrong secret"
OTHER_NAME: Final = "a token given with another staff name"
IN_URL: Final = "a token in the URL"
NOT_ACCEPTED: Final = "a credential not accepted"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Who a refused credential names and why it was refused; never the token's secret.

    actor: the staff member the token's id names (its current or revoked owner), else "unknown";
    token_id: the token's public id when the token is well formed (`ohx staff list` and the
    staff-add audit row show it too), else "".
    """

    actor: str
    reason: str
    token_id: str = ""


def _owner(store: RecordStore, token_id: str) -> tuple[str | None, str | None, bool]:
    """(name, secret hash, revoked) of the token id: a current token, a revoked one, or none."""
    with store.read() as conn:
        row = conn.execute(
            sa.select(staff_tokens.c.name, staff_tokens.c.secret_sha256).where(
                staff_tokens.c.token_id == token_id
            )
        ).first()
        if row is not None:
            return str(row.name), str(row.secret_sha256), False
        name = conn.execute(
            sa.select(staff_revoked.c.name).where(staff_revoked.c.token_id == token_id)
        ).scalar()
    return (None if name is None else str(name)), None, name is not None


def refusal(
    store: RecordStore,
    token: str | None,
    *,
    name: str | None = None,
    reason: str | None = None,
) -> Refusal:
    """Why `token` (with `name`, given as HTTP Basic) authenticates no one, and whose it is; with
    `reason`, that reason whatever the token (a token in the URL is refused even when valid)."""
    found = TOKEN.fullmatch(token or "")
    if found is None:
        return Refusal("unknown", reason or (MALFORMED if token else NO_CREDENTIALS))
    token_id, secret = found.groups()
    owner, secret_sha256, revoked = _owner(store, token_id)
    if owner is None:
        return Refusal("unknown", reason or UNKNOWN, token_id)
    if reason is None:
        if revoked:
            reason = REVOKED
        elif not hmac.compare_digest(secret_sha256 or "", _sha256(secret)):
            reason = WRONG_SECRET
        else:
            # Valid and its owner's: refused for another reason (issued since the check).
            reason = OTHER_NAME if name is not None and name != owner else NOT_ACCEPTED
    return Refusal(owner, reason, token_id)


def refusal_of_authorization(store: RecordStore, header: str | None) -> Refusal:
    """`refusal` of an Authorization header that `from_authorization` refused."""
    scheme, _, value = (header or "").strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if not scheme:
        return refusal(store, None)
    if scheme == "bearer":
        return refusal(store, value) if value else Refusal("unknown", MALFORMED)
    if scheme == "basic":
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return Refusal("unknown", MALFORMED)
        if not sep or not password:
            return Refusal("unknown", MALFORMED)
        return refusal(store, password, name=user)
    return Refusal("unknown", MALFORMED)
