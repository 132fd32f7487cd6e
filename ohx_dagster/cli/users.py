"""`ohx users`: the people the store syncs, one person in full, disconnecting and erasing one.

- `list`: provider, person, FHIR patient, state (and why), zone, frequency, aggregation, connected.
- `show <provider> <user_id>`: config, state, coverage per type as ISO intervals, refusals, the
  last failure per type, stored OAuth tokens (scope and expiry only), webhook subscriptions.
- `disconnect <provider> <user_id>`: no run calls the provider for them any more; their data is
  kept (retention still applies) and connecting again makes them active.
- `delete <provider> <user_id> --yes`: erases the person (ohx_dagster.privacy.erasure.erase_person);
  their tombstone keeps them out of every later sync, connection and webhook.
- `relink <provider> <user_id> --patient ID --reason .. --actor ..`: moves an account to another
  patient and republishes its history under them (ohx_dagster.privacy.identity.relink), audited.
- `readmit <provider> <user_id> --reason .. --actor ..`: lifts an erased person's tombstone,
  audited.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import click

from ohx_dagster.cli import common
from ohx_dagster.core import times
from ohx_dagster.core.errors import OhxError
from ohx_dagster.core.ids import check_user_id

if TYPE_CHECKING:
    from ohx_dagster.storage.store import PersonRow, RecordStore


class UnknownPerson(OhxError):
    pass


def _person(store: RecordStore, provider: str, user_id: str) -> PersonRow:
    found = store.person(provider, user_id)
    if found is None:
        raise UnknownPerson(
            f"no person {user_id!r} of provider {provider!r} in the store: "
            "`ohx users list` shows who is there"
        )
    return found


def person_json(person: PersonRow) -> dict[str, Any]:
    from ohx_dagster.cli.status import person_state

    config = person.config
    state, reason = person_state(person)
    return {
        "provider": config.provider,
        "user_id": config.user_id,
        "patient": config.fhir_patient_id,
        "state": state,
        "state_reason": reason,
        "state_since": times.iso(person.state_at_us),
        "connected_at": times.iso(person.connected_at_us),
        "timezone": config.timezone,
        "sync_frequency": config.sync_frequency.value,
        "aggregation": config.aggregation.value,
    }


@click.group("users")
def users() -> None:
    """List, inspect, disconnect, erase, re-admit and re-link the people the store syncs."""


@users.command("list")
@click.option("--provider", help="Only this provider's people.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON (ISO 8601 times).")
@click.pass_context
def list_people(ctx: click.Context, provider: str | None, as_json: bool) -> None:
    """Everyone in the store (connected or not), by provider and id."""
    from rich.table import Table
    from rich.text import Text

    common.check_provider(provider)
    people = [person_json(p) for p in common.open_store(ctx).people(provider)]
    if as_json:
        common.echo_json({"people": people})
        return
    out = common.console()
    if not people:
        out.print(Text("No people in the store yet."))
        return
    table = Table()
    for header in (
        "provider",
        "person",
        "patient",
        "state",
        "since",
        "zone",
        "frequency",
        "aggregation",
        "connected",
    ):
        table.add_column(header)
    for p in people:
        state = p["state"] + (f": {p['state_reason']}" if p["state_reason"] else "")
        table.add_row(
            *(
                Text(str(v or ""))
                for v in (
                    p["provider"],
                    p["user_id"],
                    p["patient"],
                    state,
                    p["state_since"],
                    p["timezone"],
                    p["sync_frequency"],
                    p["aggregation"],
                    p["connected_at"],
                )
            )
        )
    out.print(table)


def person_detail(store: RecordStore, person: PersonRow) -> dict[str, Any]:
    from ohx_dagster.cli import queries
    from ohx_dagster.storage.store import config_hash

    config = person.config
    provider, user_id = config.provider, config.user_id
    coverage = store.coverage(provider, [user_id])
    current = config_hash(config)
    statuses = [r for r in store.type_statuses(provider) if r.user_id == user_id]
    token = queries.token_row(store, provider, user_id)
    return {
        **person_json(person),
        "config": config.to_json(),
        "coverage": {
            data_type: [[times.iso(s), times.iso(e)] for s, e in intervals]
            for (_, data_type), intervals in sorted(coverage.items())
        },
        "refusals": [
            {
                "data_type": r.data_type,
                "reason": r.refused_reason,
                "since": times.iso(r.refused_us),
                # A refusal under other settings is tried again: the person changed them.
                "applies": r.refused_config in (None, current),
            }
            for r in statuses
            if r.refused_reason is not None
        ],
        "last_errors": [
            {"data_type": r.data_type, "error": r.last_error, "at": times.iso(r.last_error_us)}
            for r in statuses
            if r.last_error is not None
        ],
        "last_success": {
            r.data_type: times.iso(r.last_success_us)
            for r in statuses
            if r.last_success_us is not None
        },
        "oauth_tokens": None
        if token is None
        else {
            "scope": token.scope,
            "access_token_expires": times.iso(token.expires_at_us),
            "updated": times.iso(token.updated_at_us),
        },
        "subscriptions": [
            {
                "target": s.target,
                "scope": "app-wide" if s.user_id == "" else "person",
                "status": s.status,
                "subscription_id": s.subscription_id,
                "expires": times.iso(s.expires_at_us),
                "detail": s.detail,
                "updated": times.iso(s.updated_at_us),
            }
            for s in queries.subscriptions(store, provider, user_id)
        ],
    }


def _render_detail(detail: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    out = common.console()
    state = detail["state"] + (f": {detail['state_reason']}" if detail["state_reason"] else "")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    config = detail["config"]
    for label, value in (
        ("person", f"{detail['provider']} / {detail['user_id']}"),
        ("patient", detail["patient"]),
        ("state", f"{state} (since {detail['state_since']})"),
        ("connected", detail["connected_at"]),
        ("zone", config["timezone"]),
        ("sync", f"{config['sync_frequency']}, aggregation {config['aggregation']}"),
        ("types", ", ".join(config["enabled_types"])),
        (
            "history",
            f"lookback {config['lookback_days']} d, retention {config['retention_days']} d",
        ),
        ("linked", "heart rate around " + (", ".join(config["link_heart_rate_to"]) or "nothing")),
    ):
        head.add_row(Text(label), Text(str(value)))
    token = detail["oauth_tokens"]
    head.add_row(
        Text("oauth"),
        Text(
            "no tokens stored"
            if token is None
            else f"tokens stored (encrypted), access token expires {token['access_token_expires']}"
            f", scope {token['scope'] or '-'}"
        ),
    )
    out.print(head)
    coverage = Table(title=Text("coverage (UTC)"), title_justify="left")
    for header in ("type", "covered intervals", "last success"):
        coverage.add_column(header)
    for data_type, intervals in detail["coverage"].items():
        text = "\n".join(f"{s} .. {e}" for s, e in intervals)
        coverage.add_row(
            Text(data_type), Text(text), Text(detail["last_success"].get(data_type) or "")
        )
    out.print(coverage if detail["coverage"] else Text("coverage: nothing synced yet"))
    for title, items, columns in (
        ("refusals", detail["refusals"], ("data_type", "reason", "since", "applies")),
        ("last errors", detail["last_errors"], ("data_type", "error", "at")),
        (
            "webhook subscriptions",
            detail["subscriptions"],
            ("target", "scope", "status", "expires", "detail", "updated"),
        ),
    ):
        if not items:
            out.print(Text(f"{title}: none"))
            continue
        table = Table(title=Text(title), title_justify="left")
        for column in columns:
            table.add_column(column.replace("_", " "))
        for item in items:
            table.add_row(*(Text(str(item[c]) if item[c] is not None else "") for c in columns))
        out.print(table)


@users.command("show")
@click.argument("provider")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON (ISO 8601 times).")
@click.pass_context
def show(ctx: click.Context, provider: str, user_id: str, as_json: bool) -> None:
    """One person: config, state, coverage per type, refusals, errors, tokens, subscriptions."""
    store = common.open_store(ctx)
    detail = person_detail(store, _person(store, provider, user_id))
    if as_json:
        common.echo_json(detail)
    else:
        _render_detail(detail)


@users.command("disconnect")
@click.argument("provider")
@click.argument("user_id")
@click.option(
    "--reason",
    default="disconnected by staff (ohx users disconnect)",
    show_default=True,
    help="Why, kept with the person's state.",
)
@click.pass_context
def disconnect(ctx: click.Context, provider: str, user_id: str, reason: str) -> None:
    """Stop syncing a person. Their data is kept; connecting their account again resumes."""
    from ohx_dagster.storage.store import DISCONNECTED

    store = common.open_store(ctx)
    person = _person(store, provider, user_id)
    if not person.connected or person.state == DISCONNECTED:
        click.echo(
            f"{provider} {user_id} was already disconnected (since "
            f"{times.iso(person.state_at_us)}): nothing changed"
        )
        return
    store.set_state(provider, user_id, DISCONNECTED, reason)
    from ohx_dagster.privacy import audit
    from ohx_dagster.privacy.subjects import erasure_salt, subject_hash

    audit.record(
        store,
        actor=audit.login("ohx users disconnect"),
        action="disconnect",
        subject=subject_hash(provider, user_id, salt=erasure_salt()),
        detail=f"provider {provider}; reason: {reason}",
    )
    click.echo(
        f"{provider} {user_id} disconnected ({reason}): no run calls {provider} for them any "
        "more; their records, coverage and FHIR output are kept (erase them with "
        f"`ohx users delete {provider} {user_id} --yes`)"
    )


def _erasure() -> Any:
    """ohx_dagster.privacy.erasure, imported once a deletion is confirmed."""
    try:
        erasure = importlib.import_module("ohx_dagster.privacy.erasure")
    except ImportError as exc:
        if exc.name not in (None, "ohx_dagster.privacy.erasure"):
            raise  # a dependency of the erasure module is missing: show it
        raise OhxError(
            "erasure is not available in this installation (ohx_dagster.privacy.erasure is "
            "missing): install a release that has it; nothing was deleted"
        ) from None
    if not hasattr(erasure, "erase_person"):
        raise OhxError("ohx_dagster.privacy.erasure has no erase_person: nothing was deleted")
    return erasure


def _fhir_client() -> Any | None:
    """The FHIR server client the delivery and erasure jobs use (None: no server configured)."""
    # The one place that builds it from OHX_FHIR_* is the Dagster resource; resolved here
    # outside any run (its secrets are EnvVars).
    from resources.fhir_server import fhir_server_from_env

    server = fhir_server_from_env().process_config_and_initialize()
    return server.client() if server.configured else None


@users.command("delete")
@click.argument("provider")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Confirm: erase the person and all their data.")
@click.pass_context
def delete(ctx: click.Context, provider: str, user_id: str, yes: bool) -> None:
    """Erase a person everywhere: the store, the published FHIR files and the FHIR server's
    copies (ohx_dagster.privacy.erasure.erase_person). Running it again finishes what a server
    outage
    left."""
    if not yes:
        raise click.UsageError(
            f"erasing {provider} {user_id} cannot be undone: add --yes to confirm "
            f"(or `ohx users disconnect {provider} {user_id}` to stop syncing and keep the data)"
        )
    from ohx_dagster.config.settings import FILE_SOURCES, Settings
    from ohx_dagster.fhir.output import FhirOutput
    from ohx_dagster.privacy.audit import login
    from ohx_dagster.providers.registry import CATALOG

    check_user_id(user_id, "USER_ID")
    store = common.open_store(ctx)
    erasure = _erasure()
    if store.person(provider, user_id) is None and not erasure.remaining_rows(
        store, provider, user_id
    ):
        raise UnknownPerson(
            f"nothing of {user_id!r} of provider {provider!r} is in the store (never there, or "
            "erased already): `ohx users list` shows who is there"
        )
    settings = Settings.from_env(catalog=CATALOG)
    client = _fhir_client()
    report = erasure.erase_person(
        store,
        FhirOutput(settings.fhir_dir),
        client,
        provider,
        user_id,
        requested_by=login("ohx users delete"),
    )
    counts = ", ".join(f"{name} {n}" for name, n in sorted(report.counts.items()) if n)
    click.echo(f"{provider} {user_id} erased: {counts or 'nothing was left'}")
    click.echo(
        f"recorded in erasures and the audit log as subject {report.subject}: no later sync, "
        f"connection or webhook stores them again until `ohx users readmit {provider} "
        f"{user_id}`"
    )
    if provider in FILE_SOURCES:
        click.echo(
            f"{provider} reads export files: their data is still in the export itself. Purge "
            "it there (delete their files or rows from the export folder), or it comes back "
            "the day they are re-admitted."
        )
    click.echo(
        "Dagster's run history is not touched here: the erase_person_job erases the runs that "
        f"name them (`python -m ohx_dagster.privacy.erasure subject --provider {provider} --user "
        f"{user_id} --requested-by <you>` prints its run config)."
    )
    if not report.complete and client is None:
        click.echo(
            f"{report.server_pending} of their outbox entries are kept, emptied, for a FHIR "
            "server: none is configured (OHX_FHIR_SERVER_URL); if one was, set it and run this "
            "command again"
        )
    elif not report.complete:
        raise OhxError(
            f"the FHIR server may still hold {report.server_pending} of their resources "
            f"({report.server_error or 'no FHIR server client'}): run this command again once "
            "OHX_FHIR_SERVER_URL answers"
        )


def _said(text: str, what: str) -> str:
    """A --reason or --actor: something, on one line."""
    text = " ".join(text.split())
    if not text:
        raise click.BadParameter("must not be empty", param_hint=what)
    return text


@users.command("relink")
@click.argument("provider")
@click.argument("user_id")
@click.option("--patient", required=True, help="The FHIR Patient id the account belongs to.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--actor", required=True, help="Who decided (kept in the audit log).")
@click.pass_context
def relink(
    ctx: click.Context, provider: str, user_id: str, patient: str, reason: str, actor: str
) -> None:
    """Move an account to another patient: the connect flow refuses that, staff decide it here.
    Every stored day of the person is published again under the new patient by Dagster's
    republish_sensor; who, when and why go to the audit log."""
    from ohx_dagster.core.ids import check_patient_id
    from ohx_dagster.privacy import identity, subjects

    common.check_provider(provider, "PROVIDER")
    check_user_id(user_id, "USER_ID")
    check_patient_id(patient, "--patient")
    reason, actor = _said(reason, "--reason"), _said(actor, "--actor")
    store = common.open_store(ctx)
    salt = subjects.erasure_salt()
    with store.write() as conn:
        moved = identity.relink(
            conn, provider, user_id, patient, actor=actor, reason=reason, salt=salt
        )
    if moved is None:
        _person(store, provider, user_id)  # raises UnknownPerson
        return
    if moved.old_patient == moved.new_patient:
        click.echo(f"{provider} {user_id} is already linked to patient {patient}: nothing changed")
        return
    click.echo(
        f"{provider} {user_id} moved to patient {patient} (from patient subject "
        f"{subjects.short(moved.old_patient)}); recorded in the audit log as subject "
        f"{subjects.short(moved.subject)} by {actor}"
    )
    click.echo(
        f"{moved.days} stored days marked changed: the running Dagster's republish_sensor "
        "publishes them again under the new patient"
    )


@users.command("set-zone")
@click.argument("provider")
@click.argument("user_id")
@click.argument("timezone")
@click.option(
    "--from",
    "since",
    default="",
    help="The first local day lived in TIMEZONE (YYYY-MM-DD; a move). Omit it for a corrected "
    "setting: every day is cut again in TIMEZONE.",
)
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--actor", required=True, help="Who decided (kept in the audit log).")
@click.pass_context
def set_zone(
    ctx: click.Context,
    provider: str,
    user_id: str,
    timezone: str,
    since: str,
    reason: str,
    actor: str,
) -> None:
    """Change the zone a person lives in. Days before --from keep their zone; from it on, days are
    cut in TIMEZONE (the day of the move begins where the day before ended). Every stored day
    whose bounds change is published again by Dagster's republish_sensor, and the old zone's
    aggregates go."""
    from datetime import date
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from ohx_dagster.privacy import audit, subjects

    common.check_provider(provider, "PROVIDER")
    check_user_id(user_id, "USER_ID")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(
            f"{timezone!r} is not an IANA time zone name (e.g. Europe/Berlin)",
            param_hint="TIMEZONE",
        ) from None
    try:
        first = date.fromisoformat(since) if since else date.min
    except ValueError:
        raise click.BadParameter(
            f"{since!r} is not a date YYYY-MM-DD", param_hint="--from"
        ) from None
    reason, actor = _said(reason, "--reason"), _said(actor, "--actor")
    store = common.open_store(ctx)
    before = _person(store, provider, user_id).config
    days = store.set_zone(provider, user_id, timezone, first)
    subject = subjects.subject_hash(provider, user_id, salt=subjects.erasure_salt())
    audit.record(
        store, actor=actor, action="set-zone", subject=subject,
        detail=f"provider {provider}; {before.timezone} -> {timezone} from "
        f"{since or 'the first day'}; {len(days)} days re-derived; reason: {reason}",
    )  # fmt: skip
    when = f"from {first.isoformat()}" if since else "for every day"
    click.echo(f"{provider} {user_id} lives in {timezone} {when} (was {before.timezone})")
    click.echo(
        f"{len(days)} stored days marked changed: the running Dagster's republish_sensor "
        "publishes them again, cut in the new zone"
    )


@users.command("readmit")
@click.argument("provider")
@click.argument("user_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--actor", required=True, help="Who decided (kept in the audit log).")
@click.pass_context
def readmit(ctx: click.Context, provider: str, user_id: str, reason: str, actor: str) -> None:
    """Let an erased person in again: their erasure's tombstone is lifted, so the next sync of
    their source, connection or webhook stores their data again."""
    from ohx_dagster.privacy import identity, subjects

    common.check_provider(provider, "PROVIDER")
    check_user_id(user_id, "USER_ID")
    reason, actor = _said(reason, "--reason"), _said(actor, "--actor")
    store = common.open_store(ctx)
    with store.write() as conn:
        lifted = identity.readmit(
            conn, provider, user_id, actor=actor, reason=reason, salt=subjects.erasure_salt()
        )
    if not lifted:
        raise OhxError(
            f"{provider} {user_id} has no erasure standing (never erased, or re-admitted "
            "already): nothing to re-admit"
        )
    click.echo(
        f"{provider} {user_id} re-admitted ({lifted} erasure(s) lifted, recorded in the audit "
        f"log by {actor}): the next sync, connection or webhook brings them back"
    )
