"""Oura's webhook subscriptions belong to the application, not to a person:
`/v2/webhook/subscription` with the app's credentials in `x-client-id` / `x-client-secret`.
GET lists {id, callback_url, event_type, data_type, expiration_time}; POST {callback_url,
verification_token, event_type, data_type} creates one (Oura first sends the verification GET
the receiver answers); PUT `.../renew/{id}` renews one. `ensure` is idempotent: it lists,
creates what is missing and renews what expires soon, and changes nothing else. Subscriptions
expire: the daily Dagster schedule (sensors/subscriptions.py) and, by hand, this module renew
them:

    python -m ohx_dagster.providers.oura.subscriptions --provider oura [--renew-within-days 7]

Subscribed: create, update and delete events of the collections whose documents carry data we
sync (DATA_TYPES); a delete makes the sync read the affected windows again (source.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

from ohx_dagster.config import environment
from ohx_dagster.config.connect import BASE_URL_ENV, REDIRECT_BASE_ENV
from ohx_dagster.config.providers import ApiSettings
from ohx_dagster.config.settings import Settings
from ohx_dagster.core.errors import ConfigError, ProviderError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import ProviderApp
from ohx_dagster.providers.api.http import ApiClient, decode_json, excerpt
from ohx_dagster.providers.api.subscription import (
    ACTIVE,
    CREATED,
    FAILED,
    RENEW_WITHIN,
    RENEWED,
    SKIPPED,
    TIMEOUT_S,
    SubscriptionResult,
    SubscriptionSettings,
    record,
)
from ohx_dagster.storage.store import RecordStore

SUBSCRIPTIONS: Final = "/v2/webhook/subscription"
DATA_TYPES: Final = ("daily_activity", "daily_spo2", "sleep", "workout", "session")
EVENT_TYPES: Final = ("create", "update", "delete")

log = logging.getLogger("ohx_dagster.providers.oura")


def after_connect(
    store: RecordStore,
    settings: SubscriptionSettings,
    api: ApiSettings,
    user: HealthSyncConfig,
    *,
    backoff_s: float = 1.0,
) -> list[SubscriptionResult]:
    """Oura subscribes per application: make sure ours exist (a new person changes nothing)."""
    token = settings.oura_verification_token
    if token is None:
        why = "OHX_OURA_VERIFICATION_TOKEN is not set: /webhooks/oura is not mounted"
        return [SubscriptionResult("oura", "", "*", SKIPPED, detail=why)]
    return ensure(api, settings.oura_callback, token, backoff_s=backoff_s)


def _expiry(item: Mapping[str, Any]) -> datetime | None:
    text = item.get("expiration_time")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def ensure(
    api: ApiSettings,
    callback_url: str,
    verification_token: str,
    *,
    data_types: Sequence[str] = DATA_TYPES,
    event_types: Sequence[str] = EVENT_TYPES,
    renew_within: timedelta = RENEW_WITHIN,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    backoff_s: float = 1.0,
) -> list[SubscriptionResult]:
    """Make the app's subscriptions for our callback cover every (event type, data type): create
    the missing ones, renew those expiring within `renew_within`, leave the rest. Idempotent.
    A failed listing raises ProviderError; a failed create or renew is a result."""
    creds = api.oauth
    headers = {"x-client-id": creds.client_id, "x-client-secret": creds.client_secret}
    hidden = (creds.client_secret, verification_token)
    client = ApiClient("oura", api.base_url, timeout_s=TIMEOUT_S, attempts=2, backoff_s=backoff_s)

    def call(method: str, endpoint: str, body: Any = None) -> Any:
        response = client.send(method, endpoint, json_body=body, headers=headers, secrets=hidden)
        return decode_json("oura", endpoint, response.content, secrets=hidden)

    try:
        listed = call("GET", SUBSCRIPTIONS)
        if not isinstance(listed, list):
            raise payload.bad_field(f"oura {SUBSCRIPTIONS}", "(body)", listed, "a JSON array")
        ours: dict[tuple[str, str], Mapping[str, Any]] = {}
        for item in listed:
            if not isinstance(item, dict) or item.get("callback_url") != callback_url:
                continue
            key = (str(item.get("event_type")), str(item.get("data_type")))
            known = ours.get(key)
            never = datetime.min.replace(tzinfo=UTC)
            if known is None or (_expiry(item) or never) > (_expiry(known) or never):
                ours[key] = item
        results = []
        for data_type in data_types:
            for event_type in event_types:
                target = f"{event_type}:{data_type}"
                existing = ours.get((event_type, data_type))
                try:
                    if existing is None:
                        body = {
                            "callback_url": callback_url,
                            "verification_token": verification_token,
                            "event_type": event_type,
                            "data_type": data_type,
                        }
                        status, answer = CREATED, call("POST", SUBSCRIPTIONS, body)
                    else:
                        expires = _expiry(existing)
                        if expires is not None and expires - now() > renew_within:
                            status, answer = ACTIVE, existing
                        else:
                            renew = f"{SUBSCRIPTIONS}/renew/{quote(str(existing['id']))}"
                            status, answer = RENEWED, call("PUT", renew)
                except (ProviderError, KeyError) as exc:
                    detail = excerpt(str(exc), secrets=hidden)
                    results.append(SubscriptionResult("oura", "", target, FAILED, detail=detail))
                    continue
                answer = answer if isinstance(answer, dict) else {}
                sub_id = answer.get("id")
                results.append(
                    SubscriptionResult(
                        "oura",
                        "",
                        target,
                        status,
                        None if sub_id is None else str(sub_id),
                        _expiry(answer),
                    )
                )
        return results
    finally:
        client.close()


def renew(
    store: RecordStore,
    env: Mapping[str, str],
    app: ProviderApp,
    renew_within: timedelta = RENEW_WITHIN,
) -> list[SubscriptionResult]:
    """Create or renew the app's Oura subscriptions and record the outcome in the store; the
    one job behind the CLI and the daily Dagster schedule. ConfigError names what is missing."""
    settings = SubscriptionSettings.from_env(env)
    if settings is None:
        raise ConfigError(f"set {BASE_URL_ENV} (or {REDIRECT_BASE_ENV}): our callback base")
    if settings.oura_verification_token is None:
        raise ConfigError("OHX_OURA_VERIFICATION_TOKEN is not set (/webhooks/oura unmounted)")
    api = ApiSettings.from_env(app, env)
    try:
        results = ensure(
            api,
            settings.oura_callback,
            settings.oura_verification_token,
            renew_within=renew_within,
        )
    except ProviderError as exc:
        results = [SubscriptionResult("oura", "", "*", FAILED, detail=str(exc))]
    record(store, results)
    return results


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ohx_dagster.providers.oura.subscriptions",
        description="Create or renew the app's webhook subscriptions at a provider.",
    )
    parser.add_argument("--provider", required=True, choices=["oura"])
    parser.add_argument("--renew-within-days", type=float, default=RENEW_WITHIN.days)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    env = environment.resolve(env)
    # Imported here: the provider registry imports this package.
    from ohx_dagster.providers.registry import API_PROVIDERS, CATALOG

    try:
        store = RecordStore(Settings.from_env(env, catalog=CATALOG).database_url)
    except ConfigError as exc:
        print(f"subscriptions: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        results = renew(store, env, API_PROVIDERS["oura"], timedelta(days=args.renew_within_days))
    except ConfigError as exc:
        print(f"subscriptions: configuration error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    for r in results:
        expires = "" if r.expires_at is None else f" expires {r.expires_at.isoformat()}"
        detail = f" {r.detail}" if r.detail else ""
        print(f"oura {r.target}: {r.status}{expires}{detail}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
