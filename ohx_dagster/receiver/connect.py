"""The receiver's account-connection routes (the flow itself: ohx_dagster.providers.api.connect).

- GET /connect/<provider>?patient=<FHIR patient id>[&timezone=Europe/Paris][&frequency=hourly]
  [&aggregation=hourly][&lookback_days=30], with a staff member's token (`ohx staff add`,
  ohx_dagster/privacy/staff.py) as `Authorization: Bearer <token>` (or HTTP Basic: name and token)
  -> 302 to the provider's consent page. 400 for a `token` (or `access_token`) in the URL, refused
  before anything else and never logged (a URL ends up in proxies' and browsers' histories); 401
  without a valid staff token; 404 for a provider whose OAuth client is not configured; 400 naming a
  bad field. The staff member's name is the actor of the connection's audit row
  (ohx_dagster/privacy/audit.py).
- GET /auth/staff: 204 with `X-OHX-Staff: <name>` for a valid staff Authorization header, else 401
  with `WWW-Authenticate: Basic` (the login prompt). The deployment's nginx asks it with
  `auth_request` before the Dagster UI and /connect (deploy/nginx/ohx.conf), saying which path
  it guards in `X-OHX-Original-URI` (nginx's $request_uri; only its path is read, to tell
  /connect from the UI); nothing else needs it.

Refused staff credentials are audited (ohx_dagster/privacy/audit.py RefusedRows: bounded, one row at
once and one summary row per interval and source): at /connect (no, wrong, revoked or URL-borne
token) and at /auth/staff guarding /connect, as `connect` refused; at /auth/staff guarding the
Dagster UI, as `sign-in` refused when credentials were sent (none: the login prompt every browser
gets first, not an attempt). The actor is the staff member the token names (staff.refusal: its
current or revoked owner), else "unknown"; the detail says what was asked, why it was refused,
the token's public id and the client address, never the token. Their log lines go through the
receiver's RefusalLog (one full line per kind and interval).
- GET /oauth/<provider>/callback?code=..&state=.. (the provider's redirect) -> 200 "connected"
  page; 400 for an unknown, used or expired state or a denial (`error=access_denied`); 409 for
  an account already connected for another patient (staff move it with `ohx users relink`) or
  one whose erasure stands (`ohx users readmit`); 502 when the provider's token endpoint fails
  or its user id is not one the receiver accepts. Only a 200 stores anything. Answers and log
  lines name the account and the patient by their salted subjects (ohx_dagster/privacy/subjects.py),
  never by id.

Pages are small HTML, or JSON when the request accepts application/json. None is cached, and no
page sends a Referer onward.

Settings (ohx_dagster/config/connect.py lists the variables): with OHX_OAUTH_REDIRECT_BASE set,
the routes are mounted (unset: /connect, /oauth and /auth/staff are not); a provider without its
OAuth app (ohx_dagster/config/providers.py) cannot be connected (404); OHX_TOKEN_KEY
(ohx_dagster/config/tokens.py) is required once a provider is connectable. After a connection,
the provider's webhooks are subscribed to OHX_WEBHOOK_BASE_URL
(ohx_dagster.providers.api.subscription); a failure there is logged and recorded and the person
is connected all the same.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ohx_dagster.config import environment
from ohx_dagster.config.connect import ConnectionSettings
from ohx_dagster.config.providers import ApiSettings
from ohx_dagster.core.errors import ConfigError, ProviderError, ValidationError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.privacy import staff as credentials
from ohx_dagster.privacy.audit import RefusedRows
from ohx_dagster.privacy.identity import Erased, LinkConflict
from ohx_dagster.privacy.staff import from_authorization
from ohx_dagster.privacy.subjects import erasure_salt, patient_subject, short, subject_hash
from ohx_dagster.providers.api.connect import ConnectFlow, ConnectRefused, ConnectSettings
from ohx_dagster.providers.api.subscription import SubscriptionSettings, subscribe_after_connect
from ohx_dagster.providers.registry import API_PROVIDERS
from ohx_dagster.receiver.refusals import RefusalLog, address_key
from ohx_dagster.storage.store import RecordStore

URL_CREDENTIALS: Final = ("token", "access_token")
NO_STORE: Final = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
ORIGINAL_URI: Final = "x-ohx-original-uri"  # the proxy's auth_request: the path it guards

log = logging.getLogger("ohx_dagster.receiver.connect")


@dataclass(frozen=True, slots=True)
class ConnectConfig:
    """The connectable providers' OAuth apps (staff are checked against the store's table)."""

    providers: Mapping[str, ConnectSettings]
    # Where providers call back; None: no webhook subscriptions after connecting.
    subscriptions: SubscriptionSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectConfig | None:
        env = environment.resolve(env)
        connection = ConnectionSettings.from_env(env)
        connection.refuse_retired()
        if not connection.redirect_base:
            return None
        return cls(connectable(env), SubscriptionSettings.from_env(env))


def connectable(env: Mapping[str, str] | None = None) -> dict[str, ConnectSettings]:
    """The providers whose OAuth client id and secret are set (the others cannot connect)."""
    env = environment.resolve(env)
    return {
        name: ConnectSettings.from_env(app, env)
        for name, app in API_PROVIDERS.items()
        if ApiSettings.configured(app, env)
    }


def _page(request: Request, status: int, title: str, detail: str, **extra: str) -> Response:
    if "application/json" in request.headers.get("accept", ""):
        key = "status" if status < 400 else "error"
        body = {key: title, "detail": detail, **extra}
        return JSONResponse(body, status_code=status, headers=NO_STORE)
    t, d = html.escape(title), html.escape(detail)
    text = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{t}</title></head>"
        f"<body><h1>{t}</h1><p>{d}</p></body></html>"
    )
    return HTMLResponse(text, status_code=status, headers=NO_STORE)


def connect_routes(
    store: RecordStore,
    config: ConnectConfig,
    *,
    refusals: RefusalLog | None = None,
    refused_rows: RefusedRows | None = None,
) -> list[Route]:
    """The routes, over one ConnectFlow (creates its state table on the store); refused staff
    credentials are logged through `refusals` and audited through `refused_rows` (module doc)."""
    refused_rows = refused_rows or RefusedRows(store)
    subscriptions = config.subscriptions
    after_connect = None
    if subscriptions is not None:

        def after_connect(settings: ConnectSettings, user: HealthSyncConfig) -> object:
            return subscribe_after_connect(store, subscriptions, settings.app, settings.api, user)

    flow = ConnectFlow(store, config.providers, after_connect=after_connect)

    async def staff_of(request: Request) -> str | None:
        header = request.headers.get("authorization")
        return await run_in_threadpool(from_authorization, store, header) if header else None

    def connect_path(path: str) -> str:
        """A /connect path as the audit row shows it: a provider only if it is one of ours
        (the path is the client's)."""
        provider = path.removeprefix("/connect/").split("/")[0]
        return f"/connect/{provider if provider in flow.settings else '<not connectable>'}"

    async def refuse(
        request: Request,
        status: int,
        action: str,
        where: str,
        refusal: credentials.Refusal,
    ) -> None:
        """Log (bounded) and audit (bounded) a refused staff credential; never the token."""
        reason = f"{refusal.reason} (audited: {action} refused, actor {refusal.actor})"
        if refusals is not None:
            refusals.refused(logging.WARNING, status, request, reason)
        else:
            log.warning("%d %s: %s", status, where, reason)
        client = request.client
        await run_in_threadpool(
            refused_rows.refused,
            action=action,
            actor=refusal.actor,
            where=where,
            reason=refusal.reason,
            address=address_key(client.host if client else ""),
            note=f"token {refusal.token_id}" if refusal.token_id else "",
        )

    async def auth_staff(request: Request) -> Response:
        name = await staff_of(request)
        if name is None:
            header = request.headers.get("authorization")
            guarded = request.headers.get(ORIGINAL_URI, "").partition("?")[0]
            if guarded.startswith("/connect/") or header:
                refusal = await run_in_threadpool(
                    credentials.refusal_of_authorization, store, header
                )
                if guarded.startswith("/connect/"):
                    action, where = "connect", f"the proxy's check for GET {connect_path(guarded)}"
                else:
                    action, where = "sign-in", "the proxy's check for the Dagster UI"
                await refuse(request, 401, action, where, refusal)
            challenge = {"WWW-Authenticate": 'Basic realm="ohx staff", charset="UTF-8"'}
            return Response(status_code=401, headers={**NO_STORE, **challenge})
        return Response(status_code=204, headers={**NO_STORE, "X-OHX-Staff": name})

    async def start(request: Request) -> Response:
        provider = request.path_params["provider"]
        where = f"GET {connect_path(request.url.path)}"
        in_url = [request.query_params[n] for n in URL_CREDENTIALS if n in request.query_params]
        if in_url:
            # The URL (and so the token) is not logged: only that one was there.
            refusal = await run_in_threadpool(
                credentials.refusal, store, in_url[0], reason=credentials.IN_URL
            )
            await refuse(request, 400, "connect", where, refusal)
            return _page(
                request,
                400,
                "Bad request",
                "a token in the URL is refused: send it as 'Authorization: Bearer <token>', and "
                "ask for a new one (`ohx staff remove` and `ohx staff add`): this one was exposed",
            )
        staff = await staff_of(request)
        if staff is None:
            refusal = await run_in_threadpool(
                credentials.refusal_of_authorization, store, request.headers.get("authorization")
            )
            await refuse(request, 401, "connect", where, refusal)
            return _page(request, 401, "Not authorized", "missing or wrong staff token")
        if provider not in flow.settings:
            return _page(request, 404, "Unknown provider", f"{provider!r} cannot be connected here")
        q = request.query_params
        try:
            lookback = int(q.get("lookback_days", "30"))
        except ValueError:
            lookback = -1
        if not 1 <= lookback <= 3650:
            return _page(request, 400, "Bad request", "lookback_days: expected 1..3650 days")
        try:
            url = await run_in_threadpool(
                flow.start,
                provider,
                actor=f"staff {staff}",
                fhir_patient_id=q.get("patient", ""),
                timezone=q.get("timezone", "UTC"),
                sync_frequency=q.get("frequency", "hourly"),
                aggregation=q.get("aggregation", "hourly"),
                lookback_days=lookback,
            )
        except ValidationError as exc:
            return _page(request, 400, "Bad request", str(exc), field=exc.field)
        return RedirectResponse(url, status_code=302, headers=NO_STORE)

    async def callback(request: Request) -> Response:
        provider = request.path_params["provider"]
        if provider not in flow.settings:
            return _page(request, 404, "Unknown provider", f"{provider!r} cannot be connected here")
        q = request.query_params
        try:
            user = await run_in_threadpool(
                flow.complete,
                provider,
                state=q.get("state"),
                code=q.get("code"),
                error=q.get("error"),
                error_description=q.get("error_description"),
            )
        except ConnectRefused as exc:
            log.info("400 /oauth/%s/callback: %s", provider, exc)
            return _page(request, 400, "Not connected", str(exc))
        except (LinkConflict, Erased) as exc:
            # The message names the account and the patients by their salted subjects only.
            log.warning("409 /oauth/%s/callback: %s", provider, exc)
            return _page(request, 409, "Not connected", str(exc))
        except ProviderError as exc:
            log.error("502 /oauth/%s/callback: %s", provider, exc)
            return _page(request, 502, "Not connected", f"the provider failed: {exc}")
        except ConfigError as exc:
            log.error("500 /oauth/%s/callback: %s", provider, exc)
            return _page(request, 500, "Not connected", "server configuration error")
        salt = erasure_salt()
        subject = subject_hash(provider, user.user_id, salt=salt)
        patient = short(patient_subject(user.fhir_patient_id, salt=salt))
        log.info("connected %s account %s (patient %s)", provider, short(subject), patient)
        return _page(
            request,
            200,
            "Connected",
            f"{provider} account {short(subject)} connected for the patient this link was made "
            f"for ({patient}); its history is being synchronized",
            provider=provider,
            subject=subject,
        )

    return [
        Route("/connect/{provider}", start, methods=["GET"]),
        Route("/auth/staff", auth_staff, methods=["GET"]),
        Route("/oauth/{provider}/callback", callback, methods=["GET"]),
    ]
