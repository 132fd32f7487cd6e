"""A real HTTP FHIR server on 127.0.0.1 for delivery tests, shared by the test modules.

It implements what the product relies on, as the FHIR R5 specification describes transaction
processing (http.html#trules): transaction Bundles (all entries or none) of conditional updates
(PUT Type?identifier=system|value; the server assigns its own ids on create, so a failed
identifier match would show as a duplicate), updates by id (PUT Type/id), conditional deletes
(DELETE Type?identifier=...) and deletes by id (DELETE Type/id), and references resolved inside
the transaction: an entry's fullUrl (urn:uuid) becomes the server's id of that entry, a
conditional reference (Type?identifier=...) is resolved by a search that must find exactly one
resource (412 otherwise), and every literal reference must point at a resource the server holds
(referential integrity, as HAPI FHIR enforces it by default; 400 otherwise); a delete of a
resource others still reference is refused (409).
Versions: meta.versionId grows on every applied update. Reads: search by identifier
(GET Type?identifier=...) and by id (GET Type/id). Two token endpoints: client credentials with a
secret, and SMART Backend Services, which verifies the signed JWT client assertion with the
client's registered public key. It fails on demand (`faults`) and can be stopped and started
again on the same port (connections refused in between).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import orjson

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def split_token(text: str) -> tuple[str, str]:
    """system|value with FHIR's backslash escapes undone."""
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == "|" and not parts:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts[0], current


