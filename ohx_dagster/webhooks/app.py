"""The webhook receiver: an ASGI app with one route per provider under /webhooks/<provider>.

Per request: refuse oversized bodies (413) before reading them whole, authenticate the raw body
(401: bad or stale signature, wrong token, unknown Withings user), parse it (400 naming what is
wrong), commit the events to the inbox, and only then acknowledge (2xx). A duplicate (a provider's
retry, a replay inside the window) commits nothing new and is acknowledged the same way. Nothing
is stored for a 4xx. No provider is called here: the webhook sensor fetches the data later.

The inbox write blocks, so it runs in a worker thread and the event loop keeps answering. With
`group_commit` (the default) the requests that arrive while one inbox transaction is being
committed are committed together in the next one, each acknowledged after its own commit: one
SQLite transaction per batch instead of per request, and a single writer, so no lock contention.

Handshakes:
- fitbit: GET ?verify=<code> -> 204 for the subscriber verification code, 404 for any other.
- oura: GET ?verification_token=<t>&challenge=<c> -> 200 {"challenge": c} for our token, else 401.
- withings: HEAD -> 200 (Withings checks the callback URL answers before it registers it).
- simulated: GET ?challenge=<c> signed like a POST (X-OHX-Timestamp, X-OHX-Signature over
  timestamp + "." + c) -> 200 {"challenge": c}; unsigned, forged or stale -> 401.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import parse_qsl

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ohx_dagster.errors import ValidationError
from ohx_dagster.inbox import Inbox, NewEvent
from ohx_dagster.store import RecordStore
from ohx_dagster.webhooks import notifications, signatures
from ohx_dagster.webhooks.config import WebhookSecrets
from ohx_dagster.webhooks.connect import ConnectConfig, connect_routes
from ohx_dagster.webhooks.signatures import REPLAY_WINDOW_S, SignatureRejected

MAX_BODY_BYTES: Final = 256 * 1024
MAX_GROUP_REQUESTS: Final = 1_000

log = logging.getLogger("ohx_dagster.webhooks")


class BodyTooLarge(Exception):
    pass


class GroupCommitter:
    """Commits concurrent requests' events in shared inbox transactions (see the module doc)."""

    def __init__(self, inbox: Inbox, max_requests: int = MAX_GROUP_REQUESTS) -> None:
        self.inbox = inbox
        self.max_requests = max_requests
        self._waiting: list[tuple[Sequence[NewEvent], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0

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
                try:
                    counts = await run_in_threadpool(self.inbox.add_groups, [e for e, _ in batch])
                except Exception as exc:  # every waiting request fails with it (-> 503)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.transactions += 1
                for (_, future), count in zip(batch, counts, strict=True):
                    if not future.done():  # a client that went away cancelled its future
                        future.set_result(count)
        finally:
            self._flusher = None


def create_app(
    store: RecordStore,
    secrets: WebhookSecrets,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    replay_window_s: float = REPLAY_WINDOW_S,
    clock: Callable[[], float] = time.time,
    group_commit: bool = True,
    connect: ConnectConfig | None = None,
) -> Starlette:
    """The receiver for the providers `secrets` configures (others are not mounted); with
    `connect`, also the account-connection routes (ohx_dagster.webhooks.connect)."""
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
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise BodyTooLarge(size)
            chunks.append(chunk)
        return b"".join(chunks)

    routes = [Route("/healthz", _healthz(secrets), methods=["GET"])]

    if secrets.fitbit is not None:
        fitbit = secrets.fitbit

        async def fitbit_verify(request: Request) -> Response:
            given = request.query_params.get("verify")
            ok = signatures.same_secret(fitbit.verification_code, given)
            return Response(status_code=204 if ok else 404)

        async def fitbit_notify(request: Request) -> Response:
            body = await body_of(request)
            signature = request.headers.get("x-fitbit-signature")
            signatures.verify_fitbit(fitbit.client_secret, body, signature)
            events = notifications.parse_fitbit(body, received_at=clock())
            await commit(events)
            return Response(status_code=204)  # Fitbit expects 204 No Content

        routes += [
            Route("/webhooks/fitbit", fitbit_verify, methods=["GET"]),
            Route("/webhooks/fitbit", fitbit_notify, methods=["POST"]),
        ]

    if secrets.oura is not None:
        oura = secrets.oura

        async def oura_verify(request: Request) -> Response:
            token = request.query_params.get("verification_token")
            challenge = request.query_params.get("challenge")
            if not signatures.same_secret(oura.verification_token, token):
                raise SignatureRejected("verification_token does not match")
            if not challenge:
                raise ValidationError("challenge", challenge, "a non-empty query parameter")
            return JSONResponse({"challenge": challenge})

        async def oura_notify(request: Request) -> Response:
            body = await body_of(request)
            timestamp = request.headers.get("x-oura-timestamp")
            signatures.verify_oura(
                oura.client_secret,
                body,
                request.headers.get("x-oura-signature"),
                timestamp,
                now=clock(),
                window_s=replay_window_s,
            )
            return await commit(notifications.parse_oura(body, delivery_timestamp=timestamp))

        routes += [
            Route("/webhooks/oura", oura_verify, methods=["GET"]),
            Route("/webhooks/oura", oura_notify, methods=["POST"]),
        ]

    if secrets.withings_token is not None:
        token = secrets.withings_token

        async def withings_check(request: Request) -> Response:
            return Response(status_code=200)

        async def withings_notify(request: Request) -> Response:
            if not signatures.same_secret(token, request.query_params.get("token")):
                raise SignatureRejected("callback token missing or wrong")
            body = await body_of(request)
            try:
                form = dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))
            except (UnicodeDecodeError, ValueError):
                raise ValidationError(
                    "body", body[:60], "application/x-www-form-urlencoded fields"
                ) from None
            events = notifications.parse_withings(form)
            user_id = events[0].user_id
            if await run_in_threadpool(store.user, "withings", user_id) is None:
                raise SignatureRejected(f"withings userid {user_id!r} is not a connected user")
            return await commit(events)

        routes += [
            Route("/webhooks/withings", withings_check, methods=["HEAD"]),
            Route("/webhooks/withings", withings_notify, methods=["POST"]),
        ]

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

    if connect is not None:
        routes += connect_routes(store, connect)

    app = Starlette(
        routes=routes,
        exception_handlers={
            BodyTooLarge: _too_large(max_body_bytes),
            SignatureRejected: _unauthorized,
            ValidationError: _malformed,
            SQLAlchemyError: _inbox_down,
        },
    )
    app.state.inbox = inbox
    app.state.committer = committer
    return app


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


async def _unauthorized(request: Request, exc: Exception) -> Response:
    log.warning("401 %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": str(exc)}, status_code=401)


async def _malformed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    log.info("400 %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)


async def _inbox_down(request: Request, exc: Exception) -> Response:
    # Nothing was acknowledged, so the provider retries; the retry dedups if the commit happened.
    log.error("503 %s %s: inbox write failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "inbox unavailable, retry later"}, status_code=503)
