"""Withings subscribes per person: `POST /notify` with `action=subscribe`, `callbackurl`, `appli`
and `comment`, authorized by that person's access token; the answer is {"status": 0, "body": {}}
(its status checked like every Withings answer, codes.status_check: 401 refreshes the token once,
any other non-zero status is a failure of that appli). One subscription per appli whose
data the withings source reads. Withings checks the callback with a HEAD first (the receiver
answers it) and the callback carries the receiver's shared-secret `token`. Sources: SOURCE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import quote

from ohx_dagster.core.errors import OhxError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.providers.api.app import ProviderApp
from ohx_dagster.providers.api.http import excerpt
from ohx_dagster.providers.api.source import ApiConnection, ApiSettings
from ohx_dagster.providers.api.subscription import (
    CREATED,
    FAILED,
    SKIPPED,
    SubscriptionResult,
    SubscriptionSettings,
)
from ohx_dagster.providers.withings.codes import APPLI, status_check
from ohx_dagster.storage.store import RecordStore

NOTIFY: Final = "/notify"
# Applis subscribed at connection: every category whose data the source reads (codes.APPLI):
# measures (1, 2, 4), activity (16), sleep (44) and ECG (54).
APPLIS: Final = tuple(sorted(APPLI))
COMMENT: Final = "ohx-dagster"


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
                check = status_check(NOTIFY, "subscribe")
                connection.api.json("POST", NOTIFY, auth=auth, data=form, check=check)
            except OhxError as exc:
                detail = excerpt(str(exc), secrets=hidden)
                failed = SubscriptionResult("withings", user.user_id, target, FAILED, detail=detail)
                results.append(failed)
                continue
            results.append(SubscriptionResult("withings", user.user_id, target, CREATED))
    finally:
        connection.api.close()
    return results
