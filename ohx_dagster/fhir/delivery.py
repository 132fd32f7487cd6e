"""Delivery to a FHIR R5 server: a durable outbox and a client that sends it as transactions.

The outbox (table fhir_outbox, in the record store) holds the latest body of every published
resource and the hash of the body the server last acknowledged. A partition's resources are
enqueued, then sent in bounded transaction Bundles and marked delivered only after the server
answered the whole transaction with success:
- each entry is a conditional update on the resource's deterministic identifier
  (PUT Observation?identifier=urn:ohx:fhir|...); a Provenance, which has no identifier, is
  updated by id (PUT Provenance/<id>); a withdrawn (entered-in-error) resource is a conditional
  DELETE;
- references resolve on the server: one to a resource in the same transaction points at that
  entry's fullUrl (urn:uuid), one to our resource sent earlier is a conditional reference by its
  identifier (Patient?identifier=urn:ohx:user:oura|...), which the server resolves to its own
  id; a clinical system's Patient keeps its literal id. Resources go out in dependency order
  (Patient, Device, DeviceAssociation, Observation, derived Observation, DiagnosticReport,
  Provenance; then deletes, in the reverse order), so a conditional reference always finds its
  target and no delete leaves a reference dangling.
So:
- a server outage loses nothing: undelivered rows stay pending and the next run sends them;
- a retry duplicates nothing: a conditional update on the deterministic identifier replaces, never
  adds, even when the server applied a transaction whose response was lost;
- re-publishing an unchanged partition sends nothing (the acknowledged hash matches).
429 and 503 are retried after their Retry-After; other 5xx and dropped connections with
exponential backoff; any other 4xx stops with the server's OperationOutcome in the error.
Auth: a static bearer token, OAuth client credentials with a secret, or SMART Backend Services
(client credentials authenticated by a JWT the client signs with its private key); tokens are
cached until shortly before they expire and fetched anew after a 401.
Audited (ohx_dagster/privacy/audit.py, action `export`): per transaction Bundle, one row per person
whose resources it held, in the transaction that marks them delivered (ok) or records the failure
(failed: the server refused or stayed unavailable); the person as their salted subject, the
server without credentials or query.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
import sqlalchemy as sa

from ohx_dagster.core.errors import OhxError
from ohx_dagster.core.times import now_us
from ohx_dagster.fhir.codes import PERSON_SYSTEM
from ohx_dagster.fhir.common import is_withdrawn, referenced, references_in
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.privacy import audit
from ohx_dagster.providers.http import parse_retry_after
from ohx_dagster.storage import db
from ohx_dagster.storage.schema import fhir_files, fhir_outbox
from ohx_dagster.storage.store import RecordStore

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
FHIR_JSON: Final = "application/fhir+json"
ENQUEUE_BATCH: Final = 1_000


class DeliveryError(OhxError):
    """The server refused a transaction (not retryable) or stayed unavailable past the retries."""


def owner(resource: dict) -> tuple[str, str]:
    """(provider, user id) whose data a resource holds: from its content-key identifier (keys
    of a person's resources begin with provider|user), from the person identifier of a Patient
    or a Provenance's patient; ("", "") for none."""
    identifiers = resource.get("identifier") or [resource.get("patient", {}).get("identifier", {})]
    first = identifiers[0] if identifiers else {}
    system, value = str(first.get("system", "")), str(first.get("value", ""))
    if system.startswith(f"{PERSON_SYSTEM}:"):
        return system.removeprefix(f"{PERSON_SYSTEM}:"), value
    parts = value.split("|")
    return (parts[1], parts[2]) if len(parts) >= 3 else ("", "")


# Delivery order by resource type: a resource goes after everything it references.
TYPE_RANK: Final[dict[str, int]] = {
    "Patient": 0,
    "Device": 1,
    "DeviceAssociation": 2,
    "Observation": 3,  # 4 when derived from or grouping other Observations
    "DiagnosticReport": 5,
    "Provenance": 6,
}
# Deletes go after every update, in the reverse order: a resource is deleted only once nothing
# on the server references it any more (servers refuse the other way round).
DELETE_RANK: Final = 20


def rank(resource: dict, *, deleted: bool = False) -> int:
    base = TYPE_RANK.get(resource["resourceType"], 3)
    if resource.get("derivedFrom") or resource.get("hasMember"):
        base += 1
    deleted = deleted or is_withdrawn(resource)
    return DELETE_RANK - base if deleted else base


def _outbox_row(partition_key: str, file: str, resource: dict, stamp: int) -> dict[str, Any]:
    body = orjson.dumps(resource)
    provider, user_id = owner(resource)
    return {
        "match_url": match_url(resource),
        "rank": rank(resource),
        "resource_type": resource["resourceType"],
        "resource_id": resource["id"],
        "partition_key": partition_key,
        "file": file,
        "provider": provider,
        "user_id": user_id,
        "body": body.decode(),
        "body_hash": hashlib.sha256(body).hexdigest(),
        "withdrawn": is_withdrawn(resource),
        "enqueued_at_us": stamp,
    }


def _upsert_outbox(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    t = fhir_outbox
    statement = db.insert_for(conn)(t)
    updated = ("partition_key", "file", "provider", "user_id", "body", "body_hash", "withdrawn",
               "match_url", "rank", "enqueued_at_us")  # fmt: skip
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["resource_type", "resource_id"],
            set_={name: statement.excluded[name] for name in updated},
        ),
        list(rows),
    )


