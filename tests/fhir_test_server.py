"""A real HTTP FHIR server on 127.0.0.1 for delivery tests, shared by the test modules.

It implements what the product relies on: transaction Bundles (all entries or none) of conditional
updates (PUT Type?identifier=system|value; the server assigns its own ids on create, so a failed
identifier match would show as a duplicate), versions (meta.versionId grows on every applied
update), search by identifier (GET Type?identifier=...), and two token endpoints: client
credentials with a secret, and SMART Backend Services, which verifies the signed JWT client
assertion with the client's registered public key. It fails on demand (`faults`) and can be
stopped and started again on the same port (connections refused in between).
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


class FhirServer:
    """An in-memory FHIR server: resources keyed by type and server-assigned id."""

    def __init__(self, token: str = "secret-token") -> None:
        self.resources: dict[tuple[str, str], dict] = {}
        # One entry per FHIR request (POST or GET): None (serve it), "500", "503", "429",
        # "400", "drop-after-apply" (apply, then close the connection without an answer).
        self.faults: list[str | None] = []
        self.transactions = 0
        self.requests = 0
        self.creates = 0
        self.token = token
        self.issued: set[str] = set()
        self.token_requests = 0
        self.token_lifetime_s = 300
        self.rejected_assertions: list[str] = []
        self.seen_jti: set[str] = set()
        self.smart_clients: dict[str, tuple[object, str]] = {}  # client id -> (public key, kid)
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
        """All entries or none (transaction semantics), each a conditional update."""
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        with self.lock:
            staged = dict(self.resources)
            statuses, creates = [], 0
            for entry in bundle["entry"]:
                request = entry["request"]
                assert request["method"] == "PUT"
                url = urlsplit(request["url"])
                resource_type = url.path
                system, value = split_token(unquote(parse_qs(url.query)["identifier"][0]))
                matches = self.find(resource_type, system, value, among=staged)
                if len(matches) > 1:
                    raise AssertionError("412: multiple matches")
                resource = dict(entry["resource"])
                if matches:
                    key = matches[0]
                    version = int(staged[key]["meta"]["versionId"]) + 1
                    statuses.append("200 OK")
                else:
                    key = (resource_type, f"srv-{len(staged) + 1}")
                    version = 1
                    creates += 1
                    statuses.append("201 Created")
                resource["id"] = key[1]
                resource["meta"] = {"versionId": str(version), "lastUpdated": _now()}
                staged[key] = resource
            self.resources = staged
            self.transactions += 1
            self.creates += creates
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": s}} for s in statuses],
        }

    def search(self, resource_type: str, query: str) -> dict:
        system, value = split_token(unquote(parse_qs(query)["identifier"][0]))
        with self.lock:
            found = [self.resources[k] for k in self.find(resource_type, system, value)]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
        }

    def versions(self) -> dict[str, int]:
        """identifier value -> versionId of what the server holds."""
        return {
            r["identifier"][0]["value"]: int(r["meta"]["versionId"])
            for r in self.resources.values()
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
                response = server.apply(orjson.loads(body))
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
                resource_type = url.path.removeprefix("/fhir/")
                self._reply(200, server.search(resource_type, url.query))

        return Handler


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
