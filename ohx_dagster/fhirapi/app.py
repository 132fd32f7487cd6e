"""The FHIR R5 API: an ASGI app over the store and the published NDJSON.

    GET  /fhir/metadata                         CapabilityStatement (no token needed)
    GET  /.well-known/smart-configuration       SMART configuration (also under /fhir/)
    POST /fhir/auth/token                            SMART Backend Services token (clients.py)
    GET  /fhir/Patient/{id}                     system/Patient.r
    GET  /fhir/Observation?patient=&code=&date=&_lastUpdated=&_count=   system/Observation.s
    GET  /fhir/Observation/{id}                 system/Observation.r
    GET  /fhir/Group, /fhir/Group/{id}          system/Group.s, .r: the cohorts staff defined
    GET  /fhir/SubscriptionTopic[/{id}]         the one topic (subscriptions.py)
    POST /fhir/Subscription; GET, DELETE /fhir/Subscription/{id}; GET .../$status, .../$events
                                                system/Subscription.c, .r, .d (+ Observation.r)
    GET  /fhir/Patient/$export, /fhir/Group/{id}/$export   Bulk Data kick-off (bulk.py): .r of
                                                each type exported
    GET  /fhir/bulk-status/{export}             202 with X-Progress while it runs, then the
                                                manifest; DELETE cancels
    GET  /fhir/bulk-files/{export}/{name}       an export's NDJSON file

Every FHIR request needs `Authorization: Bearer <access token>`; a missing, unknown or expired
token gets 401, a scope that does not cover the type 403, a parameter this server does not know
or cannot read 400, an unknown patient 404: each an OperationOutcome naming what was wrong
(token refusals are OAuth errors, RFC 6749 5.2). Answers are `application/fhir+json`.

Audited (ohx_dagster/privacy/audit.py): every token issued or refused (action `token`, the
client's name as actor when it is a registered client, "unknown" otherwise), and every read or
search of a person's data (action `read`, the client as actor, the person as their salted
subject, what was asked and how many resources in the detail); Bulk Data kick-offs, cancels,
downloads and finished exports (`bulk-export`, bulk.py) and Subscriptions created, deleted and
notified (`subscribe`, `notify`, subscriptions.py). A request refused before it names a person
(no token, wrong scope) is audited through RefusedRows, bounded.

`public_url` is the server's base URL as clients reach it (through a proxy, the proxy's): the
token URL an assertion's `aud` must name and the base of paging links. Without it, the URL of
the request.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate
from importlib.metadata import version
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ohx_dagster.core.times import iso_us, to_us
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.fhir.provenance import SOFTWARE
from ohx_dagster.fhirapi import bulk, clients, groups, subscriptions
from ohx_dagster.fhirapi.clients import Grant, TokenError
from ohx_dagster.fhirapi.scopes import allowed
from ohx_dagster.fhirapi.search import Published, SearchError, parse_codes, parse_date
from ohx_dagster.privacy import audit
from ohx_dagster.privacy.audit import RefusedRows
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.storage.store import RecordStore

FHIR_JSON: Final = "application/fhir+json"
DEFAULT_COUNT: Final = 50
MAX_COUNT: Final = 1_000
SEARCH_PARAMETERS: Final = (
    "patient", "code", "date", "_lastUpdated", "_count", "_offset", "_format",
)  # fmt: skip
MAX_FORM_BYTES: Final = 32_768
FORMATS: Final = ("json", "application/json", "application/fhir+json")
NDJSON: Final = "application/fhir+ndjson"
BULK_DATA: Final = "http://hl7.org/fhir/uv/bulkdata"
SCOPES_SUPPORTED: Final = (
    "system/Patient.r", "system/Observation.s", "system/Observation.rs", "system/Group.rs",
    "system/Subscription.crd", "system/*.rs",
)  # fmt: skip
KICK_OFF_PARAMETERS: Final = ("_type", "_since", "_outputFormat")
_INSTANT: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def _fhir(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None):
    return JSONResponse(dict(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def outcome(
    status: int, code: str, text: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An OperationOutcome with one error issue (`code` from the IssueType value set)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return _fhir(body, status, headers)


def capability_statement(base: str) -> dict[str, Any]:
    """What this server does, and only that."""
    token_url = f"{base}/fhir/auth/token"
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-07",
        "kind": "instance",
        "software": {"name": SOFTWARE, "version": version("ohx-dagster")},
        "implementation": {
            "description": "Open Health Exchange sync: published wearable and home-device data",
            "url": f"{base}/fhir",
        },
        "instantiates": [f"{BULK_DATA}/CapabilityStatement/bulk-data"],
        "fhirVersion": "5.0.0",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://hl7.org/fhir/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "SMART Backend Services: client_credentials with a "
                    f"private_key_jwt assertion (RS384 or ES384) at {token_url}; system scopes.",
                },
                "resource": [
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}],
                        "operation": [
                            {
                                "name": "export",
                                "definition": f"{BULK_DATA}/OperationDefinition/patient-export",
                                "documentation": "Every person's published resources "
                                "(_type, _since, _outputFormat); a Dagster run writes them.",
                            }
                        ],
                    },
                    {
                        "type": "SubscriptionTopic",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                    },
                    {
                        "type": "Subscription",
                        "interaction": [{"code": "create"}, {"code": "read"}, {"code": "delete"}],
                        "documentation": "rest-hook, id-only or full-resource, on the topic "
                        f"{subscriptions.TOPIC_URL} (filter by patient, required, and code).",
                        "operation": [
                            {
                                "name": "status",
                                "definition": "http://hl7.org/fhir/OperationDefinition/Subscription-status",
                            },
                            {
                                "name": "events",
                                "definition": "http://hl7.org/fhir/OperationDefinition/Subscription-events",
                            },
                        ],
                    },
                    {
                        "type": "Group",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "operation": [
                            {
                                "name": "export",
                                "definition": f"{BULK_DATA}/OperationDefinition/group-export",
                                "documentation": "A cohort staff defined (ohx fhir groups).",
                            }
                        ],
                    },
                    {
                        "type": "Observation",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {
                                "name": "patient",
                                "type": "reference",
                                "documentation": "Required: one patient's observations.",
                            },
                            {"name": "code", "type": "token"},
                            {
                                "name": "date",
                                "type": "date",
                                "documentation": "On effective[x]; prefixes eq, ge, gt, le, lt.",
                            },
                            {
                                "name": "_lastUpdated",
                                "type": "date",
                                "documentation": "When the resource last changed here.",
                            },
                        ],
                    },
                ],
            }
        ],
    }


def smart_configuration(base: str) -> dict[str, Any]:
    return {
        "token_endpoint": f"{base}/fhir/auth/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(clients.ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    }


def create_app(
    store: RecordStore,
    output: FhirOutput,
    *,
    public_url: str | None = None,
    refused_rows: RefusedRows | None = None,
    deliver: bool = True,
    post: subscriptions.Post | None = None,
) -> Starlette:
    published = Published(store, output)
    deliverer = subscriptions.Deliverer(store, published, post=post)
    refused_rows = refused_rows or RefusedRows(store)
    salt = erasure_salt()

    def base_of(request: Request) -> str:
        return (public_url or str(request.base_url)).rstrip("/")

    async def metadata(request: Request) -> Response:
        return _fhir(capability_statement(base_of(request)))

    async def smart(request: Request) -> Response:
        return JSONResponse(smart_configuration(base_of(request)))

    async def token(request: Request) -> Response:
        url = f"{base_of(request)}/fhir/auth/token"
        try:
            form = await _form(request)
            client, answer = await run_in_threadpool(clients.issue_token, store, form, url)
        except TokenError as exc:
            refused_rows.refused(
                action="token",
                actor="unknown",
                where="POST /fhir/auth/token",
                reason=exc.error,
                address=_address(request),
            )
            headers = {"Cache-Control": "no-store"}
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description},
                status_code=exc.status,
                headers=headers,
            )
        await run_in_threadpool(
            audit.record,
            store,
            actor=f"fhir client {client.name}",
            action="token",
            detail=f"scopes {answer['scope']}",
        )
        return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def granted(request: Request) -> Grant | Response:
        """The request's token's grant, or the 401 that says there is none."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        grant = None
        if scheme.lower() == "bearer" and value:
            grant = await run_in_threadpool(clients.check_token, store, value.strip())
        where = f"{request.method} {request.url.path}"
        if grant is None:
            refused_rows.refused(
                action="read",
                actor="unknown",
                where=where,
                reason="no valid access token",
                address=_address(request),
            )
            challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            return outcome(
                401,
                "login",
                "an access token is needed (Authorization: Bearer ...): "
                "missing, unknown or expired",
                challenge,
            )
        return grant

    async def authorized(request: Request, resource_type: str, permission: str) -> Grant | Response:
        grant = await granted(request)
        if isinstance(grant, Response):
            return grant
        where = f"{request.method} {request.url.path}"
        if not allowed(list(grant.scopes), resource_type, permission):
            refused_rows.refused(
                action="read",
                actor=f"fhir client {grant.name}",
                where=where,
                reason="scope",
                address=_address(request),
            )
            return outcome(
                403,
                "forbidden",
                f"the token's scopes do not include system/{resource_type}.{permission}",
            )
        return grant

    def audited(grant: Grant, config: Any, what: str, count: int) -> None:
        audit.record(
            store,
            actor=f"fhir client {grant.name}",
            action="read",
            subject=subject_hash(config.provider, config.user_id, salt=salt),
            detail=f"{what}: {count} resources",
        )

    async def read_group(request: Request) -> Response:
        grant = await authorized(request, "Group", "r")
        if isinstance(grant, Response):
            return grant
        group_id = request.path_params["id"]
        group = await run_in_threadpool(groups.get_group, store, group_id)
        if group is None:
            return outcome(404, "not-found", f"no Group {group_id[:64]!r} here")
        [resource] = await run_in_threadpool(groups.as_resources, store, [group])
        await run_in_threadpool(
            lambda: audit.record(store, actor=f"fhir client {grant.name}", action="read",
                                 detail=f"GET Group/{group_id}: {resource['quantity']} members")
        )  # fmt: skip
        return _fhir(resource)

    async def search_groups(request: Request) -> Response:
        grant = await authorized(request, "Group", "s")
        if isinstance(grant, Response):
            return grant
        unknown = sorted(set(request.query_params) - {"_format"})
        if unknown:
            return outcome(400, "invalid", f"parameter {unknown[0]!r} is not supported here "
                           "(Group search lists every group)")  # fmt: skip
        found = await run_in_threadpool(groups.list_groups, store)
        resources = await run_in_threadpool(groups.as_resources, store, found)
        await run_in_threadpool(
            lambda: audit.record(store, actor=f"fhir client {grant.name}", action="read",
                                 detail=f"GET Group: {len(resources)} groups")
        )  # fmt: skip
        base = base_of(request)
        bundle = {
            "resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "link": [{"relation": "self", "url": f"{base}/fhir/Group"}],
            "entry": [{"fullUrl": f"{base}/fhir/Group/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources],
        }  # fmt: skip
        return _fhir(bundle)

    async def read_patient(request: Request) -> Response:
        grant = await authorized(request, "Patient", "r")
        if isinstance(grant, Response):
            return grant
        patient_id = request.path_params["id"]
        config = await run_in_threadpool(published.person, patient_id)
        found = None if config is None else await run_in_threadpool(published.patient, config)
        if config is None or found is None:
            return outcome(404, "not-found", f"no Patient {patient_id[:64]!r} here")
        await run_in_threadpool(audited, grant, config, "GET Patient", 1)
        return _fhir(found)

    async def read_observation(request: Request) -> Response:
        grant = await authorized(request, "Observation", "r")
        if isinstance(grant, Response):
            return grant
        resource_id = request.path_params["id"]
        found = await run_in_threadpool(published.read, "Observation", resource_id)
        if found is None:
            return outcome(404, "not-found", f"no Observation {resource_id[:64]!r} here")
        config, resource = found
        await run_in_threadpool(audited, grant, config, "GET Observation/[id]", 1)
        return _fhir(resource)

    async def search_observations(request: Request) -> Response:
        grant = await authorized(request, "Observation", "s")
        if isinstance(grant, Response):
            return grant
        query = request.query_params
        try:
            unknown = sorted(set(query) - set(SEARCH_PARAMETERS))
            if unknown:
                raise SearchError(
                    f"parameter {unknown[0]!r} is not supported here "
                    f"(supported: {', '.join(SEARCH_PARAMETERS)})"
                )
            if query.get("_format", "json") not in FORMATS:
                raise SearchError("_format: this server answers JSON only")
            patients = query.getlist("patient")
            if len(patients) != 1:
                raise SearchError("give one patient (patient=Patient/ID): a cohort is $export's")
            codes = [t for text in query.getlist("code") for t in parse_codes(text)]
            dates = [parse_date(text) for text in query.getlist("date")]
            updated = [parse_date(text) for text in query.getlist("_lastUpdated")]
            count = _number(query.get("_count"), "_count", DEFAULT_COUNT, 1, MAX_COUNT)
            offset = _number(query.get("_offset"), "_offset", 0, 0, 10**9)
        except SearchError as exc:
            return outcome(400, "invalid", str(exc))
        patient_id = patients[0].removeprefix("Patient/")
        config = await run_in_threadpool(published.person, patient_id)
        if config is None:
            return outcome(404, "not-found", f"no Patient {patient_id[:64]!r} here")
        found = await run_in_threadpool(published.observations, config, codes, dates, updated)
        page = found[offset : offset + count]
        base = base_of(request)
        links = [{"relation": "self", "url": _link(base, query, offset, count)}]
        if offset + count < len(found):
            links.append({"relation": "next", "url": _link(base, query, offset + count, count)})
        if offset > 0:
            links.append(
                {"relation": "previous", "url": _link(base, query, max(0, offset - count), count)}
            )
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/fhir/Observation/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        # The person is the row's subject (salted), never their id in clear.
        asked = sorted((k, v) for k, v in query.multi_items() if k != "patient")
        what = "GET Observation?" + urlencode(asked)[:300]
        await run_in_threadpool(audited, grant, config, what, len(page))
        return _fhir(bundle)

    async def kick_off(request: Request) -> Response:
        grant = await granted(request)
        if isinstance(grant, Response):
            return grant
        group_id = request.path_params.get("id")
        try:
            asked = _kick_off_parameters(request)
        except SearchError as exc:
            return outcome(400, "invalid", str(exc))
        types = asked.types or tuple(t for t in bulk.TYPES if allowed(list(grant.scopes), t, "r"))
        refused = [t for t in types if not allowed(list(grant.scopes), t, "r")]
        if refused or not types:
            refused_rows.refused(
                action="bulk-export",
                actor=f"fhir client {grant.name}",
                where=f"GET {request.url.path}",
                reason="scope",
                address=_address(request),
            )
            return outcome(
                403,
                "forbidden",
                f"the token's scopes do not include system/{(refused or ['*'])[0]}.r",
            )
        if (
            group_id is not None
            and await run_in_threadpool(groups.get_group, store, group_id) is None
        ):
            return outcome(404, "not-found", f"no Group {group_id[:64]!r} here")
        base = base_of(request)
        query = f"?{request.url.query}" if request.url.query else ""
        export = await run_in_threadpool(
            bulk.kick_off, store, client_id=grant.client_id, group_id=group_id, types=types,
            since_us=asked.since_us, request=f"{base}{request.url.path}{query}",
        )  # fmt: skip
        await run_in_threadpool(
            audit.record, store, actor=f"fhir client {grant.name}", action="bulk-export",
            detail=f"{export.export_id}: kicked off for "
            f"{'Group/' + group_id if group_id else 'every Patient'}, {','.join(types)}"
            + (f", since {iso_us(asked.since_us)}" if asked.since_us is not None else ""),
        )  # fmt: skip
        location = f"{base}/fhir/bulk-status/{export.export_id}"
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational",
                       "diagnostics": f"export accepted: poll {location}"}],
        }  # fmt: skip
        return _fhir(body, 202, {"Content-Location": location})

    async def mine(request: Request) -> tuple[Grant, bulk.Export] | Response:
        """The export the URL names, if the token's client asked for it (another's is not
        found: an export id is not a secret to guess at)."""
        grant = await granted(request)
        if isinstance(grant, Response):
            return grant
        export_id = request.path_params["export_id"]
        export = await run_in_threadpool(bulk.get, store, export_id)
        if export is None or export.client_id != grant.client_id:
            return outcome(404, "not-found", f"no export {export_id[:64]!r} here (expired?)")
        return grant, export

    async def export_status(request: Request) -> Response:
        found = await mine(request)
        if isinstance(found, Response):
            return found
        _, export = found
        if export.state in bulk.LIVE:
            progress = export.progress or ("queued" if export.state == "accepted" else "running")
            return Response(
                status_code=202,
                headers={"X-Progress": progress, "Retry-After": str(bulk.RETRY_AFTER_S)},
            )
        if export.state == "failed":
            return outcome(500, "exception", f"the export failed: {export.error}")
        if export.state != "complete":
            why = {
                "cancelled": "it was cancelled",
                "withdrawn": "a person it held asked to be erased: kick off a new export",
            }[export.state]
            return outcome(404, "not-found", f"export {export.export_id}: {why}")
        base = base_of(request)
        manifest = {
            "transactionTime": iso_us(export.transaction_us),
            "request": export.request,
            "requiresAccessToken": True,
            "output": [
                {"type": f["type"], "url": f"{base}/fhir/bulk-files/{export.export_id}/{f['name']}",
                 "count": f["count"]}
                for f in export.output
            ],
            "error": [],
        }  # fmt: skip
        expires = export.expires_us()
        headers = {} if expires is None else {"Expires": _http_date(expires)}
        return JSONResponse(manifest, headers=headers)

    async def export_cancel(request: Request) -> Response:
        found = await mine(request)
        if isinstance(found, Response):
            return found
        grant, export = found
        cancelled = await run_in_threadpool(
            bulk.cancel, store, output, export.export_id, actor=f"fhir client {grant.name}"
        )
        if not cancelled:
            return outcome(404, "not-found", f"export {export.export_id} is no longer here")
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational",
                       "diagnostics": f"export {export.export_id} cancelled, its files deleted"}],
        }  # fmt: skip
        return _fhir(body, 202)

    async def export_file(request: Request) -> Response:
        found = await mine(request)
        if isinstance(found, Response):
            return found
        grant, export = found
        name = request.path_params["name"]
        entry = next((f for f in export.output if f["name"] == name), None)
        if export.state != "complete" or entry is None:
            return outcome(404, "not-found", f"no file {name[:64]!r} in export {export.export_id}")
        if not allowed(list(grant.scopes), entry["type"], "r"):
            return outcome(403, "forbidden", f"the token's scopes do not include "
                           f"system/{entry['type']}.r")  # fmt: skip
        try:
            body = await run_in_threadpool(output.read, f"{export.directory}/{name}")
        except FileNotFoundError:
            return outcome(404, "not-found", f"export {export.export_id} is no longer here")
        await run_in_threadpool(
            audit.record, store, actor=f"fhir client {grant.name}", action="bulk-export",
            detail=f"{export.export_id}: downloaded {name} ({entry['count']} resources)",
        )  # fmt: skip
        return Response(body, media_type=NDJSON)

    async def topics(request: Request) -> Response:
        topic = subscriptions.topic_resource()
        if "id" in request.path_params:
            if request.path_params["id"] != topic["id"]:
                return outcome(404, "not-found", "no such SubscriptionTopic here")
            return _fhir(topic)
        base = base_of(request)
        return _fhir({
            "resourceType": "Bundle", "type": "searchset", "total": 1,
            "link": [{"relation": "self", "url": f"{base}/fhir/SubscriptionTopic"}],
            "entry": [{"fullUrl": f"{base}/fhir/SubscriptionTopic/{topic['id']}",
                       "resource": topic, "search": {"mode": "match"}}],
        })  # fmt: skip

    async def subscribe(request: Request) -> Response:
        grant = await authorized(request, "Subscription", "c")
        if isinstance(grant, Response):
            return grant
        if not allowed(list(grant.scopes), "Observation", "r"):
            return outcome(403, "forbidden", "a subscription to Observations needs "
                           "system/Observation.r too")  # fmt: skip
        try:
            body = orjson.loads(await _body(request))
            asked = subscriptions.parse(body)
        except (orjson.JSONDecodeError, SearchError, subscriptions.SubscriptionError) as exc:
            return outcome(400, "invalid", str(exc))
        config = await run_in_threadpool(published.person, asked.patient_id)
        if config is None:
            return outcome(404, "not-found", f"no Patient {asked.patient_id[:64]!r} here")
        created = await run_in_threadpool(
            lambda: subscriptions.create(store, client_id=grant.client_id, client_name=grant.name,
                                         request=asked, person=config, base=base_of(request))
        )  # fmt: skip
        created = await run_in_threadpool(deliverer.handshake, created)
        location = {"Location": created.url}
        return _fhir(created.resource(), 201, location)

    async def subscription_of(
        request: Request, permission: str
    ) -> tuple[Grant, subscriptions.Subscription] | Response:
        grant = await authorized(request, "Subscription", permission)
        if isinstance(grant, Response):
            return grant
        found = await run_in_threadpool(subscriptions.get, store, request.path_params["id"])
        if found is None or found.client_id != grant.client_id:
            return outcome(404, "not-found", "no such Subscription here")
        return grant, found

    async def read_subscription(request: Request) -> Response:
        found = await subscription_of(request, "r")
        if isinstance(found, Response):
            return found
        await run_in_threadpool(audited, found[0], found[1], "GET Subscription/[id]", 1)
        return _fhir(found[1].resource())

    async def delete_subscription(request: Request) -> Response:
        found = await subscription_of(request, "d")
        if isinstance(found, Response):
            return found
        grant, subscription = found
        await run_in_threadpool(
            lambda: subscriptions.delete(store, subscription, client_name=grant.name)
        )
        return Response(status_code=204)

    async def subscription_status(request: Request) -> Response:
        found = await subscription_of(request, "r")
        if isinstance(found, Response):
            return found
        await run_in_threadpool(audited, found[0], found[1], "GET Subscription/$status", 1)
        status = subscriptions.status_resource(found[1], "query-status")
        return _fhir({
            "resourceType": "Bundle", "type": "searchset", "total": 1,
            "link": [{"relation": "self", "url": f"{found[1].url}/$status"}],
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status,
                       "search": {"mode": "match"}}],
        })  # fmt: skip

    async def subscription_events(request: Request) -> Response:
        found = await subscription_of(request, "r")
        if isinstance(found, Response):
            return found
        grant, subscription = found
        query = request.query_params
        try:
            unknown = sorted(set(query) - {"eventsSinceNumber", "eventsUntilNumber", "content"})
            if unknown:
                raise SearchError(f"parameter {unknown[0]!r} is not supported by $events")
            since = _number(query.get("eventsSinceNumber"), "eventsSinceNumber", 1, 1, 10**15)
            until = _number(query.get("eventsUntilNumber"), "eventsUntilNumber", 10**15, 1,
                            10**15)  # fmt: skip
            content = query.get("content", subscription.content)
            if content not in subscriptions.CONTENTS:
                raise SearchError(f"content: one of {', '.join(subscriptions.CONTENTS)}")
        except SearchError as exc:
            return outcome(400, "invalid", str(exc))
        held = await run_in_threadpool(
            subscriptions.events, store, subscription.subscription_id, since - 1, until
        )
        bundle = await run_in_threadpool(
            lambda: subscriptions.notification(subscription, "query-event", held,
                                               published=published, content=content)
        )  # fmt: skip
        await run_in_threadpool(
            audited, grant, subscription, f"GET Subscription/$events {since}-", len(held)
        )
        return _fhir(bundle)

    routes = [
        Route("/fhir/metadata", metadata, methods=["GET"]),
        Route("/fhir/SubscriptionTopic", topics, methods=["GET"]),
        Route("/fhir/SubscriptionTopic/{id}", topics, methods=["GET"]),
        Route("/fhir/Subscription", subscribe, methods=["POST"]),
        Route("/fhir/Subscription/{id}/$status", subscription_status, methods=["GET"]),
        Route("/fhir/Subscription/{id}/$events", subscription_events, methods=["GET"]),
        Route("/fhir/Subscription/{id}", read_subscription, methods=["GET"]),
        Route("/fhir/Subscription/{id}", delete_subscription, methods=["DELETE"]),
        Route("/fhir/Patient/$export", kick_off, methods=["GET"]),
        Route("/fhir/Group/{id}/$export", kick_off, methods=["GET"]),
        Route("/fhir/Group", search_groups, methods=["GET"]),
        Route("/fhir/Group/{id}", read_group, methods=["GET"]),
        Route("/fhir/bulk-status/{export_id}", export_status, methods=["GET"]),
        Route("/fhir/bulk-status/{export_id}", export_cancel, methods=["DELETE"]),
        Route("/fhir/bulk-files/{export_id}/{name}", export_file, methods=["GET"]),
        Route("/.well-known/smart-configuration", smart, methods=["GET"]),
        Route("/fhir/.well-known/smart-configuration", smart, methods=["GET"]),
        Route("/fhir/auth/token", token, methods=["POST"]),
        Route("/fhir/Patient/{id}", read_patient, methods=["GET"]),
        Route("/fhir/Observation", search_observations, methods=["GET"]),
        Route("/fhir/Observation/{id}", read_observation, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if deliver:
            deliverer.start()
        try:
            yield
        finally:
            deliverer.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.deliverer = deliverer
    return app


async def _form(request: Request) -> dict[str, str]:
    """The token request's form fields (application/x-www-form-urlencoded, each field once)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise TokenError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_FORM_BYTES:
            raise TokenError("invalid_request", f"the body is over {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise TokenError("invalid_request", "the body is not a URL-encoded form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise TokenError("invalid_request", "a form field is given twice")
    return form


@dataclass(frozen=True, slots=True)
class KickOff:
    types: tuple[str, ...]  # empty: every type the client may read
    since_us: int | None


def _kick_off_parameters(request: Request) -> KickOff:
    """A kick-off's headers and parameters (Bulk Data Access 2.0), or the SearchError naming
    what is wrong. An unknown parameter is refused unless `Prefer: handling=lenient`."""
    prefer = {p.strip().lower() for p in request.headers.get("prefer", "").split(",")}
    if "respond-async" not in prefer:
        raise SearchError("a kick-off needs the header Prefer: respond-async")
    accept = request.headers.get("accept", FHIR_JSON)
    if not any(a.split(";")[0].strip() in (*FORMATS, "*/*") for a in accept.split(",")):
        raise SearchError(f"Accept: {accept[:64]!r}: this server answers application/fhir+json")
    query = request.query_params
    unknown = sorted(set(query) - set(KICK_OFF_PARAMETERS))
    if unknown and "handling=lenient" not in prefer:
        raise SearchError(
            f"parameter {unknown[0]!r} is not supported here (supported: "
            f"{', '.join(KICK_OFF_PARAMETERS)}; Prefer: handling=lenient ignores the others)"
        )
    formats = query.getlist("_outputFormat")
    if any(f not in bulk.OUTPUT_FORMATS for f in formats):
        raise SearchError(f"_outputFormat: one of {', '.join(bulk.OUTPUT_FORMATS)}")
    types = [t for text in query.getlist("_type") for t in text.split(",")]
    not_here = [t for t in types if t not in bulk.TYPES]
    if not_here:
        raise SearchError(
            f"_type {not_here[0][:64]!r} is not exported here (one of {', '.join(bulk.TYPES)})"
        )
    since = query.getlist("_since")
    if len(since) > 1:
        raise SearchError("_since is given more than once")
    since_us = None
    if since:
        if _INSTANT.fullmatch(since[0]) is None:
            raise SearchError(
                f"_since {since[0][:64]!r} is not a FHIR instant (e.g. 2026-12-01T00:00:00Z)"
            )
        try:
            since_us = to_us(datetime.fromisoformat(since[0].replace("Z", "+00:00")))
        except ValueError as exc:
            raise SearchError(f"_since {since[0][:64]!r}: {exc}") from None
    return KickOff(tuple(dict.fromkeys(types)), since_us)


def _http_date(us: int) -> str:
    return formatdate(us / 1_000_000, usegmt=True)


async def _body(request: Request) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/fhir+json", "application/json"):
        raise SearchError("the body must be application/fhir+json")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_FORM_BYTES:
            raise SearchError(f"the body is over {MAX_FORM_BYTES} bytes")
    return body


def _number(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise SearchError(f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _link(base: str, query: Any, offset: int, count: int) -> str:
    kept = [(k, v) for k, v in query.multi_items() if k not in ("_offset", "_count")]
    return f"{base}/fhir/Observation?" + urlencode([*kept, ("_count", count), ("_offset", offset)])


def _address(request: Request) -> str:
    return request.client.host if request.client else ""