def enqueue(
    store: RecordStore, partition_key: str, resources: Iterable[dict], *, file: str = ""
) -> int:
    """Put resources of a partition in the outbox (idempotent); returns how many the server has
    not acknowledged with exactly this body (those are pending)."""
    stamp = now_us()
    rows = [_outbox_row(partition_key, file, r, stamp) for r in resources]
    with store.write() as conn:
        for start in range(0, len(rows), ENQUEUE_BATCH):
            _upsert_outbox(conn, rows[start : start + ENQUEUE_BATCH])
    return len(pending(store, partition_key))


def enqueue_partition(store: RecordStore, output: FhirOutput, partition_key: str) -> int:
    """Put every file of the partition's current output that is not in the outbox yet into it
    (idempotent: run on every delivery attempt); returns how many files were enqueued."""
    f = fhir_files
    directory = partition_key.replace("|", "/", 1)
    with store.read() as conn:
        waiting = conn.execute(
            sa.select(f.c.bucket, f.c.resource_type, f.c.name).where(
                f.c.partition_key == partition_key, f.c.enqueued.is_(False)
            )
        ).all()
    for row in waiting:
        resources = list(output.read_resources(f"{directory}/{row.name}"))
        stamp = now_us()
        with store.write() as conn:
            for start in range(0, len(resources), ENQUEUE_BATCH):
                batch = resources[start : start + ENQUEUE_BATCH]
                rows = [_outbox_row(partition_key, row.name, r, stamp) for r in batch]
                _upsert_outbox(conn, rows)
            # The file's row may have been replaced by a newer version meanwhile: then that
            # version's own row stays waiting for the next attempt.
            conn.execute(
                f.update()
                .where(f.c.partition_key == partition_key, f.c.name == row.name)
                .values(enqueued=True)
            )
    _withdraw_vanished_provenance(store, partition_key)
    return len(waiting)


def _withdraw_vanished_provenance(store: RecordStore, partition_key: str) -> None:
    """A person's Provenance of the day that the current files no longer hold (every resource it
    named was withdrawn) is deleted on the server before the resources it names."""
    f, t = fhir_files, fhir_outbox
    with store.write() as conn:
        current = sa.select(f.c.name).where(f.c.partition_key == partition_key)
        vanished = conn.execute(
            sa.select(t.c.resource_id, t.c.body_hash).where(
                t.c.partition_key == partition_key,
                t.c.resource_type == "Provenance",
                t.c.withdrawn.is_(False),
                t.c.file.not_in(current),
            )
        ).all()
        for resource_id, body_hash in vanished:
            conn.execute(
                t.update()
                .where(t.c.resource_type == "Provenance", t.c.resource_id == resource_id)
                .values(
                    withdrawn=True,
                    rank=DELETE_RANK - TYPE_RANK["Provenance"],
                    body_hash=hashlib.sha256(f"withdrawn:{body_hash}".encode()).hexdigest(),
                )
            )


