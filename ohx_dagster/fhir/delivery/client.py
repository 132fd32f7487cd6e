"""The FHIR server's client: sends pending outbox rows as transactions, reads back, deletes.

Each transaction Bundle (bundle.py) holds at most `batch_size` pending rows of the outbox
(outbox.py), which are marked delivered only once the server answered every entry with success.
429 and 503 are retried after their Retry-After; other 5xx and dropped connections with
exponential backoff; any other 4xx stops with the server's OperationOutcome in the error.
Audited (ohx_dagster/privacy/audit.py, action `export`): per transaction Bundle, one row per person
whose resources it held, in the transaction that marks them delivered (ok) or records the failure
(failed: the server refused or stayed unavailable); the person as their salted subject, the
server without credentials or query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import sqlalchemy as sa

from ohx_dagster.core.times import now_us
from ohx_dagster.fhir.common import references_in
from ohx_dagster.fhir.delivery.auth import Auth
from ohx_dagster.fhir.delivery.bundle import match_url, transaction
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import pending_query, referenced_match_urls
from ohx_dagster.privacy import audit
from ohx_dagster.providers.api.http import parse_retry_after
from ohx_dagster.storage.schema import fhir_outbox
from ohx_dagster.storage.store import RecordStore

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
FHIR_JSON: Final = "application/fhir+json"


def redacted_url(url: str) -> str:
    """The URL without user:password and query (safe for logs and metadata)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _retry_after(value: str | None, default: float) -> float:
    seconds = parse_retry_after(value)
    return default if seconds is None else seconds


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
            rows = conn.execute(pending_query(partition_key)).all()
        with httpx.Client(timeout=self.timeout_s) as client:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                resources = [orjson.loads(r.body) for r in batch]
                deleted = {(r.resource_type, r.resource_id) for r in batch if r.withdrawn}
                try:
                    self._send(
                        client, resources, referenced_match_urls(store, resources), deleted, report
                    )
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
