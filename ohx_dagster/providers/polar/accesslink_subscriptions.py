"""What Polar AccessLink needs set up: each person registered with our client, and the
application's one webhook. Shapes: Polar's AccessLink documentation (SOURCE.md, AccessLink).

Registration (`register`, run after a person connects: ProviderApp.after_connect): POST
/v3/users {"member-id": ...} with the person's bearer token. Polar serves a person's data only
after it, and only exercises uploaded after it. 200 is a new registration, 409 ("already
registered to partner or duplicated member-id") one that exists: both leave the person
registered. The member-id is the person's Polar user id (x_user_id), unique per person and no
new information for Polar (never the FHIR patient id).

The webhook belongs to the application (Basic client credentials, "Client application can only
have one webhook registered"): POST /v3/webhooks {"events": ["EXERCISE"], "url"} creates it, and
its 201 answer holds `signature_secret_key`, "the only chance to get it". That key is REQUIRED AS
A VARIABLE (OHX_POLAR_ACCESSLINK_SIGNATURE_SECRET_KEY, ohx_dagster/config/receiver.py), not
stored encrypted in the database, because:
- the receiver then verifies every delivery from its own configuration, like every other
  provider's secret, with no database read and no token key (OHX_TOKEN_KEY) in the receiver;
- the store has no table for an application's secrets (oauth_tokens holds people's grants);
- it is created once per application, by an operator, who puts it where the other secrets live.
So `create` is run once, by hand, and prints the key once (never logged):

    python -m ohx_dagster.providers.polar.accesslink_subscriptions create
    python -m ohx_dagster.providers.polar.accesslink_subscriptions status

The receiver must be up with /webhooks/polar_accesslink mounted first (Polar PINGs the URL during
the create and creates nothing unless it answers 200). A create over an existing webhook is 409;
a lost key means deleting the webhook (DELETE /v3/webhooks/{id}) and creating it again.

After each connection `check_webhook` reports the webhook's state (GET /v3/webhooks) and
reactivates one Polar deactivated (after seven days of failed deliveries: POST
/v3/webhooks/activate, which PINGs our URL again); it never creates one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final

from ohx_dagster.config import environment
from ohx_dagster.config.connect import BASE_URL_ENV, REDIRECT_BASE_ENV
from ohx_dagster.config.providers import ApiSettings
from ohx_dagster.config.receiver import POLAR_ACCESSLINK_KEY
from ohx_dagster.core.errors import ConfigError, ProviderError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.budget import RequestBudget, RequestLimit
from ohx_dagster.providers.api.http import ApiClient, HttpStatusError, decode_json, excerpt
from ohx_dagster.providers.api.subscription import (
    ACTIVE,
    CREATED,
    FAILED,
    RENEWED,
    SKIPPED,
    TIMEOUT_S,
    SubscriptionResult,
    SubscriptionSettings,
)
from ohx_dagster.providers.api.tokens import TokenStore, UserTokens, basic_credentials
from ohx_dagster.providers.polar.accesslink_webhook import NAME, ROUTE
from ohx_dagster.storage.store import RecordStore

USERS: Final = "/v3/users"
WEBHOOKS: Final = "/v3/webhooks"
ACTIVATE: Final = "/v3/webhooks/activate"
EVENTS: Final = ("EXERCISE",)
REGISTRATION, WEBHOOK = "registration", "webhook"
# Polar's documented base allowance: 500 requests per 15 minutes (plus 20 per registered user).
REQUEST_LIMIT: Final = RequestLimit(500, 900.0)

log = logging.getLogger("ohx_dagster.providers.polar.accesslink")


def callback_url(base: str) -> str:
    return f"{base.rstrip('/')}{ROUTE}"


def _client(api: ApiSettings, backoff_s: float) -> ApiClient:
    return ApiClient(NAME, api.base_url, timeout_s=TIMEOUT_S, attempts=2, backoff_s=backoff_s)


def _app_headers(api: ApiSettings) -> dict[str, str]:
    return {"Authorization": basic_credentials(api.oauth.client_id, api.oauth.client_secret)}


def _hidden(api: ApiSettings) -> tuple[str, ...]:
    return (api.oauth.client_secret, _app_headers(api)["Authorization"])


def after_connect(
    store: RecordStore,
    settings: SubscriptionSettings,
    api: ApiSettings,
    user: HealthSyncConfig,
    *,
    backoff_s: float = 1.0,
) -> list[SubscriptionResult]:
    """Register the person, then report on (and reactivate) the application's webhook."""
    return [
        register(store, api, user, backoff_s=backoff_s),
        check_webhook(store, api, callback_url(settings.callback_base), backoff_s=backoff_s),
    ]