def _pending_query(partition_key: str | None) -> sa.Select:
    t = fhir_outbox
    query = sa.select(
        t.c.resource_type,
        t.c.resource_id,
        t.c.body,
        t.c.body_hash,
        t.c.withdrawn,
        t.c.provider,
        t.c.user_id,
        t.c.partition_key,
    ).where(sa.or_(t.c.delivered_hash.is_(None), t.c.delivered_hash != t.c.body_hash))
    if partition_key is not None:
        query = query.where(t.c.partition_key == partition_key)
    return query.order_by(t.c.rank, t.c.resource_type, t.c.resource_id)


def pending(store: RecordStore, partition_key: str | None = None) -> list[tuple[str, str, str]]:
    """(resource type, id, body hash) of resources not yet acknowledged by the server."""
    with store.read() as conn:
        rows = conn.execute(_pending_query(partition_key)).all()
    return [(r.resource_type, r.resource_id, r.body_hash) for r in rows]


def partition_counts(store: RecordStore, partition_key: str) -> dict[str, int]:
    """The partition's resources as its current files hold them, against the outbox: total (in
    the files), delivered (the server acknowledged exactly the published body), pending (not
    yet, or not yet enqueued), failed (pending, and the last attempt to send it failed)."""
    f, t = fhir_files, fhir_outbox
    current = sa.and_(t.c.delivered_hash.is_not(None), t.c.delivered_hash == t.c.body_hash)
    with store.read(snapshot=True) as conn:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(f.c.count), 0)).where(
                f.c.partition_key == partition_key
            )
        ).scalar_one()
        names = sa.select(f.c.name).where(f.c.partition_key == partition_key)
        delivered, failed = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(sa.case((current, 1), else_=0)), 0),
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case((sa.and_(~current, t.c.last_error.is_not(None)), 1), else_=0)
                    ),
                    0,
                ),
            ).where(t.c.partition_key == partition_key, t.c.file.in_(names))
        ).one()
    return {
        "total": int(total),
        "delivered": int(delivered),
        "pending": int(total) - int(delivered),
        "failed": int(failed),
    }


def delivered_sample(store: RecordStore, partition_key: str, size: int) -> list[dict]:
    """Up to `size` of the partition's delivered resources, spread evenly over types and ids
    (the same ones every time for the same outbox)."""
    t = fhir_outbox
    delivered = sa.and_(
        t.c.partition_key == partition_key,
        t.c.delivered_hash == t.c.body_hash,
        t.c.withdrawn.is_(False),
    )
    with store.read() as conn:
        keys = conn.execute(
            sa.select(t.c.resource_type, t.c.resource_id)
            .where(delivered)
            .order_by(t.c.resource_type, t.c.resource_id)
        ).all()
        if not keys or size < 1:
            return []
        step = max(1, len(keys) // size)
        bodies = [
            conn.execute(
                sa.select(t.c.body).where(
                    t.c.resource_type == resource_type, t.c.resource_id == resource_id
                )
            ).scalar_one()
            for resource_type, resource_id in keys[::step][:size]
        ]
    return [orjson.loads(body) for body in bodies]


def redacted_url(url: str) -> str:
    """The URL without user:password and query (safe for logs and metadata)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- authentication ---------------------------------------------------------------------------


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


# -- the client -------------------------------------------------------------------------------


def _token_escape(text: str) -> str:
    """FHIR search token escaping: a literal | , $ or \\ in a value is preceded by \\."""
    for char in ("\\", "|", ",", "$"):
        text = text.replace(char, "\\" + char)
    return text


def conditional_url(resource: dict) -> str:
    identifier = resource["identifier"][0]
    token = f"{_token_escape(identifier['system'])}|{_token_escape(identifier['value'])}"
    return f"{resource['resourceType']}?identifier={quote(token, safe='')}"


def match_url(resource: dict) -> str:
    """How the server finds the resource: by identifier, or by id when it has none."""
    if resource.get("identifier"):
        return conditional_url(resource)
    return f"{resource['resourceType']}/{resource['id']}"


def full_url(resource_type: str, resource_id: str) -> str:
    """The entry's fullUrl inside a transaction: a uuid derived from the resource's id, so the
    same resource has the same fullUrl in every attempt."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{resource_type}/{resource_id}')}"


def resolve_references(resources: Sequence[dict], elsewhere: dict[str, str]) -> list[dict]:
    """Copies of the resources whose references the server can resolve: to an entry of the same
    transaction by its fullUrl, to a resource delivered before by `elsewhere` (Type/id -> its
    match URL); others (a clinical system's Patient) stay as they are."""
    in_batch = {f"{r['resourceType']}/{r['id']}": full_url(r["resourceType"], r["id"])
                for r in resources}  # fmt: skip
    resolved = []
    for resource in resources:
        copy = orjson.loads(orjson.dumps(resource))
        for ref in references_in(copy):
            target = ref["reference"]
            ref["reference"] = in_batch.get(target) or elsewhere.get(target) or target
        resolved.append(copy)
    return resolved


def _entry(resource: dict, delete: bool) -> dict[str, Any]:
    """A conditional update (by id without identifier), or a (conditional) delete."""
    url = match_url(resource)
    if delete:
        return {"request": {"method": "DELETE", "url": url}}
    return {
        "fullUrl": full_url(resource["resourceType"], resource["id"]),
        "resource": resource,
        "request": {"method": "PUT", "url": url},
    }


def transaction(
    resources: Sequence[dict],
    elsewhere: dict[str, str] | None = None,
    deleted: Collection[tuple[str, str]] = (),
) -> dict:
    """The transaction Bundle for resources in delivery order (see the module docstring): the
    withdrawn ones (entered-in-error, or (type, id) in `deleted`) are deleted."""

    def delete(resource: dict) -> bool:
        key = (resource["resourceType"], resource["id"])
        return is_withdrawn(resource) or key in deleted

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r, delete(r)) for r in resolve_references(resources, elsewhere or {})],
    }


