"""What a provider's webhook routes get from the receiver (ohx_dagster.receiver.app): the store,
the body reader with its limits, the inbox commit, the clock and the replay window. A provider's
folder builds its own routes from it (`routes(receiver, secrets)`), so the receiver knows no
provider's format."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse

from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.storage.store import RecordStore


@dataclass(frozen=True, slots=True)
class Receiver:
    store: RecordStore
    # The request body, read within the receiver's size and time limits.
    body_of: Callable[[Request], Awaitable[bytes]]
    # Commit events to the inbox (group commit), then answer {"accepted", "duplicates"}.
    commit: Callable[[Sequence[NewEvent]], Awaitable[JSONResponse]]
    clock: Callable[[], float]
    replay_window_s: float
