"""Webhook subscriptions at the providers: what makes them call our receiver at all.

- Withings subscribes per user: `POST /notify` with `action=subscribe`, `callbackurl`, `appli` and
  `comment`, authorized by that user's access token; the answer is {"status": 0, "body": {}}
  (any other status is a failure; 401 refreshes the token once). One subscription per appli
  whose data we read (measure getmeas, scope user.metrics): 1 weight, 2 temperature, 4 blood
  pressure, heart rate and SpO2. Withings checks the callback with a HEAD first (the receiver
  answers it) and the callback carries the receiver's shared-secret `token`.
- Oura subscribes per app, not per user: `/v2/webhook/subscription` with the app's credentials
  in `x-client-id` / `x-client-secret`. GET lists {id, callback_url, event_type, data_type,
  expiration_time}; POST {callback_url, verification_token, event_type, data_type} creates one
  (Oura first sends the verification GET the receiver answers); PUT `.../renew/{id}` renews
  one. `ensure_oura_subscriptions` is idempotent: it lists, creates what is missing and renews
  what expires soon, and changes nothing else.
- Google Health: nothing here (see the README's webhook section).

After a person connects (ohx_dagster.providers.connect), `subscribe_after_connect` subscribes
what that provider needs. A failure is logged and recorded in `webhook_subscriptions`, never
raised: the connection stands, and the hourly incremental schedule syncs the person anyway.

    python -m ohx_dagster.webhooks.subscriptions --provider oura [--renew-within-days 7]

Variables: OHX_WEBHOOK_BASE_URL, the receiver's public base URL for provider callbacks (default:
OHX_OAUTH_REDIRECT_BASE, the same receiver); OHX_OURA_VERIFICATION_TOKEN and
OHX_WITHINGS_CALLBACK_TOKEN (ohx_dagster/webhooks/config.py: a provider whose receiver route is
not mounted is not subscribed); the OAuth apps' OHX_<P>_CLIENT_ID / _CLIENT_SECRET / _API_URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import sqlalchemy as sa

from ohx_dagster.errors import ConfigError, OhxError, ProviderError
from ohx_dagster.models import HealthSyncConfig
from ohx_dagster.providers import payload
from ohx_dagster.providers.api import ApiConnection, ApiSettings
from ohx_dagster.providers.http import ApiClient, Unauthorized, decode_json, excerpt
from ohx_dagster.settings import Settings
from ohx_dagster.schema import webhook_subscriptions
from ohx_dagster.store import RecordStore
from ohx_dagster.times import from_us, now_us, to_us
from ohx_dagster.webhooks import config

BASE_URL_ENV: Final = "OHX_WEBHOOK_BASE_URL"
REDIRECT_BASE_ENV: Final = "OHX_OAUTH_REDIRECT_BASE"
NOTIFY: Final = "/notify"
OURA_SUBSCRIPTIONS: Final = "/v2/webhook/subscription"
# Withings applis whose data the withings source reads (getmeas, scope user.metrics).
WITHINGS_APPLIS: Final = (1, 2, 4)
WITHINGS_COMMENT: Final = "ohx-dagster"
WITHINGS_INVALID_TOKEN: Final = 401
# Oura collections we sync: daily_activity (steps), daily_spo2 (SpO2), sleep (heart rate over
# the night; the receiver turns it into a sync of every enabled type).
OURA_DATA_TYPES: Final = ("daily_activity", "daily_spo2", "sleep")
OURA_EVENT_TYPES: Final = ("create", "update")
RENEW_WITHIN: Final = timedelta(days=7)
TIMEOUT_S: Final = 15.0

CREATED, RENEWED, ACTIVE, FAILED, SKIPPED = "created", "renewed", "active", "failed", "skipped"

log = logging.getLogger("ohx_dagster.webhooks.subscriptions")


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


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """Where providers call us back, and the receiver secrets their callbacks carry."""

    callback_base: str
    oura_verification_token: str | None = field(default=None, repr=False)
    withings_callback_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SubscriptionSettings | None:
        """None when no public base URL is set (nothing can be subscribed)."""
        env = os.environ if env is None else env
        base = (env.get(BASE_URL_ENV) or env.get(REDIRECT_BASE_ENV) or "").strip().rstrip("/")
        if not base:
            return None
        if not base.startswith(("https://", "http://")):
            raise ConfigError(f"{BASE_URL_ENV}={base!r}: expected the receiver's public base URL")
        # The receiver mounts /webhooks/oura with the client secret and the verification token,
        # /webhooks/withings with the callback token (ohx_dagster/webhooks/config.py).
        oura = env.get(config.OURA_TOKEN, "").strip() if env.get(config.OURA_SECRET) else ""
        withings = env.get(config.WITHINGS_TOKEN, "").strip()
        return cls(base, oura or None, withings or None)

    @property
    def oura_callback(self) -> str:
        return f"{self.callback_base}/webhooks/oura"

    @property
    def withings_callback(self) -> str:
        token = quote(self.withings_callback_token or "", safe="")
        return f"{self.callback_base}/webhooks/withings?token={token}"


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


# -- Withings: per user ---------------------------------------------------------------------------


def _withings_check(body: Any) -> None:
    where = f"withings {NOTIFY} subscribe"
    status = payload.get(body, "status", where, "a status code")
    if status == 0:
        return
    message = excerpt(str(body.get("error", "")))
    if status == WITHINGS_INVALID_TOKEN:
        raise Unauthorized("withings", NOTIFY, 401, f"status 401 {message}".rstrip())
    raise ProviderError(f"{where}: status {status} {message}".rstrip())


def subscribe_withings_user(
    store: RecordStore,
    api: ApiSettings,
    user: HealthSyncConfig,
    callback_url: str,
    *,
    applis: Sequence[int] = WITHINGS_APPLIS,
    backoff_s: float = 1.0,
    hidden: tuple[str, ...] = (),
) -> list[SubscriptionResult]:
    """Subscribe the callback for each appli with the user's token; one result per appli (a
    failed appli does not stop the others). `hidden` is cut out of failure details."""
    connection = ApiConnection(store, api, backoff_s=backoff_s)
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
                "comment": WITHINGS_COMMENT,
            }
            try:
                connection.api.json("POST", NOTIFY, auth=auth, data=form, check=_withings_check)
            except OhxError as exc:
                detail = excerpt(str(exc), secrets=hidden)
                failed = SubscriptionResult("withings", user.user_id, target, FAILED, detail=detail)
                results.append(failed)
                continue
            results.append(SubscriptionResult("withings", user.user_id, target, CREATED))
    finally:
        connection.api.close()
    return results


# -- Oura: per app --------------------------------------------------------------------------------


def _expiry(item: Mapping[str, Any]) -> datetime | None:
    text = item.get("expiration_time")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def ensure_oura_subscriptions(
    api: ApiSettings,
    callback_url: str,
    verification_token: str,
    *,
    data_types: Sequence[str] = OURA_DATA_TYPES,
    event_types: Sequence[str] = OURA_EVENT_TYPES,
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
        listed = call("GET", OURA_SUBSCRIPTIONS)
        if not isinstance(listed, list):
            raise payload.bad_field(f"oura {OURA_SUBSCRIPTIONS}", "(body)", listed, "a JSON array")
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
                        status, answer = CREATED, call("POST", OURA_SUBSCRIPTIONS, body)
                    else:
                        expires = _expiry(existing)
                        if expires is not None and expires - now() > renew_within:
                            status, answer = ACTIVE, existing
                        else:
                            renew = f"{OURA_SUBSCRIPTIONS}/renew/{quote(str(existing['id']))}"
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


# -- after a person connects ----------------------------------------------------------------------


def subscribe_after_connect(
    store: RecordStore,
    settings: SubscriptionSettings,
    api: ApiSettings,
    user: HealthSyncConfig,
    *,
    backoff_s: float = 1.0,
) -> list[SubscriptionResult]:
    """What `user`'s provider needs subscribed now that they connected. Never raises: failures
    are logged and recorded (the hourly schedule syncs the person without webhooks)."""
    provider = user.provider
    try:
        if provider == "withings":
            token = settings.withings_callback_token
            if token is None:
                why = "OHX_WITHINGS_CALLBACK_TOKEN is not set: /webhooks/withings is not mounted"
                results = [SubscriptionResult(provider, user.user_id, "*", SKIPPED, detail=why)]
            else:
                results = subscribe_withings_user(
                    store,
                    api,
                    user,
                    settings.withings_callback,
                    backoff_s=backoff_s,
                    hidden=(token, quote(token, safe="")),
                )
        elif provider == "oura":
            token = settings.oura_verification_token
            if token is None:
                why = "OHX_OURA_VERIFICATION_TOKEN is not set: /webhooks/oura is not mounted"
                results = [SubscriptionResult(provider, "", "*", SKIPPED, detail=why)]
            else:
                results = ensure_oura_subscriptions(
                    api, settings.oura_callback, token, backoff_s=backoff_s
                )
        else:
            return []
    except Exception as exc:  # the connection must stand whatever happens here
        hidden = tuple(
            s for s in (settings.withings_callback_token, settings.oura_verification_token) if s
        )
        detail = excerpt(f"{type(exc).__name__}: {exc}", secrets=hidden)
        user_id = "" if provider == "oura" else user.user_id
        results = [SubscriptionResult(provider, user_id, "*", FAILED, detail=detail)]
    for result in results:
        if result.status == FAILED:
            log.error(
                "%s webhook subscription %s for user %r failed: %s",
                provider,
                result.target,
                user.user_id,
                result.detail,
            )
        elif result.status == SKIPPED:
            log.info("%s webhook subscription skipped: %s", provider, result.detail)
    try:
        record(store, results)
    except Exception:
        log.exception("could not record the %s webhook subscriptions", provider)
    return results


# -- CLI ------------------------------------------------------------------------------------------


def renew_oura(
    store: RecordStore, env: Mapping[str, str], renew_within: timedelta = RENEW_WITHIN
) -> list[SubscriptionResult]:
    """Create or renew the app's Oura subscriptions and record the outcome in the store; the
    one job behind the CLI and the daily Dagster schedule. ConfigError names what is missing."""
    settings = SubscriptionSettings.from_env(env)
    if settings is None:
        raise ConfigError(f"set {BASE_URL_ENV} (or {REDIRECT_BASE_ENV}): our callback base")
    if settings.oura_verification_token is None:
        raise ConfigError("OHX_OURA_VERIFICATION_TOKEN is not set (/webhooks/oura unmounted)")
    api = ApiSettings.from_env("oura", env)
    try:
        results = ensure_oura_subscriptions(
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
        prog="python -m ohx_dagster.webhooks.subscriptions",
        description="Create or renew the app's webhook subscriptions at a provider.",
    )
    parser.add_argument("--provider", required=True, choices=["oura"])
    parser.add_argument("--renew-within-days", type=float, default=RENEW_WITHIN.days)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    env = os.environ if env is None else env
    try:
        store = RecordStore(Settings.from_env(env).database_url)
    except ConfigError as exc:
        print(f"subscriptions: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        results = renew_oura(store, env, timedelta(days=args.renew_within_days))
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