def _retry_after(value: str | None, default: float) -> float:
    seconds = parse_retry_after(value)
    return default if seconds is None else seconds


def _match_urls(store: RecordStore, resources: Sequence[dict]) -> dict[str, str]:
    """Type/id -> match URL of the outbox resources these reference (external ones absent)."""
    targets = referenced(resources)
    ids = sorted({target.partition("/")[2] for target in targets})
    t = fhir_outbox
    urls: dict[str, str] = {}
    with store.read() as conn:
        for start in range(0, len(ids), ENQUEUE_BATCH):
            rows = conn.execute(
                sa.select(t.c.resource_type, t.c.resource_id, t.c.match_url).where(
                    t.c.resource_id.in_(ids[start : start + ENQUEUE_BATCH]), t.c.match_url != ""
                )
            ).all()
            for row in rows:
                key = f"{row.resource_type}/{row.resource_id}"
                if key in targets:
                    urls[key] = row.match_url
    return urls


def _succeeded(status: str) -> bool:
    return status.startswith("2")


def _gone(status: str) -> bool:
    """A delete succeeded, or the server did not hold the resource (404): either way it is gone."""
    return status.startswith("2") or status == "404"


def _content(resource: dict) -> dict:
    """What a server keeps as sent: all but id, meta and literal references (the server holds
    its own ids where we sent conditional references)."""
    copy = orjson.loads(orjson.dumps(resource))
    for ref in references_in(copy):
        del ref["reference"]
    return {k: v for k, v in copy.items() if k not in ("meta", "id")}


@dataclass
class DeliveryReport:
    sent: int = 0
    batches: int = 0
    retries: int = 0
    remaining: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, other: DeliveryReport) -> None:
        self.sent += other.sent
        self.batches += other.batches
        self.retries += other.retries
        self.remaining += other.remaining
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


