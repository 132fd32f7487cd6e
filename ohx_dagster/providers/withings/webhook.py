"""Withings notifications: the callback check, the callback token, and notification bodies ->
inbox events. Shapes: Withings' notification pages (SOURCE.md).

- HEAD -> 200: Withings checks that the callback answers before it registers it.
- POST ?token=<our callback token>, form-encoded (application/x-www-form-urlencoded): `userid`,
  `appli`, and as the appli has them `startdate`/`enddate` (Unix seconds), `date` (YYYY-MM-DD or
  Unix seconds), `deviceid`, `action`. Withings signs nothing: the token in the callback URL we
  subscribed with is what authenticates it, and the userid must be a person connected to us
  (else 401).

One event per data type the appli announces (codes.APPLI); the payload keeps the whole form, so
the sync reads [startdate, enddate + 1 s) again (WithingsSource.event_windows). appli 46 with
`action` unlink (or delete: the Withings account is gone) disconnects the person here, and the
event is kept as ignored with that reason. Any other appli 46 action, the applis whose data this
product does not sync, and applis it does not know are acknowledged and kept as ignored: an error
answer would only make Withings retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import Final
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.privacy.subjects import erasure_salt, short, subject_hash
from ohx_dagster.providers.webhook.events import NewEvent
from ohx_dagster.providers.webhook.parsing import quoted, require
from ohx_dagster.providers.webhook.receiver import Receiver
from ohx_dagster.providers.webhook.signatures import SignatureRejected, same_secret
from ohx_dagster.providers.withings.codes import APPLI, IGNORED, NAME, UNLINKED, USER_EVENTS
from ohx_dagster.storage.store import DISCONNECTED

ROUTE: Final = "/webhooks/withings"
# The largest Unix second a notification may name (2**35 s is the year 3058).
_MAX_EPOCH: Final = 2**35


def _epoch(name: str, text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(name, text, "Unix seconds (an integer)", where=where) from None
    if not 0 < value < _MAX_EPOCH:
        raise ValidationError(name, value, "Unix seconds after 1970", where=where)
    return value


def _occurred(stamps: Mapping[str, int], day_text: str, where: str) -> datetime | None:
    """When the notified data was: the range's end, else `date` (noon UTC of a YYYY-MM-DD)."""
    if stamps:
        return datetime.fromtimestamp(stamps.get("enddate", stamps.get("startdate", 0)), UTC)
    if not day_text:
        return None
    if day_text.isdigit():
        return datetime.fromtimestamp(_epoch("date", day_text, where), UTC)
    try:
        return datetime.combine(date.fromisoformat(day_text), time(12), tzinfo=UTC)
    except ValueError:
        raise ValidationError("date", day_text, "YYYY-MM-DD or Unix seconds", where=where) from None


def parse_form(body: bytes) -> dict[str, str]:
    """The form-encoded body as fields (the last of a repeated name)."""
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        expected = "application/x-www-form-urlencoded fields"
        # Not a word of the body: its first field is the person's userid.
        shown = f"<{len(body)} bytes, not shown>"
        raise ValidationError("body", shown, expected, where="withings notification") from None


def unlinked(form: Mapping[str, str]) -> str | None:
    """Why the notification ends the person's link (appli 46 unlink or delete), else None."""
    if form.get("appli", "").strip() != str(USER_EVENTS):
        return None
    return UNLINKED.get(form.get("action", "").strip())


def parse_notification(form: Mapping[str, str]) -> list[NewEvent]:
    """Key: user, appli, the range (or date), the action and the type. Withings repeats them all
    on a retry; a new measurement has a new range, a deletion its `action`."""
    where = "withings notification"
    user_id = require(form, "userid", where)
    appli_text = require(form, "appli", where)
    try:
        appli = int(appli_text)
    except ValueError:
        raise ValidationError("appli", appli_text, "an integer", where=where) from None
    stamps: dict[str, int] = {}
    for name in ("startdate", "enddate"):
        if form.get(name) not in (None, ""):
            stamps[name] = _epoch(name, form[name], where)
    day_text = (form.get("date") or "").strip()
    action = (form.get("action") or "").strip()
    ignored = unlinked(form)
    if ignored is None and appli == USER_EVENTS:
        ignored = f"{IGNORED[USER_EVENTS]} (action {quoted(action)})"
    elif ignored is None and appli in IGNORED:
        ignored = IGNORED[appli]
    elif ignored is None and appli not in APPLI:
        ignored = f"withings appli {appli}: not a notification category this product knows"
    if ignored is None and not stamps and not day_text:
        raise ValidationError("startdate", None, "startdate/enddate or date", where=where)
    occurred = _occurred(stamps, day_text, where)
    span = f"{stamps.get('startdate', '')}-{stamps.get('enddate', '')}-{day_text}"
    kinds = (None,) if ignored else tuple(kind.value for kind in APPLI[appli])
    return [
        NewEvent(
            provider=NAME,
            event_key=f"{user_id}|{appli}|{span}|{action}|{kind or 'all'}",
            user_id=user_id,
            data_type=kind,
            occurred_at=occurred,
            payload=dict(form),
            ignored_reason=ignored,
        )
        for kind in kinds
    ]


def routes(receiver: Receiver, token: str | None) -> list[Route]:
    """/webhooks/withings, when its callback token (OHX_WITHINGS_CALLBACK_TOKEN) is configured."""
    if token is None:
        return []
    store = receiver.store

    async def check(request: Request) -> Response:
        return Response(status_code=200)

    async def notify(request: Request) -> Response:
        if not same_secret(token, request.query_params.get("token")):
            raise SignatureRejected("callback token missing or wrong")
        form = parse_form(await receiver.body_of(request))
        events = parse_notification(form)
        user_id = events[0].user_id
        if await run_in_threadpool(store.user, NAME, user_id) is None:
            # Logged (the receiver's RefusalLog): the account by its salted subject, not its id.
            subject = short(subject_hash(NAME, user_id, salt=erasure_salt()))
            raise SignatureRejected(f"withings account {subject} is not a connected user")
        answer = await receiver.commit(events)
        reason = unlinked(form)
        if reason is not None:
            await run_in_threadpool(store.set_state, NAME, user_id, DISCONNECTED, reason)
        return answer

    return [Route(ROUTE, check, methods=["HEAD"]), Route(ROUTE, notify, methods=["POST"])]
