"""A real HTTP server on 127.0.0.1 (uvicorn, ephemeral port) playing a provider's API in tests.

Each test scripts what a path answers: `api.on("/v2/usercollection/heartrate", handler)` where
the handler takes the `Call` (method, path, query, form, headers, raw body) and returns (status,
body, headers); `api.queue(path, *answers)` answers a path's requests in order (the last one
repeats).
Every request is kept in `api.calls`, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ohx_dagster.receiver.serve import serve_in_thread

Answer = tuple[int, Any, dict[str, str]]


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


def answer(status: int, body: Any = None, **headers: str) -> Answer:
    """A JSON body (dict/list), raw bytes/str sent as they are, or None for an empty body."""
    return status, body, {k.replace("_", "-"): v for k, v in headers.items()}


@dataclass
class FakeApi:
    base_url: str = ""
    handlers: dict[str, Callable[[Call], Answer]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str, handler: Callable[[Call], Answer]) -> None:
        self.handlers[path] = handler

    def queue(self, path: str, *answers: Answer) -> None:
        pending = list(answers)

        def next_answer(_call: Call) -> Answer:
            with self.lock:
                return pending.pop(0) if len(pending) > 1 else pending[0]

        self.on(path, next_answer)

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        form = dict(parse_qsl(body.decode())) if body else {}
        call = Call(
            request.method,
            request.url.path,
            dict(request.query_params),
            form,
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        with self.lock:
            self.calls.append(call)
        handler = self.handlers.get(call.path)
        if handler is None:
            return Response(b'{"detail": "not found"}', status_code=404)
        status, content, headers = handler(call)
        if content is None:
            raw = b""
        elif isinstance(content, bytes | str):
            raw = content.encode() if isinstance(content, str) else content
        else:
            raw = orjson.dumps(content)
        return Response(raw, status_code=status, headers=headers, media_type="application/json")


@contextmanager
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    app = Starlette(
        routes=[Route("/{path:path}", api._endpoint, methods=["GET", "POST", "HEAD", "PUT"])]
    )
    with serve_in_thread(app) as base_url:
        api.base_url = base_url
        yield api


def documented(provider: str, name: str) -> Any:
    """A fixture body in a provider's documented shape (ohx_dagster/providers/<provider>/fixtures,
    its source in SOURCE.md beside it): a fresh copy to fill with a test's values."""
    path = Path(__file__).resolve().parents[2] / "ohx_dagster" / "providers" / provider
    return orjson.loads((path / "fixtures" / f"{name}.json").read_bytes())
