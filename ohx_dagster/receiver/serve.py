"""The receiver's uvicorn server: its limits, and a server in a background thread for tests,
benchmarks and demos.

    with serve_in_thread(create_app(store, secrets), limits=ReceiverLimits()) as base_url:
        httpx.get(f"{base_url}/healthz")

`server_config` is the one place the limits of ohx_dagster/config/receiver.py reach uvicorn: the
connection limit (limit_concurrency), the keep-alive timeout, proxy headers only from trusted
proxies, and the HTTP protocol. uvicorn 0.54 has no timeout for a request's head (its keep-alive
timer starts after a response, and any byte stops it), so a client could hold a connection open
forever by sending nothing, or a header a minute. `GuardedHttpToolsProtocol` is uvicorn's own
httptools protocol plus that deadline: the request line and headers must arrive within
`header_timeout_s` of the connection's start, or of the first byte after the previous response
(which also bounds the rest of a body the app answered early, 401 or 404, without reading it);
otherwise 408 and the connection is closed. A body the app reads has its own timeout there
(ohx_dagster.receiver.app). It also caps the connections one client address holds open (503 and
closed at once beyond it), so that one client cannot fill limit_concurrency and shut out everyone
else; trusted proxies are not capped.

Port 0 picks a free ephemeral port; the URL yielded is the one the server actually bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Final

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ohx_dagster.config.receiver import ReceiverLimits
from ohx_dagster.receiver.refusals import address_key

_HEAD_TIMEOUT_BODY: Final = b"request line and headers not received in time"
_HEAD_TIMEOUT_ANSWER: Final = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_HEAD_TIMEOUT_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _HEAD_TIMEOUT_BODY
)
_TOO_MANY_BODY: Final = b"too many connections from this address"
_TOO_MANY_ANSWER: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TOO_MANY_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _TOO_MANY_BODY
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's head and a cap on the
    connections per client address (see the module doc).

    `protocol_for` makes the subclass for one server's limits: uvicorn builds one protocol
    instance per connection from the class alone, so the class holds the settings and the count
    of open connections per address."""

    header_timeout_s: ClassVar[float] = ReceiverLimits().header_timeout_s
    max_per_address: ClassVar[int] = 0  # 0 = no cap
    uncapped: ClassVar[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = ()
    open_per_address: ClassVar[Counter[str]] = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._counted_as: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_per_address and self.client and not self._uncapped(self.client[0]):
            address = address_key(self.client[0])
            if self.open_per_address[address] >= self.max_per_address:
                # debug: one line per refused connection would let one client fill the log
                self.logger.debug("%s: over %d connections, refused", address, self.max_per_address)
                transport.write(_TOO_MANY_ANSWER)
                transport.close()
                return
            self.open_per_address[address] += 1
            self._counted_as = address
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted_as is not None:
            self.open_per_address[self._counted_as] -= 1
            if self.open_per_address[self._counted_as] <= 0:
                del self.open_per_address[self._counted_as]
            self._counted_as = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes between requests start the next request's head: its deadline runs from now.
        # (During a request the app's body timeout applies, and no new head is being read.)
        if self._head_deadline is None and self._between_requests():
            self._arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _uncapped(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.uncapped)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if not self._between_requests():
            # A pipelined head arriving while the previous request is still being answered:
            # the answer must not be cut, so the head gets a new deadline.
            self._arm()
            return
        self.transport.write(_HEAD_TIMEOUT_ANSWER)
        self.transport.close()


def protocol_for(limits: ReceiverLimits) -> type[GuardedHttpToolsProtocol]:
    """The guarded protocol class for one server with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": limits.header_timeout_s,
            "max_per_address": limits.max_connections_per_address,
            "uncapped": tuple(ipaddress.ip_network(p) for p in limits.trusted_proxies),
            "open_per_address": Counter(),
        },
    )


def server_config(
    app: ASGIApp,
    limits: ReceiverLimits,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> uvicorn.Config:
    """The uvicorn configuration that applies `limits` (ohx-webhooks and serve_in_thread)."""
    trusted = list(limits.trusted_proxies)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=protocol_for(limits),
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive_s,
        # X-Forwarded-For is believed only from the configured proxies, never by default
        # (uvicorn's own default trusts 127.0.0.1 or $FORWARDED_ALLOW_IPS).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )


@contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ReceiverLimits | None = None,
    startup_timeout_s: float = 10.0,
) -> Iterator[str]:
    server = uvicorn.Server(server_config(app, limits or ReceiverLimits(), host=host, port=port))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout_s)
