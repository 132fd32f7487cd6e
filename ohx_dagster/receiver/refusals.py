"""What the receiver logs of the requests it refuses, and whom it counts them against: a client's
address key (its IPv4 address, or its IPv6 /64) and a bounded log of refusals. The app, the connect
flow and the server's access log share them."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from starlette.requests import Request

# At most one full log line per kind of refusal and one summary line per interval.
REFUSAL_LOG_INTERVAL_S: Final = 60.0

log = logging.getLogger("ohx_dagster.receiver")


def address_key(host: str) -> str:
    """One client's key for per-address limits: its IPv4 address, or its IPv6 /64 (one site's
    allocation: rotating addresses inside it does not make a client many)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RefusalLog:
    """Log lines for refused requests, at most one full line per kind (status, method, path) and
    one summary line per `interval_s`: a flood of forged or malformed requests costs the log a
    few lines a minute, not one per request. The summary of an interval is written when the
    next refusal arrives after it (or at `flush`)."""

    def __init__(
        self,
        interval_s: float = REFUSAL_LOG_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self.logged: set[tuple[int, str, str]] = set()  # kinds given a full line this interval
        self.unlogged: Counter[tuple[int, str, str]] = Counter()

    def refused(
        self,
        level: int,
        status: int,
        request: Request,
        reason: object,
        *,
        exc_info: BaseException | None = None,
    ) -> None:
        now = self.clock()
        if now - self.started >= self.interval_s:
            self.flush(now)
        kind = (status, request.method, request.url.path)
        if kind in self.logged:
            self.unlogged[kind] += 1
            return
        self.logged.add(kind)
        log.log(level, "%d %s %s: %s", status, kind[1], kind[2], reason, exc_info=exc_info)

    def tick(self) -> None:
        """Write the summary of an interval that has ended (the receiver calls this every
        interval, so a flood that stopped is still told)."""
        now = self.clock()
        if now - self.started >= self.interval_s:
            self.flush(now)

    async def ticking(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.tick()

    def flush(self, now: float | None = None) -> None:
        """The summary line of the interval ending now (none when nothing went unlogged)."""
        now = self.clock() if now is None else now
        if self.unlogged:
            total = sum(self.unlogged.values())
            kinds = "; ".join(
                f"{status} {method} {path}: {count:,}"
                for (status, method, path), count in self.unlogged.most_common()
            )
            log.warning(
                "refused %s more requests in the last %.0f s, not logged one by one (%s)",
                f"{total:,}",
                now - self.started,
                kinds,
            )
        self.started = now
        self.logged.clear()
        self.unlogged.clear()