def register(
    store: RecordStore, api: ApiSettings, user: HealthSyncConfig, *, backoff_s: float = 1.0
) -> SubscriptionResult:
    """POST /v3/users with the person's token: CREATED (200), ACTIVE (409: registered already),
    or FAILED with Polar's answer (403: the person has not accepted Polar's mandatory consents)."""
    client = _client(api, backoff_s)
    budget = RequestBudget(store, NAME, REQUEST_LIMIT)
    try:
        auth = UserTokens(TokenStore(store), api.oauth, user.user_id, client)
        token = auth.access_token()
        body = {"member-id": user.user_id}
        try:
            response = client.send("POST", USERS, token=token, json_body=body, budget=budget)
        except HttpStatusError as failed:
            if failed.status == 409:
                detail = "already registered with this client"
                return SubscriptionResult(NAME, user.user_id, REGISTRATION, ACTIVE, detail=detail)
            raise
        if response.status_code != 200:
            # 204: "No content when user with given userId is not found".
            raise ProviderError(
                f"{NAME} POST {USERS}: HTTP {response.status_code}: expected 200 (registered) "
                "or 409 (registered already)"
            )
        answer = decode_json(NAME, USERS, response.content, secrets=(token,))
        polar_id = answer.get("polar-user-id") if isinstance(answer, dict) else None
        if polar_id is not None and str(polar_id) != user.user_id:
            raise payload.bad_field(
                f"{NAME} POST {USERS}", "polar-user-id", polar_id, f"{user.user_id!r} (x_user_id)"
            )
        return SubscriptionResult(NAME, user.user_id, REGISTRATION, CREATED)
    except ProviderError as exc:
        detail = str(exc)
        if isinstance(exc, HttpStatusError) and exc.status == 403:
            detail += (
                " (Polar: the person has not accepted all mandatory consents; once they have, "
                "in Polar Flow, connect them again)"
            )
        return SubscriptionResult(NAME, user.user_id, REGISTRATION, FAILED, detail=detail)
    finally:
        client.close()


def _listed(client: ApiClient, api: ApiSettings, budget: Any) -> list[Mapping[str, Any]]:
    """GET /v3/webhooks: {"data": [{"id", "events", "url", "active"}]}."""
    where = f"{NAME} GET {WEBHOOKS}"
    response = client.send(
        "GET", WEBHOOKS, headers=_app_headers(api), secrets=_hidden(api), budget=budget
    )
    if response.status_code == 204 or not response.content.strip():
        return []
    body = decode_json(NAME, WEBHOOKS, response.content, secrets=_hidden(api))
    items = payload.items(body, "data", where)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise payload.bad_field(where, f"data[{index}]", item, "a JSON object")
    return items


