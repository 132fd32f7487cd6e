"""Withings subscribes per person: `POST /notify` with `action=subscribe`, `callbackurl`, `appli`
and `comment`, authorized by that person's access token; the answer is {"status": 0, "body": {}}
(any other status is a failure; 401 refreshes the token once). One subscription per appli whose
data the withings source reads. Withings checks the callback with a HEAD first (the receiver
answers it) and the callback carries the receiver's shared-secret `token`. Sources: SOURCE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

from ohx_dagster.errors import OhxError, ProviderError
from ohx_dagster.models import HealthSyncConfig
from ohx_dagster.providers import payload
from ohx_dagster.providers.api import ApiConnection, ApiSettings
from ohx_dagster.providers.app import ProviderApp
from ohx_dagster.providers.http import Unauthorized, excerpt
from ohx_dagster.providers.subscription import (
    CREATED,
    FAILED,
    SKIPPED,
    SubscriptionResult,
    SubscriptionSettings,
)
from ohx_dagster.store import RecordStore

NOTIFY: Final = "/notify"
# Applis whose data the withings source reads (getmeas, scope user.metrics).
APPLIS: Final = (1, 2, 4)
COMMENT: Final = "ohx-dagster"
INVALID_TOKEN: Final = 401


def after_connect(
    store: RecordStore,
    settings: SubscriptionSettings,
    api: ApiSettings,
    user: HealthSyncConfig,
    *,
    backoff_s: float = 1.0,
) -> list[SubscriptionResult]:
    """Withings subscribes per person: one subscription per appli, with their token."""
    from ohx_dagster.providers.withings import APP  # the package imports this module

    token = settings.withings_callback_token
    if token is None:
        why = "OHX_WITHINGS_CALLBACK_TOKEN is not set: /webhooks/withings is not mounted"
        return [SubscriptionResult("withings", user.user_id, "*", SKIPPED, detail=why)]
    return subscribe_user(
        store,
        api,
        APP,
        user,
        settings.withings_callback,
        backoff_s=backoff_s,
        hidden=(token, quote(token, safe="")),
    )


def _check(body: Any) -> None:
    where = f"withings {NOTIFY} subscribe"
    status = payload.get(body, "status", where, "a status code")
    if status == 0:
        return
    message = excerpt(str(body.get("error", "")))
    if status == INVALID_TOKEN:
        raise Unauthorized("withings", NOTIFY, 401, f"status 401 {message}".rstrip())
    raise ProviderError(f"{where}: status {status} {message}".rstrip())


def subscribe_user(
    store: RecordStore,
    api: ApiSettings,
    app: ProviderApp,
    user: HealthSyncConfig,
    callback_url: str,
    *,
    applis: Sequence[int] = APPLIS,
    backoff_s: float = 1.0,
    hidden: tuple[str, ...] = (),
) -> list[SubscriptionResult]:
    """Subscribe the callback for each appli with the user's token; one result per appli (a
    failed appli does not stop the others). `hidden` is cut out of failure details."""
    connection = ApiConnection(store, api, app, backoff_s=backoff_s)
    connection.api.attempts = 2
    auth = connection.auth(user)
    results = []
    try:
        for appli in applis:
            target = f"appli={appli}"
            form = {
                "action": "subscribe",
                "callbackurl": callback_url,
                "appli": str(appli),
                "comment": COMMENT,
            }
            try:
                connection.api.json("POST", NOTIFY, auth=auth, data=form, check=_check)
            except OhxError as exc:
                detail = excerpt(str(exc), secrets=hidden)
                failed = SubscriptionResult("withings", user.user_id, target, FAILED, detail=detail)
                results.append(failed)
                continue
            results.append(SubscriptionResult("withings", user.user_id, target, CREATED))
    finally:
        connection.api.close()
    return results


