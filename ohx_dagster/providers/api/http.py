"""The HTTP side of every provider API source: one small client over httpx.

- Bearer auth from a `TokenSource` (ohx_dagster.providers.api.tokens): on a 401 the source refreshes
  once and the request is repeated once; a second 401 means the user must reconnect.
- 5xx answers and connection errors (reset, refused, timeout) are retried with exponential backoff
  and jitter; when the attempts are used up they become a ProviderError.
- 429, and 503 with a Retry-After, become RateLimited(provider, retry_after_s) at once: the sync
  turns that into a Dagster retry after Retry-After (seconds or an HTTP-date), instead of sleeping
  inside a run that holds one of the provider's concurrency slots. The application's shared
  request budget (ohx_dagster.providers.api.budget) is told, so every other run stops calling too.
- 403 becomes Refused: the provider will not serve this to us (a scope the person did not grant,
  an expired membership); the source records it per data type and the sync skips that type.
- Every error names the provider, the endpoint, the status and a short excerpt of the body; the
  access token never appears in a message (it is cut out of the excerpt too).
- `paginate` follows a provider's page token until the provider stops sending one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol, TypeVar

import httpx
import orjson

from ohx_dagster.core import errors
from ohx_dagster.core.errors import ProviderError, RateLimited

EXCERPT_CHARS: Final = 200
MAX_PAGES: Final = 10_000
T = TypeVar("T")


class TokenSource(Protocol):
    """A user's access token, and a way to replace one the provider rejected."""

    def access_token(self) -> str: ...

    def refresh(self, rejected: str) -> str:
        """A new access token; `rejected` is the one the provider answered 401 to."""
        ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A TokenSource for an access token issued a moment ago (the connect flow's): no refresh."""

    token: str = field(repr=False)

    def access_token(self) -> str:
        return self.token

    def refresh(self, rejected: str) -> str:
        raise ProviderError("the access token just issued was rejected (401)")


class HttpStatusError(ProviderError):
    """The provider answered with an error status (after retries, where they apply)."""

    def __init__(self, provider: str, endpoint: str, status: int, excerpt: str) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.status = status
        self.excerpt = excerpt
        super().__init__(f"{provider} {endpoint}: HTTP {status}: {excerpt}")


class Unauthorized(HttpStatusError):
    """401: the access token is expired or revoked."""


class Refused(HttpStatusError, errors.Refused):
    """403: the provider refuses this request to us (scope not granted, membership expired)."""


class Budget(Protocol):
    """The application's shared request allowance (ohx_dagster.providers.api.budget)."""

    def take(self) -> None:
        """Count one request, or raise RateLimited when none is left."""
        ...

    def block(self, retry_after_s: float | None) -> None:
        """The provider answered 429: no run calls it before Retry-After."""
        ...


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3); None if absent
    or unreadable. A date in the past means "now" (0 s)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def excerpt(body: bytes | str, *, secrets: tuple[str, ...] = ()) -> str:
    """The start of a response body for an error message, one line, secrets cut out."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


@dataclass
class ApiClient:
    """One provider's API: base URL, timeouts, retries. Thread-safe (httpx.Client is)."""

    provider: str
    base_url: str
    timeout_s: float = 30.0
    attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.base_url.rstrip("/"),
            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            headers={"Accept": "application/json", "User-Agent": "ohx-dagster"},
        )

    def close(self) -> None:
        self.client.close()

    def _pause(self, attempt: int) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        self.sleep(delay * random.uniform(0.5, 1.0))

    def send(
        self,
        method: str,
        endpoint: str,
        *,
        token: str | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        budget: Budget | None = None,
    ) -> httpx.Response:
        """One request with retries on 5xx and connection errors; a 2xx response or an error.
        `json_body` is sent as JSON, `headers` beside the bearer token (app credentials: pass
        their values in `secrets` too). `secrets` (besides the token) are cut out of error
        messages."""
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        secrets = (*secrets, token) if token else secrets
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            if budget is not None:
                budget.take()
            try:
                response = self.client.request(
                    method, endpoint, params=params, data=data, json=json_body, headers=sent
                )
            except httpx.TransportError as exc:
                if last:
                    raise ProviderError(
                        f"{self.provider} {endpoint}: {type(exc).__name__} after "
                        f"{self.attempts} attempts: {excerpt(str(exc), secrets=secrets)}"
                    ) from None
                self._pause(attempt)
                continue
            status = response.status_code
            if status < 400:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429 or (status == 503 and retry_after is not None):
                if budget is not None:
                    budget.block(retry_after)
                raise RateLimited(self.provider, retry_after)
            body = excerpt(response.content, secrets=secrets)
            if status == 401:
                raise Unauthorized(self.provider, endpoint, status, body)
            if status == 403:
                raise Refused(self.provider, endpoint, status, body)
            if status >= 500 and not last:
                self._pause(attempt)
                continue
            raise HttpStatusError(self.provider, endpoint, status, body)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def json(
        self,
        method: str,
        endpoint: str,
        *,
        auth: TokenSource | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        check: Callable[[Any], None] | None = None,
        budget: Budget | None = None,
    ) -> Any:
        """The decoded JSON body. `check` inspects it (providers that answer errors with HTTP
        200 raise from it; Unauthorized there counts as a 401). With `auth`, a 401 refreshes
        the token and repeats the request once."""
        token = auth.access_token() if auth is not None else None
        for attempt in range(2):
            try:
                response = self.send(
                    method, endpoint, token=token, params=params, data=data, budget=budget
                )
                body = decode_json(
                    self.provider, endpoint, response.content, secrets=(token or "",)
                )
                if check is not None:
                    check(body)
                return body
            except Unauthorized as rejected:
                if auth is None or token is None:
                    raise
                if attempt == 1:
                    raise HttpStatusError(
                        self.provider,
                        endpoint,
                        401,
                        f"the refreshed token was rejected too, reconnect the user: "
                        f"{rejected.excerpt}",
                    ) from None
                token = auth.refresh(token)
        raise AssertionError("unreachable: the second attempt returns or raises")


def decode_json(provider: str, endpoint: str, body: bytes, *, secrets: tuple[str, ...] = ()) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(
            f"{provider} {endpoint}: malformed JSON ({exc}): {excerpt(body, secrets=secrets)}"
        ) from None


def paginate(
    provider: str,
    endpoint: str,
    fetch_page: Callable[[str | None], tuple[list[T], str | None]],
    *,
    max_pages: int = MAX_PAGES,
) -> Iterator[T]:
    """Items of every page: `fetch_page(token)` returns (items, next token or None/"")."""
    token: str | None = None
    seen: set[str] = set()
    for _ in range(max_pages):
        items, token = fetch_page(token)
        yield from items
        if not token:
            return
        if token in seen:
            raise ProviderError(f"{provider} {endpoint}: page token {token[:40]!r} repeated")
        seen.add(token)
    raise ProviderError(f"{provider} {endpoint}: more than {max_pages} pages")