def check_webhook(
    store: RecordStore | None, api: ApiSettings, callback: str, *, backoff_s: float = 1.0
) -> SubscriptionResult:
    """The application's webhook for `callback`: ACTIVE, RENEWED (it was deactivated and is
    active again), SKIPPED (none yet: create it), or FAILED (another URL, no EXERCISE events,
    reactivation refused, Polar unreachable)."""
    client = _client(api, backoff_s)
    budget = None if store is None else RequestBudget(store, NAME, REQUEST_LIMIT)
    hidden = _hidden(api)
    try:
        listed = _listed(client, api, budget)
        if not listed:
            why = (
                f"no webhook yet: run python -m {__name__} create, then set "
                f"{POLAR_ACCESSLINK_KEY} to the key it shows"
            )
            return SubscriptionResult(NAME, "", WEBHOOK, SKIPPED, detail=why)
        hook = listed[0]  # one webhook per client application
        hook_id = None if hook.get("id") is None else str(hook["id"])
        if hook.get("url") != callback:
            why = f"the application's webhook calls {hook.get('url')!r}, not {callback!r}"
            return SubscriptionResult(NAME, "", WEBHOOK, FAILED, hook_id, detail=why)
        events = hook.get("events")
        if not isinstance(events, list) or "EXERCISE" not in events:
            why = f"the webhook's events are {events!r}: expected them to include 'EXERCISE'"
            return SubscriptionResult(NAME, "", WEBHOOK, FAILED, hook_id, detail=why)
        if hook.get("active", True) is not False:
            return SubscriptionResult(NAME, "", WEBHOOK, ACTIVE, hook_id)
        response = client.send(
            "POST", ACTIVATE, headers=_app_headers(api), secrets=hidden, budget=budget
        )
        if response.status_code != 200:  # 204: "Webhook does not exits"
            why = f"POST {ACTIVATE}: HTTP {response.status_code}: the webhook was not activated"
            return SubscriptionResult(NAME, "", WEBHOOK, FAILED, hook_id, detail=why)
        return SubscriptionResult(NAME, "", WEBHOOK, RENEWED, hook_id, detail="reactivated")
    except ProviderError as exc:
        detail = excerpt(str(exc), secrets=hidden)
        return SubscriptionResult(NAME, "", WEBHOOK, FAILED, detail=detail)
    finally:
        client.close()


def create(api: ApiSettings, callback: str, *, backoff_s: float = 1.0) -> tuple[str, str]:
    """Create the application's webhook for EXERCISE events at `callback`: (id, signature key).
    ProviderError when Polar refuses (409: one exists already; 400: e.g. our URL did not answer
    the PING with 200)."""
    client = _client(api, backoff_s)
    where = f"{NAME} POST {WEBHOOKS}"
    hidden = _hidden(api)
    try:
        try:
            response = client.send(
                "POST",
                WEBHOOKS,
                json_body={"events": list(EVENTS), "url": callback},
                headers=_app_headers(api),
                secrets=hidden,
            )
        except HttpStatusError as failed:
            if failed.status == 409:
                raise ProviderError(
                    f"{where}: HTTP 409: the application has a webhook already (its key was "
                    "shown when it was created; to get a new key delete it, DELETE "
                    f"{WEBHOOKS}/<id>, and create it again): {failed.excerpt}"
                ) from None
            raise
        body = decode_json(NAME, WEBHOOKS, response.content, secrets=hidden)
        hook_id = payload.get(body, "data.id", where, "the webhook's id")
        key = payload.get(body, "data.signature_secret_key", where, "the signing key")
        if not isinstance(key, str) or not key:
            raise payload.bad_field(where, "data.signature_secret_key", "...", "a string")
        return str(hook_id), key
    finally:
        client.close()


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__name__}",
        description="Create the AccessLink application's webhook (once), or show its state.",
    )
    parser.add_argument("action", choices=["create", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    env = environment.resolve(env)
    # Imported here: the ProviderApp's module imports this one.
    from ohx_dagster.providers.polar.accesslink import APP

    try:
        settings = SubscriptionSettings.from_env(env)
        if settings is None:
            raise ConfigError(f"set {BASE_URL_ENV} (or {REDIRECT_BASE_ENV}): our callback base")
        api = ApiSettings.from_env(APP, env)
    except ConfigError as exc:
        print(f"{NAME}: configuration error: {exc}", file=sys.stderr)
        return 2
    callback = callback_url(settings.callback_base)
    if args.action == "status":
        result = check_webhook(None, api, callback)
        print(f"{NAME} webhook {callback}: {result.status} {result.detail}".rstrip())
        return 0 if result.ok else 1
    try:
        hook_id, key = create(api, callback)
    except ProviderError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 1
    print(f"{NAME} webhook {hook_id} created for {callback} (events: {', '.join(EVENTS)}).")
    print(f"Set {POLAR_ACCESSLINK_KEY} for the receiver; Polar never shows this key again:")
    print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
