"""Webhook subscriptions at the providers (what makes them call our receiver at all), the shared
part: where providers call us back, the outcome of each attempt, and its record in the store
(table webhook_subscriptions). Each provider's folder subscribes in its own way (`subscriptions.py`
there: Oura per application, Withings per person) and names that function as its ProviderApp's
`after_connect`.

After a person connects (ohx_dagster.providers.api.connect), `subscribe_after_connect` runs their
provider's. A failure is logged and recorded, never raised: the connection stands, and the hourly
schedule syncs the person anyway.

Where providers call us back (OHX_WEBHOOK_BASE_URL) and the receiver secrets the callbacks carry:
SubscriptionSettings, ohx_dagster/config/connect.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from ohx_dagster.config.connect import SubscriptionSettings
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.core.times import from_us, now_us, to_us
from ohx_dagster.privacy.identity import redact
from ohx_dagster.privacy.subjects import erasure_salt, short, subject_hash
from ohx_dagster.providers.api.http import excerpt
from ohx_dagster.storage.schema import webhook_subscriptions
from ohx_dagster.storage.store import RecordStore

if TYPE_CHECKING:
    from ohx_dagster.providers.api.app import ProviderApp
    from ohx_dagster.providers.api.source import ApiSettings

RENEW_WITHIN: Final = timedelta(days=7)
TIMEOUT_S: Final = 15.0

CREATED, RENEWED, ACTIVE, FAILED, SKIPPED = "created", "renewed", "active", "failed", "skipped"

log = logging.getLogger("ohx_dagster.providers.api.subscription")


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    """What one subscription attempt left behind."""

    provider: str
    user_id: str
    target: str
    status: str
    subscription_id: str | None = None
    expires_at: datetime | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (CREATED, RENEWED, ACTIVE)


# -- the record -----------------------------------------------------------------------------------


def record(store: RecordStore, results: Sequence[SubscriptionResult]) -> None:
    """Upsert the latest outcome per (provider, user, target)."""
    if not results:
        return
    rows = [
        {
            "provider": r.provider,
            "user_id": r.user_id,
            "target": r.target,
            "status": r.status,
            "subscription_id": r.subscription_id,
            "expires_at_us": None if r.expires_at is None else to_us(r.expires_at),
            "detail": r.detail,
            "updated_at_us": now_us(),
        }
        for r in results
    ]
    with store.write() as conn:
        store.upsert(conn, webhook_subscriptions, rows)


def recorded(store: RecordStore, provider: str | None = None) -> list[SubscriptionResult]:
    t = webhook_subscriptions
    if not sa.inspect(store.engine).has_table(t.name):
        return []
    query = sa.select(t).order_by(t.c.provider, t.c.user_id, t.c.target)
    if provider is not None:
        query = query.where(t.c.provider == provider)
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [
        SubscriptionResult(
            r.provider,
            r.user_id,
            r.target,
            r.status,
            r.subscription_id,
            None if r.expires_at_us is None else from_us(r.expires_at_us),
            r.detail,
        )
        for r in rows
    ]


def subscribe_after_connect(
    store: RecordStore,
    settings: SubscriptionSettings,
    app: ProviderApp,
    api: ApiSettings,
    user: HealthSyncConfig,
    *,
    backoff_s: float = 1.0,
) -> list[SubscriptionResult]:
    """What `user`'s provider needs subscribed now that they connected (its ProviderApp's
    `after_connect`). Never raises: failures are logged and recorded (the hourly schedule syncs
    the person without webhooks)."""
    provider = user.provider
    if app.after_connect is None:
        return []
    try:
        results = app.after_connect(store, settings, api, user, backoff_s=backoff_s)
    except Exception as exc:  # the connection must stand whatever happens here
        hidden = tuple(
            s for s in (settings.withings_callback_token, settings.oura_verification_token) if s
        )
        detail = excerpt(f"{type(exc).__name__}: {exc}", secrets=hidden)
        user_id = "" if provider == "oura" else user.user_id
        results = [SubscriptionResult(provider, user_id, "*", FAILED, detail=detail)]
    salt = erasure_salt()
    for result in results:
        if result.status == FAILED:
            # The person by their salted subject (ohx_dagster/privacy/subjects.py), in the detail
            # too: a provider's or a token refresh's error may quote their id.
            log.error(
                "%s webhook subscription %s for account %s failed: %s",
                provider,
                result.target,
                short(subject_hash(provider, user.user_id, salt=salt)),
                redact(result.detail, provider, [user.user_id], salt=salt),
            )
        elif result.status == SKIPPED:
            log.info("%s webhook subscription skipped: %s", provider, result.detail)
    try:
        record(store, results)
    except Exception:
        log.exception("could not record the %s webhook subscriptions", provider)
    return results
