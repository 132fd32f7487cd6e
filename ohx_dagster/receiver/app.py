"""The webhook receiver: an ASGI app with one route per provider under /webhooks/<provider>.

Per request: refuse a client over its rate (429 with Retry-After, per address, /healthz exempt),
refuse oversized bodies (413) before reading them whole and bodies that do not arrive in time
(408; both close the connection), authenticate the raw body (401: bad or stale signature, wrong
token, unknown Withings user), parse it (400 naming what is wrong, including values longer than
the inbox holds), commit the events to the inbox, and only then acknowledge (2xx). A duplicate (a
provider's retry, a replay inside the window) commits nothing new and is acknowledged the same
way. Nothing is stored for a 4xx. No provider is called here: the webhook sensor fetches the data
later. Limits: ohx_dagster/config/receiver.py (ReceiverLimits); the connection-level ones are the
server's (ohx_dagster/receiver/serve.py).

The inbox write blocks, so it runs in a worker thread and the event loop keeps answering. With
`group_commit` (the default) the requests that arrive while one inbox transaction is being
committed are committed together in the next one, each acknowledged after its own commit: one
SQLite transaction per batch instead of per request, and a single writer, so no lock contention.
One request must never fail its neighbours: if a shared transaction fails for a reason other than
the database being unreachable, each of its requests is committed again on its own, so only the
one the database refuses fails. When the database is down (OperationalError, InterfaceError) every
request gets 503 at once and the provider retries later.

Refused requests are logged without letting a flood fill the log (RefusalLog): the first refusal
of each kind (status, method, route) in an interval gets its full line, the others are counted
and told in one summary line per interval (written by the next refusal, by a task that ticks
every interval, or when the receiver stops). A request whose headers or query are ambiguous or
oversized is refused with 400 before any route reads it (RequestShape): a header given twice
(two signatures, two Content-Lengths: which one did the signature cover?), a query parameter
given twice, a header value over MAX_HEADER_CHARS or a query value over MAX_QUERY_CHARS.

Handshakes:
- oura: GET ?verification_token=<t>&challenge=<c> -> 200 {"challenge": c} for our token, else 401.
- withings: HEAD -> 200 (Withings checks the callback URL answers before it registers it).
- simulated (development only, mounted only when its secret is configured): GET ?challenge=<c>
  signed like a POST (X-OHX-Timestamp, X-OHX-Signature over timestamp + "." + c) ->
  200 {"challenge": c}; unsigned, forged or stale -> 401.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from importlib import import_module
from typing import Final
from urllib.parse import parse_qsl

from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ohx_dagster.config.receiver import ReceiverLimits, WebhookSecrets
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.privacy.audit import RefusedRows
from ohx_dagster.providers.registry import API_PROVIDERS
from ohx_dagster.providers.webhook import signatures
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.receiver import Receiver
from ohx_dagster.providers.webhook.signatures import REPLAY_WINDOW_S, SignatureRejected
from ohx_dagster.receiver import notifications
from ohx_dagster.receiver.connect import ConnectConfig, connect_routes
from ohx_dagster.receiver.refusals import RefusalLog, address_key
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox

MAX_BODY_BYTES: Final = 256 * 1024
MAX_GROUP_REQUESTS: Final = 1_000
# Client addresses the rate limiter remembers; beyond it the least recently seen is forgotten.
MAX_TRACKED_ADDRESSES: Final = 100_000
RATE_EXEMPT_PATHS: Final = frozenset({"/healthz"})
# A signature, a timestamp, a bearer token or a Google JWT is far shorter; a 10,000-character
# header value or id is no provider's.
MAX_HEADER_CHARS: Final = 4096
MAX_QUERY_CHARS: Final = 1024
# Headers HTTP lets a client or proxy send more than once (lists); any other given twice is 400.
REPEATABLE_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "cookie",
        "forwarded",
        "pragma",
        "te",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",  # a chain of proxies may each add its own
        "x-forwarded-port",
        "x-forwarded-proto",
    }
)

log = logging.getLogger("ohx_dagster.receiver")


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


def database_unavailable(exc: BaseException) -> bool:
    """The database itself failed (down, unreachable, locked), not one request's data: retrying
    each request on its own would only fail again, slowly."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class GroupCommitter:
    """Commits concurrent requests' events in shared inbox transactions (see the module doc)."""

    def __init__(self, inbox: Inbox, max_requests: int = MAX_GROUP_REQUESTS) -> None:
        self.inbox = inbox
        self.max_requests = max_requests
        self._waiting: list[tuple[Sequence[NewEvent], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0  # committed transactions, shared or single
        self.fallbacks = 0  # shared transactions that failed and were redone one request each

    async def add(self, events: Sequence[NewEvent]) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_requests]
                del self._waiting[: self.max_requests]
                groups = [events for events, _ in batch]
                outcomes: list[int | Exception]
                try:
                    outcomes = list(await run_in_threadpool(self.inbox.add_groups, groups))
                    self.transactions += 1
                except Exception as exc:
                    if len(batch) == 1 or database_unavailable(exc):
                        outcomes = [exc] * len(batch)  # every waiting request fails (-> 503)
                    else:
                        log.warning(
                            "a transaction of %d requests failed (%s): committing each alone",
                            len(batch),
                            type(exc).__name__,
                        )
                        self.fallbacks += 1
                        outcomes = await run_in_threadpool(self._each_alone, groups)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # a client that went away cancelled its future
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flusher = None

    def _each_alone(self, groups: list[Sequence[NewEvent]]) -> list[int | Exception]:
        """One transaction per request: the new-event count, or the error of that request."""
        outcomes: list[int | Exception] = []
        for index, events in enumerate(groups):
            try:
                outcomes.append(self.inbox.add(events))
            except Exception as exc:
                if database_unavailable(exc):  # the rest would fail the same way
                    outcomes += [exc] * (len(groups) - index)
                    break
                outcomes.append(exc)
            else:
                self.transactions += 1
        return outcomes


class TokenBuckets:
    """A token bucket per client address: `burst` tokens, refilled at `per_minute` a minute; a
    request takes one. At most `max_addresses` buckets are kept (least recently used dropped).
    An address that starts being refused is logged once (a warning), not once per request."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self.per_second = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_addresses = max_addresses
        # address -> (tokens, when they were counted, refusing since then)
        self._buckets: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()

    def take(self, address: str) -> float:
        """0 if the request may go ahead (a token taken), else the seconds until one is free."""
        now = self.clock()
        tokens, then, refusing = self._buckets.pop(address, (self.burst, now, False))
        tokens = min(self.burst, tokens + (now - then) * self.per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.per_second
            if not refusing:
                log.warning(
                    "%s is over %g requests/min (burst %g): answering 429 until it slows down",
                    address,
                    self.per_second * 60,
                    self.burst,
                )
        self._buckets[address] = (tokens, now, wait > 0)
        if len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return wait


def client_address(scope: Scope) -> str:
    """The rate limiter's key: the client's IP (from the socket, or X-Forwarded-For when uvicorn
    trusts the proxy that sent it), IPv6 by its /64."""
    client = scope.get("client")
    return address_key(client[0] if client else "")


class RateLimit:
    """ASGI middleware: 429 with Retry-After for a client address over its token bucket."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in RATE_EXEMPT_PATHS:
            address = client_address(scope)
            wait = self.buckets.take(address)
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                log.debug("429 %s %s from %s", scope["method"], scope["path"], address)
                response = JSONResponse(
                    {"error": f"too many requests from {address}, retry in {retry_after} s"},
                    status_code=429,
                    headers={"Retry-After": str(retry_after)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusals(request: Request) -> RefusalLog:
    return request.app.state.refusals


class RequestShape:
    """ASGI middleware: 400 for a header or query parameter given twice or over its length,
    before a route reads the request."""

    def __init__(self, app: ASGIApp, refusals: RefusalLog) -> None:
        self.app = app
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = _shape_problem(scope) if scope["type"] == "http" else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        self.refusals.refused(logging.INFO, 400, request, problem)
        response = JSONResponse({"error": problem}, status_code=400)
        await response(scope, receive, send)


def _shape_problem(scope: Scope) -> str | None:
    """What is ambiguous or oversized in the request's headers and query, or None."""
    seen: set[bytes] = set()
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.lower()
        if len(raw_value) > MAX_HEADER_CHARS:
            return (
                f"header {name.decode('latin-1')!r} holds {len(raw_value):,} characters: "
                f"expected at most {MAX_HEADER_CHARS:,}"
            )
        if name in seen and name.decode("latin-1") not in REPEATABLE_HEADERS:
            return f"header {name.decode('latin-1')!r} given more than once: expected once"
        seen.add(name)
    names: set[str] = set()
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True):
        if len(value) > MAX_QUERY_CHARS or len(name) > MAX_QUERY_CHARS:
            return (
                f"query parameter {name[:64]!r} holds {len(value):,} characters: expected at "
                f"most {MAX_QUERY_CHARS:,}"
            )
        if name in names:
            return f"query parameter {name[:64]!r} given more than once: expected once"
        names.add(name)
    return None


def create_app(
    store: RecordStore,
    secrets: WebhookSecrets,
    *,
    limits: ReceiverLimits | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    replay_window_s: float = REPLAY_WINDOW_S,
    clock: Callable[[], float] = time.time,
    group_commit: bool = True,
    connect: ConnectConfig | None = None,
    refusals: RefusalLog | None = None,
    refused_rows: RefusedRows | None = None,
) -> Starlette:
    """The receiver for the providers `secrets` configures (others are not mounted); with
    `connect`, also the account-connection routes (ohx_dagster.receiver.connect), whose refused
    staff credentials go to the audit log through `refused_rows` (bounded). Of `limits`
    the app applies the body timeout and the rate limit; serve it with
    ohx_dagster.receiver.serve.server_config(app, limits) for the others."""
    limits = limits or ReceiverLimits()
    inbox = Inbox(store)
    committer = GroupCommitter(inbox) if group_commit else None

    async def commit(events: Sequence[NewEvent]) -> JSONResponse:
        if committer is not None:
            new = await committer.add(events)
        else:
            new = await run_in_threadpool(inbox.add, events)
        return JSONResponse({"accepted": new, "duplicates": len(events) - new})

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise BodyTooLarge(int(declared))
        chunks, size = [], 0
        try:
            async with asyncio.timeout(limits.body_timeout_s), aclosing(request.stream()) as body:
                async for chunk in body:
                    size += len(chunk)
                    if size > max_body_bytes:
                        raise BodyTooLarge(size)
                    chunks.append(chunk)
        except TimeoutError:
            raise BodyTimeout(size) from None
        return b"".join(chunks)

    routes = [Route("/healthz", _healthz(secrets), methods=["GET"])]
    receiver = Receiver(store, body_of, commit, clock, replay_window_s)

    # Every provider with webhooks mounts its own routes: the receiver spells no provider's name.
    for name, provider in API_PROVIDERS.items():
        if provider.webhook is not None:
            routes += import_module(provider.webhook).routes(receiver, secrets.of(name))

    if secrets.simulated_secret is not None:
        secret = secrets.simulated_secret

        def check_simulated(request: Request, signed: bytes) -> None:
            signatures.verify_simulated(
                secret,
                signed,
                request.headers.get("x-ohx-signature"),
                request.headers.get("x-ohx-timestamp"),
                now=clock(),
                window_s=replay_window_s,
            )

        async def simulated_verify(request: Request) -> Response:
            challenge = request.query_params.get("challenge", "")
            check_simulated(request, challenge.encode())
            if not challenge:
                raise ValidationError("challenge", challenge, "a non-empty query parameter")
            return JSONResponse({"challenge": challenge})

        async def simulated_notify(request: Request) -> Response:
            body = await body_of(request)
            check_simulated(request, body)
            return await commit(notifications.parse_simulated(body))

        routes += [
            Route("/webhooks/simulated", simulated_verify, methods=["GET"]),
            Route("/webhooks/simulated", simulated_notify, methods=["POST"]),
        ]

    refusals = refusals or RefusalLog()
    if connect is not None:
        refused_rows = refused_rows or RefusedRows(store)
        routes += connect_routes(store, connect, refusals=refusals, refused_rows=refused_rows)

    buckets = None
    middleware = []
    if limits.rate_per_minute > 0:
        buckets = TokenBuckets(limits.rate_per_minute, limits.rate_burst)
        middleware.append(Middleware(RateLimit, buckets=buckets))
    middleware.append(Middleware(RequestShape, refusals=refusals))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tickers = [asyncio.create_task(refusals.ticking())]
        if refused_rows is not None:
            tickers.append(asyncio.create_task(_ticking_rows(refused_rows)))
        try:
            yield
        finally:
            for ticker in tickers:
                ticker.cancel()
            refusals.flush()  # what was refused since the last summary
            if refused_rows is not None:
                await run_in_threadpool(refused_rows.flush)

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            BodyTooLarge: _too_large(max_body_bytes),
            BodyTimeout: _too_slow(limits.body_timeout_s),
            ClientDisconnect: _client_gone,
            SignatureRejected: _unauthorized,
            ValidationError: _malformed,
            DataError: _refused_value,
            SQLAlchemyError: _inbox_down,
        },
    )
    app.state.inbox = inbox
    app.state.committer = committer
    app.state.rate_buckets = buckets
    app.state.refusals = refusals
    app.state.refused_rows = refused_rows
    return app