@dataclass
class FhirClient:
    base_url: str
    auth: Auth = field(default_factory=Auth)
    batch_size: int = 100
    max_retries: int = 5
    backoff_s: float = 0.5
    max_wait_s: float = 60.0
    timeout_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size}: expected >= 1")

    def deliver(
        self, store: RecordStore, partition_key: str | None = None, *, actor: str = "fhir delivery"
    ) -> DeliveryReport:
        """Send every pending resource (of a partition, or all) in bounded transactions, each
        audited as `actor`'s export of the people it holds (module docstring)."""
        report = DeliveryReport()
        with store.read() as conn:
            rows = conn.execute(_pending_query(partition_key)).all()
        with httpx.Client(timeout=self.timeout_s) as client:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                resources = [orjson.loads(r.body) for r in batch]
                deleted = {(r.resource_type, r.resource_id) for r in batch if r.withdrawn}
                try:
                    self._send(client, resources, _match_urls(store, resources), deleted, report)
                except DeliveryError as exc:
                    self._record_failure(store, batch, str(exc), actor)
                    report.remaining = len(rows) - start
                    raise
                self._mark_delivered(store, batch, actor)
                report.sent += len(batch)
                report.batches += 1
        return report

    def read_back(self, resources: Sequence[dict]) -> list[str]:
        """Search the server for each resource by its identifier and compare what it holds with
        what was sent (server-managed meta and id aside); returns one line per mismatch."""
        problems = []
        with httpx.Client(timeout=self.timeout_s) as client:
            for sent in resources:
                url = f"{self.base_url}/{match_url(sent)}"
                label = f"{sent['resourceType']}/{sent['id']}"
                try:
                    response = client.get(
                        url, headers={"Accept": FHIR_JSON, **self.auth.header(client)}
                    )
                except httpx.TransportError as exc:
                    problems.append(f"{label}: {type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    problems.append(f"{label}: search answered HTTP {response.status_code}")
                    continue
                found = response.json()
                matches = (
                    [
                        e["resource"]
                        for e in found.get("entry", [])
                        if e.get("search", {}).get("mode", "match") == "match" and "resource" in e
                    ]
                    if found.get("resourceType") == "Bundle"
                    else [found]  # read by id
                )
                if len(matches) != 1:
                    problems.append(f"{label}: {len(matches)} resources hold its identifier")
                elif (held := _content(matches[0])) != (expected := _content(sent)):
                    differing = sorted(
                        k for k in held.keys() | expected.keys() if held.get(k) != expected.get(k)
                    )
                    problems.append(f"{label}: the server holds other content in {differing}")
        return problems

    def _send(
        self,
        client: httpx.Client,
        resources: list[dict],
        elsewhere: dict[str, str],
        deleted: Collection[tuple[str, str]],
        report: DeliveryReport,
    ) -> None:
        body = orjson.dumps(transaction(resources, elsewhere, deleted))
        self._post(client, body, len(resources), report, _succeeded)

    def _post(
        self,
        client: httpx.Client,
        body: bytes,
        count: int,
        report: DeliveryReport,
        accepted: Callable[[str], bool],
    ) -> None:
        """POST one transaction: 429/503 retried after Retry-After, other 5xx and dropped
        connections with exponential backoff, one 401 answered by fetching a new token; the
        response must hold `count` entries whose status `accepted` takes."""
        attempt = 0
        while True:
            error: str
            wait = min(self.max_wait_s, self.backoff_s * 2**attempt)
            try:
                response = client.post(
                    self.base_url,
                    content=body,
                    headers={
                        "Content-Type": FHIR_JSON,
                        "Accept": FHIR_JSON,
                        **self.auth.header(client),
                    },
                )
            except httpx.TransportError as exc:  # refused, reset, dropped mid-response
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    self._check_response(response, count, report, accepted)
                    return
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code == 401 and attempt == 0:
                    self.auth.invalidate()
                elif response.status_code not in RETRY_STATUSES:
                    raise DeliveryError(f"{self.base_url} refused the transaction: {error}")
                if response.status_code in (429, 503):
                    wait = min(
                        self.max_wait_s,
                        _retry_after(response.headers.get("Retry-After"), wait),
                    )
            if attempt >= self.max_retries:
                raise DeliveryError(
                    f"{self.base_url} unavailable after {attempt + 1} attempts: {error}"
                )
            attempt += 1
            report.retries += 1
            self.sleep(wait)

    def _check_response(
        self,
        response: httpx.Response,
        count: int,
        report: DeliveryReport,
        accepted: Callable[[str], bool],
    ) -> None:
        bundle = response.json()
        entries = bundle.get("entry", [])
        if bundle.get("type") != "transaction-response" or len(entries) != count:
            raise DeliveryError(
                f"{self.base_url}: expected a transaction-response with {count} entries, got "
                f"{bundle.get('type')!r} with {len(entries)}"
            )
        for entry in entries:
            status = str(entry.get("response", {}).get("status", "")).split(" ")[0]
            if not accepted(status):
                raise DeliveryError(f"{self.base_url}: an entry answered {status!r}")
            report.statuses[status] = report.statuses.get(status, 0) + 1

    def _exported(
        self, conn: sa.Connection, batch: Sequence[Any], actor: str, outcome: str
    ) -> None:
        """The batch's audit rows: per person whose resources it held, how many and where."""
        from ohx_dagster.privacy.subjects import erasure_salt

        people: dict[tuple[str, str], list[Any]] = {}
        for row in batch:
            if row.provider and row.user_id:
                people.setdefault((row.provider, row.user_id), []).append(row)
        if not people:
            return
        server = redacted_url(self.base_url)
        salt = erasure_salt()
        for (provider, user_id), rows in sorted(people.items()):
            deletes = sum(bool(r.withdrawn) for r in rows)
            partitions = ", ".join(sorted({r.partition_key for r in rows}))
            what = f"{len(rows):,} resources" + (f" ({deletes:,} deletes)" if deletes else "")
            done = (
                "acknowledged"
                if outcome == "ok"
                else "not delivered: the server refused the transaction or stayed unavailable"
            )
            audit.record_people(
                conn,
                actor=actor,
                action="export",
                provider=provider,
                outcomes={
                    user_id: (outcome, f"FHIR server {server}: {what} of {partitions} {done}")
                },
                salt=salt,
            )

    def _mark_delivered(self, store: RecordStore, batch: Sequence[Any], actor: str) -> None:
        t = fhir_outbox
        at = now_us()
        with store.write() as conn:
            self._exported(conn, batch, actor, "ok")
            for row in batch:
                conn.execute(
                    t.update()
                    .where(
                        t.c.resource_type == row.resource_type,
                        t.c.resource_id == row.resource_id,
                        t.c.body_hash == row.body_hash,  # a newer body stays pending
                    )
                    .values(
                        delivered_hash=row.body_hash,
                        delivered_at_us=at,
                        attempts=t.c.attempts + 1,
                        last_error=None,
                    )
                )

    def _record_failure(
        self, store: RecordStore, batch: Sequence[Any], error: str, actor: str
    ) -> None:
        t = fhir_outbox
        with store.write() as conn:
            self._exported(conn, batch, actor, "failed")
            for row in batch:
                conn.execute(
                    t.update()
                    .where(
                        t.c.resource_type == row.resource_type, t.c.resource_id == row.resource_id
                    )
                    .values(attempts=t.c.attempts + 1, last_error=error[:1000])
                )

    # -- erasure: deleting resources on the server ---------------------------------------------

    def delete(
        self,
        match_urls: Sequence[str],
        *,
        confirmed: Callable[[Sequence[str]], None] | None = None,
    ) -> DeliveryReport:
        """Delete resources on the server by their match URLs (`match_url`: a conditional DELETE
        Type?identifier=system|value, or DELETE Type/id for a resource without identifier), in
        bounded transaction Bundles, in the order given (put what references others first: the
        server may refuse to delete a resource that is still referenced). `confirmed` is called
        with each batch the server acknowledged. Deleting is idempotent: an entry may answer any
        2xx, or 404 for a resource the server does not hold (some servers answer a conditional
        delete without match so). Retries as `deliver` does; DeliveryError when refused."""
        report = DeliveryReport()
        with httpx.Client(timeout=self.timeout_s) as client:
            for start in range(0, len(match_urls), self.batch_size):
                batch = list(match_urls[start : start + self.batch_size])
                bundle = {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": url}} for url in batch],
                }
                try:
                    self._post(client, orjson.dumps(bundle), len(batch), report, _gone)
                except DeliveryError:
                    report.remaining = len(match_urls) - start
                    raise
                if confirmed is not None:
                    confirmed(batch)
                report.sent += len(batch)
                report.batches += 1
        return report