class Refused(Exception):
    """A transaction the server refuses as a whole: HTTP status and what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _references(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


class FhirServer:
    """An in-memory FHIR server: resources keyed by type and server-assigned id."""

    def __init__(self, token: str = "secret-token") -> None:
        self.resources: dict[tuple[str, str], dict] = {}
        # One entry per FHIR request (POST or GET): None (serve it), "500", "503", "429",
        # "400", "drop-after-apply" (apply, then close the connection without an answer).
        self.faults: list[str | None] = []
        self.transactions = 0
        self.assigned_ids = 0
        self.requests = 0
        self.creates = 0
        self.token = token
        self.issued: set[str] = set()
        self.token_requests = 0
        self.token_lifetime_s = 300
        self.rejected_assertions: list[str] = []
        self.seen_jti: set[str] = set()
        self.smart_clients: dict[str, tuple[object, str]] = {}  # client id -> (public key, kid)
        self.refusals: list[str] = []
        self.received: list[dict] = []  # every transaction Bundle, as sent
        self.lock = threading.Lock()
        self._port = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.start()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on the same port."""
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler())
        self._port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket: clients get 'connection refused' until start()."""
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    # -- the FHIR contract ----------------------------------------------------------------

    def find(
        self, resource_type: str, system: str, value: str, among: dict | None = None
    ) -> list[tuple[str, str]]:
        """Keys of the resources of a type that hold the identifier."""
        return [
            key
            for key, stored in (self.resources if among is None else among).items()
            if key[0] == resource_type
            and any(
                i.get("system") == system and i.get("value") == value
                for i in stored.get("identifier", [])
            )
        ]

    def apply(self, bundle: dict) -> dict:
        """All entries or none (transaction semantics); raises Refused for a failed entry."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise Refused(400, "not a transaction Bundle")
        with self.lock:
            before = self.resources
            staged = dict(before)
            statuses: list[str] = []
            assigned: dict[str, str] = {}  # fullUrl -> Type/id on this server
            written: list[tuple[str, str]] = []
            deleted: list[tuple[str, str]] = []
            creates = 0
            for entry in bundle.get("entry", []):
                request = entry.get("request", {})
                method, url = request.get("method"), urlsplit(request.get("url", ""))
                resource_type = url.path
                if method == "DELETE":
                    if url.query:
                        keys = self._matches(resource_type, url.query, staged)
                    else:  # by id (a Provenance has no identifier); absent = already gone
                        by_id = tuple(url.path.split("/", 1))
                        keys = [by_id] if by_id in staged else []
                    for key in keys:
                        del staged[key]
                        deleted.append(key)
                    statuses.append("204 No Content")
                    continue
                if method != "PUT" or "resource" not in entry:
                    raise Refused(400, f"unsupported entry {method} {request.get('url')}")
                if url.query:
                    matches = self._matches(resource_type, url.query, staged)
                    if len(matches) > 1:
                        raise Refused(412, f"{request['url']}: {len(matches)} matches")
                    key = matches[0] if matches else (resource_type, f"srv-{self._next_id()}")
                else:
                    resource_type, _, resource_id = url.path.partition("/")
                    key = (resource_type, resource_id)
                sent_type = entry["resource"].get("resourceType")
                if sent_type != resource_type:
                    raise Refused(400, f"{request['url']}: the entry holds a {sent_type}")
                if key in staged:
                    version = int(staged[key]["meta"]["versionId"]) + 1
                    statuses.append("200 OK")
                else:
                    version = 1
                    creates += 1
                    statuses.append("201 Created")
                resource = orjson.loads(orjson.dumps(entry["resource"]))
                resource["id"] = key[1]
                resource["meta"] = {"versionId": str(version), "lastUpdated": _now()}
                staged[key] = resource
                written.append(key)
                if "fullUrl" in entry:
                    assigned[entry["fullUrl"]] = f"{key[0]}/{key[1]}"
            for key in written:
                for ref in _references(staged[key]):
                    ref["reference"] = self._resolve(ref["reference"], assigned, before, staged)
            self._check_deletes(deleted, staged)
            self.resources = staged
            self.transactions += 1
            self.creates += creates
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": s}} for s in statuses],
        }

    def _next_id(self) -> int:
        self.assigned_ids += 1
        return self.assigned_ids

    def _matches(self, resource_type: str, query: str, among: dict) -> list[tuple[str, str]]:
        values = parse_qs(query).get("identifier")
        if not values:
            raise Refused(400, f"{resource_type}?{query}: only identifier searches are supported")
        system, value = split_token(unquote(values[0]))
        return self.find(resource_type, system, value, among=among)

    def _resolve(self, reference: str, assigned: dict, before: dict, staged: dict) -> str:
        """The server's Type/id for a reference of an entry (see the module docstring)."""
        if reference.startswith("urn:uuid:"):
            if reference not in assigned:
                raise Refused(400, f"{reference}: no entry of the transaction has this fullUrl")
            return assigned[reference]
        resource_type, _, rest = reference.partition("?")
        if rest:
            matches = self._matches(resource_type, rest, before)
            if len(matches) != 1:
                raise Refused(412, f"conditional reference {reference}: {len(matches)} matches")
            return f"{matches[0][0]}/{matches[0][1]}"
        target = tuple(reference.split("/", 1))
        if target not in staged:
            raise Refused(400, f"{reference}: no such resource (referential integrity)")
        return reference

    @staticmethod
    def _check_deletes(deleted: list[tuple[str, str]], staged: dict) -> None:
        gone = {f"{t}/{i}" for t, i in deleted}
        if gone:
            for key, resource in staged.items():
                for ref in _references(resource):
                    if ref["reference"] in gone:
                        raise Refused(409, f"{ref['reference']} is referenced by {key[0]}/{key[1]}")

    def search(self, resource_type: str, query: str) -> dict:
        with self.lock:
            found = [self.resources[k] for k in self._matches(resource_type, query, self.resources)]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
        }

    def read(self, resource_type: str, resource_id: str) -> dict | None:
        with self.lock:
            return self.resources.get((resource_type, resource_id))

    def resolve(self, reference: dict) -> dict | None:
        """The resource a stored Reference points at (None if it does not resolve)."""
        resource_type, _, resource_id = reference.get("reference", "").partition("/")
        return self.read(resource_type, resource_id)

    def versions(self) -> dict[str, int]:
        """identifier value (Type/id without one) -> versionId of what the server holds."""
        return {
            r["identifier"][0]["value"] if r.get("identifier") else f"{t}/{r['id']}": int(
                r["meta"]["versionId"]
            )
            for (t, _), r in self.resources.items()
        }

    # -- token endpoints ------------------------------------------------------------------

    def token_response(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        self.token_requests += 1
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}
        if "client_assertion" in form:
            problem = self.verify_assertion(form)
            if problem:
                self.rejected_assertions.append(problem)
                return 401, {"error": "invalid_client", "error_description": problem}
        elif form.get("client_secret") != ["s3cret"]:
            return 401, {"error": "invalid_client"}
        token = f"token-{self.token_requests}"
        self.issued.add(token)
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime_s,
            "scope": form.get("scope", [""])[0],
        }

    def verify_assertion(self, form: dict[str, list[str]]) -> str | None:
        """SMART Backend Services: the assertion names a registered client (iss = sub), is
        signed by its key (RS384 / ES384, kid as registered), is for this token endpoint (aud),
        expires within five minutes, and its jti was never seen before."""
        if form.get("client_assertion_type") != [ASSERTION_TYPE]:
            return "client_assertion_type"
        assertion = form["client_assertion"][0]
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            client_id = unverified.get("iss")
            if client_id not in self.smart_clients:
                return f"unknown client {client_id!r}"
            public_key, kid = self.smart_clients[client_id]
            if header.get("kid") != kid or header.get("typ") != "JWT":
                return f"header {header}"
            claims = jwt.decode(
                assertion,
                public_key,  # type: ignore[arg-type]
                algorithms=["RS384", "ES384"],
                audience=self.token_url,
                issuer=client_id,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return f"{type(exc).__name__}: {exc}"
        if claims["sub"] != client_id:
            return "sub != iss"
        if claims["exp"] - time.time() > 300:
            return "exp more than five minutes ahead"
        if claims["jti"] in self.seen_jti:
            return "jti replayed"
        self.seen_jti.add(claims["jti"])
        return None

    def authorized(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ")
        return token == self.token or token in self.issued

    # -- HTTP -----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _fault(self) -> str | None:
                """Answer an injected fault; returns the fault left for the caller to handle."""
                fault = server.faults.pop(0) if server.faults else None
                if fault in ("500", "503"):
                    self._reply(int(fault), {"resourceType": "OperationOutcome"})
                    return "answered"
                if fault == "429":
                    self._reply(429, {"resourceType": "OperationOutcome"}, {"Retry-After": "1"})
                    return "answered"
                if fault == "400":
                    self._reply(400, {"resourceType": "OperationOutcome", "issue": []})
                    return "answered"
                return fault

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if self.path == "/token":
                    return self._reply(*server.token_response(parse_qs(body.decode())))
                server.requests += 1
                if not server.authorized(self.headers.get("Authorization")):
                    return self._reply(401, {"resourceType": "OperationOutcome"})
                fault = self._fault()
                if fault == "answered":
                    return
                bundle = orjson.loads(body)
                server.received.append(bundle)
                try:
                    response = server.apply(bundle)
                except Refused as exc:
                    server.refusals.append(str(exc))
                    return self._reply(exc.status, _outcome(str(exc)))
                if fault == "drop-after-apply":
                    self.close_connection = True
                    self.connection.close()  # applied, but the client never hears of it
                    return
                self._reply(200, response)

            def do_GET(self) -> None:
                server.requests += 1
                if not server.authorized(self.headers.get("Authorization")):
                    return self._reply(401, {"resourceType": "OperationOutcome"})
                if self._fault() == "answered":
                    return
                url = urlsplit(self.path)
                path = url.path.removeprefix("/fhir/")
                if not url.query:
                    resource_type, _, resource_id = path.partition("/")
                    found = server.read(resource_type, resource_id)
                    if found is None:
                        return self._reply(404, _outcome(f"{path} not found"))
                    return self._reply(200, found)
                try:
                    self._reply(200, server.search(path, url.query))
                except Refused as exc:
                    self._reply(exc.status, _outcome(str(exc)))

        return Handler


def _outcome(message: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": message}],
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextmanager
def running_fhir_server() -> Iterator[FhirServer]:
    server = FhirServer()
    try:
        yield server
    finally:
        if server.httpd is not None:
            server.stop()