async def _ticking_rows(rows: RefusedRows) -> None:
    """Every interval, the summary rows of an interval that ended (a flood that stopped)."""
    while True:
        await asyncio.sleep(rows.interval_s)
        await run_in_threadpool(rows.tick)


def _healthz(secrets: WebhookSecrets) -> Callable[[Request], Awaitable[Response]]:
    mounted = sorted(name for name, on in secrets.mounted.items() if on)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "providers": mounted})

    return healthz


def _too_large(limit: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        # Closing the connection: the rest of the body is never read.
        return JSONResponse(
            {"error": f"body exceeds {limit} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )

    return handler


def _too_slow(timeout_s: float) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        _refusals(request).refused(
            logging.INFO, 408, request, f"body not received in {timeout_s:g} s"
        )
        return JSONResponse(
            {"error": f"request body not received within {timeout_s:g} s"},
            status_code=408,
            headers={"Connection": "close"},
        )

    return handler


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection before its body arrived: nobody reads an answer, and a
    # traceback per such request would let any client fill the log.
    _refusals(request).refused(
        logging.DEBUG, 400, request, "client went away before its body arrived"
    )
    return Response(status_code=400)


async def _unauthorized(request: Request, exc: Exception) -> Response:
    _refusals(request).refused(logging.WARNING, 401, request, exc)
    return JSONResponse({"error": str(exc)}, status_code=401)


async def _malformed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    _refusals(request).refused(logging.INFO, 400, request, exc)
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)


async def _refused_value(request: Request, exc: Exception) -> Response:
    # The database refused a value of this request alone (a group commit that failed was redone
    # one request at a time): the same request would fail again, so no retry is invited.
    _refusals(request).refused(
        logging.WARNING, 400, request, "the inbox refused a value", exc_info=exc
    )
    return JSONResponse({"error": "the event has a value the inbox cannot store"}, status_code=400)


async def _inbox_down(request: Request, exc: Exception) -> Response:
    # Nothing was acknowledged, so the provider retries; the retry dedups if the commit happened.
    log.error("503 %s %s: inbox write failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "inbox unavailable, retry later"}, status_code=503)
