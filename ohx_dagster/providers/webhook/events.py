"""An event as a provider's webhook route parsed it, checked to fit an inbox row before any
database sees it (ohx_dagster.sync.inbox commits it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.ids import check_id, check_user_id, excerpt
from ohx_dagster.core.models import HealthDataType, require_aware
from ohx_dagster.storage.db import text_length
from ohx_dagster.storage.schema import webhook_inbox

# What one inbox row can hold, checked by NewEvent before any database sees the event: a value
# the database refused would fail the whole transaction, and the receiver commits concurrent
# requests in one (ohx_dagster/receiver/app.py). Lengths are the columns' own.
MAX_CHARS: Final = {
    name: text_length(webhook_inbox.c[name]) for name in ("provider", "user_id", "event_key")
}
MAX_PAYLOAD_BYTES: Final = 256 * 1024  # the payload as stored (compact JSON, UTF-8)
MAX_REASON_CHARS: Final = 1_000


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A notification as the receiver parsed it, before it has an inbox id.

    `ignored_reason` set: the event is kept for the record (status 'ignored') but never reaches
    the sensor, e.g. a revoked-access notice or a category that carries no health data we sync.

    Construction checks everything the inbox row needs (ValidationError naming the field), so an
    event that exists can be committed: provider <= 64, user_id <= 128 and event_key <= 512
    characters without control characters, data_type null or a known HealthDataType, an aware
    occurred_at, a JSON-serializable payload of at most MAX_PAYLOAD_BYTES.
    """

    provider: str
    event_key: str
    user_id: str
    data_type: str | None
    occurred_at: datetime | None
    payload: Mapping[str, Any] = field(default_factory=dict)
    ignored_reason: str | None = None

    def __post_init__(self) -> None:
        check_id("provider", self.provider, MAX_CHARS["provider"])
        check_user_id(self.user_id)  # the rule every entry point applies (ohx_dagster/core/ids.py)
        try:
            check_id("event_key", self.event_key, MAX_CHARS["event_key"])
        except ValidationError as exc:  # the key begins with the person's id: not repeated
            shown = f"<{len(self.event_key)} characters, not shown>"
            raise ValidationError("event_key", shown, exc.expected) from None
        if self.data_type is not None:
            try:
                object.__setattr__(self, "data_type", HealthDataType(self.data_type).value)
            except ValueError:
                known = [t.value for t in HealthDataType]
                expected = f"null or one of {known}"
                raise ValidationError("data_type", excerpt(self.data_type), expected) from None
        if self.occurred_at is not None:
            require_aware("occurred_at", self.occurred_at)
        if not isinstance(self.payload, Mapping):
            raise ValidationError("payload", type(self.payload).__name__, "a JSON object")
        try:
            size = len(orjson.dumps(dict(self.payload)))
        except orjson.JSONEncodeError as exc:
            raise ValidationError("payload", str(exc), "JSON-serializable values") from None
        if size > MAX_PAYLOAD_BYTES:
            raise ValidationError("payload", f"{size} bytes", f"<= {MAX_PAYLOAD_BYTES} bytes")
        if self.ignored_reason is not None:
            check_id("ignored_reason", self.ignored_reason, MAX_REASON_CHARS, controls=False)
