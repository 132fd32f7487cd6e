"""`ohx doctor`: is this environment ready to run the product? One line per check, OK, FAIL (with
the fix) or SKIP (not configured, so not needed); exit 1 when any check fails.

Nothing is changed except a probe file written to and removed from an existing FHIR output root,
and the Dagster instance's own storage, which loading it creates when it is new (as `dagster dev`
would). No database and no folder is created.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click

from ohx_dagster.cli import common
from ohx_dagster.config.sources import EXPORT_SETTINGS
from ohx_dagster.core.errors import ConfigError, OhxError

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"
FHIR_SERVER_TIMEOUT_S: Final = 5.0
DATABASE_TIMEOUT_S: Final = 5


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.status == FAIL and self.fix else ""
        return f"{self.status:<4} {self.name}: {common.one_line(self.detail)}{fix}"


def _settings() -> object | None:
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.providers.registry import CATALOG

    try:
        return Settings.from_env(catalog=CATALOG)
    except OhxError:
        return None


def check_configuration() -> Check:
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.providers.registry import CATALOG

    try:
        settings = Settings.from_env(catalog=CATALOG)
    except OhxError as exc:
        return Check("configuration", FAIL, str(exc), "set the variable the message names")
    return Check(
        "configuration",
        OK,
        f"sources {','.join(settings.source_keys)}; partitions from {settings.partitions_start}",
    )


def check_database() -> Check:
    import sqlalchemy as sa

    from ohx_dagster.storage import db, migrate

    url = common.database_url()
    where = f"record store {common.redacted(url)}"
    path = common.sqlite_file(url)
    if path is not None and not path.is_file():
        return Check("database", FAIL, f"{where}: no file {path}", "run `ohx db upgrade`")
    target = url
    if url.startswith(("postgresql", "postgres://")):
        # A server that does not answer fails the check in seconds, not after TCP's minutes.
        parsed = sa.make_url(url)
        if "connect_timeout" not in parsed.query:
            parsed = parsed.update_query_dict({"connect_timeout": str(DATABASE_TIMEOUT_S)})
        target = parsed.render_as_string(hide_password=False)
    try:
        engine = db.create_engine(target)
        try:
            have = migrate.current(engine)
        finally:
            engine.dispose()
    except ConfigError as exc:
        return Check("database", FAIL, str(exc), "set OHX_DATABASE_URL")
    except sa.exc.SQLAlchemyError as exc:
        reason = common.one_line(getattr(exc, "orig", None) or exc).split(" (Background")[0]
        return Check(
            "database",
            FAIL,
            f"{where} cannot be reached: {reason}",
            "start the database server, or correct OHX_DATABASE_URL (host, database, user, "
            "password)",
        )
    want = migrate.head()
    if have != want:
        return Check(
            "database",
            FAIL,
            f"{where} is at schema revision {have or 'none (empty)'}, this release needs {want}",
            "run `ohx db upgrade`",
        )
    return Check("database", OK, f"{where} at schema head {want}")


def check_dagster() -> Check:
    from ohx_dagster.config.cli import CliSettings

    home = CliSettings.from_env().dagster_home
    if not home:
        return Check(
            "dagster instance",
            FAIL,
            "DAGSTER_HOME is not set",
            "export DAGSTER_HOME=<instance folder> holding a dagster.yaml (deploy/dagster.yaml "
            "for the embedded default; `ohx dev` uses $OHX_HOME/dagster)",
        )
    config = Path(home) / "dagster.yaml"
    if not config.is_file():
        return Check(
            "dagster instance",
            FAIL,
            f"{config} does not exist",
            f"copy deploy/dagster.yaml (or deploy/dagster.postgres.yaml) to {config}",
        )
    try:
        from dagster import DagsterInstance

        instance = DagsterInstance.from_config(home)
        try:
            storage = type(instance.run_storage).__name__
            coordinator = type(instance.run_coordinator).__name__
        finally:
            instance.dispose()
    except Exception as exc:  # whatever Dagster raises for a bad instance config
        return Check(
            "dagster instance",
            FAIL,
            f"{config} does not load: {type(exc).__name__}: {exc}",
            f"correct {config} (and the variables it names)",
        )
    return Check("dagster instance", OK, f"{config} loads ({storage}, {coordinator})")


def check_fhir_packages() -> Check:
    from ohx_dagster.fhir.validation.packages import (
        CORE_PACKAGE,
        TERMINOLOGY_PACKAGE,
        package_path,
    )

    try:
        paths = [package_path(name) for name in (CORE_PACKAGE, TERMINOLOGY_PACKAGE)]
    except ConfigError as exc:
        return Check("FHIR packages", FAIL, str(exc), "run `ohx fhir fetch-packages`")
    return Check("FHIR packages", OK, f"{', '.join(p.name for p in paths)} in {paths[0].parent}")


def configured_providers() -> list[str]:
    """Provider APIs named in OHX_SOURCES or with any of their OAuth variables set."""
    from ohx_dagster.config.providers import ApiSettings
    from ohx_dagster.config.sources import named_sources
    from ohx_dagster.providers.registry import API_PROVIDERS

    sources = named_sources()
    return [
        name for name, app in API_PROVIDERS.items() if name in sources or ApiSettings.named(app)
    ]


def check_providers() -> Iterator[Check]:
    from ohx_dagster.config.connect import ConnectionSettings
    from ohx_dagster.config.providers import ApiSettings
    from ohx_dagster.providers.api.connect import ConnectSettings
    from ohx_dagster.providers.registry import API_PROVIDERS

    providers = configured_providers()
    if not providers:
        yield Check(
            "provider OAuth", SKIP, "no provider API configured (OHX_SOURCES, OHX_*_CLIENT_ID)"
        )
        return
    connect = bool(ConnectionSettings.from_env().redirect_base)
    for name in providers:
        app = API_PROVIDERS[name]
        try:
            settings = ApiSettings.from_env(app)
            if connect:
                ConnectSettings.from_env(app)
        except ConfigError as exc:
            yield Check(f"{name} OAuth", FAIL, str(exc), "set the variables the message names")
            continue
        detail = (
            f"{app.env_prefix}_CLIENT_ID and _CLIENT_SECRET set; "
            f"token URL {settings.oauth.token_url}"
        )
        if connect:
            detail += "; connect callback under OHX_OAUTH_REDIRECT_BASE"
        yield Check(f"{name} OAuth", OK, detail)


def stored_tokens() -> list[tuple[str, str, str]] | None:
    """(provider, user id, ciphertext) of every stored grant; None when the store cannot be read
    (no file, no schema yet, unreachable: the database check says which)."""
    import sqlalchemy as sa

    from ohx_dagster.storage import db
    from ohx_dagster.storage.schema import oauth_tokens as t

    url = common.database_url()
    path = common.sqlite_file(url)
    if path is not None and not path.is_file():
        return None
    try:
        engine = db.create_engine(url)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table(t.name):
                    return None
                query = sa.select(t.c.provider, t.c.user_id, t.c.ciphertext)
                return [(r.provider, r.user_id, r.ciphertext) for r in conn.execute(query)]
        finally:
            engine.dispose()
    except (ConfigError, sa.exc.SQLAlchemyError):
        return None


def check_token_key() -> Check:
    """OHX_TOKEN_KEY is a set of Fernet keys, and every grant in the store decrypts with it (a
    replaced key without the old one after it makes every person's next sync fail)."""
    from cryptography.fernet import InvalidToken

    from ohx_dagster.config.tokens import TOKEN_KEY_ENV, TokenSettings

    settings = TokenSettings.from_env()
    text = settings.key.strip()
    tokens = stored_tokens() or []
    held = f"{len(tokens)} stored token(s)"
    if not text and not configured_providers() and not tokens:
        return Check(
            "token key", SKIP, f"{TOKEN_KEY_ENV} unset; not needed: no provider API configured"
        )
    try:
        cipher = settings.cipher()
    except ConfigError as exc:
        detail = f"{exc}; the store holds {held}" if tokens else str(exc)
        return Check("token key", FAIL, detail, f"set {TOKEN_KEY_ENV} to a Fernet key")
    keys = len(settings.keys)
    unreadable = []
    for provider, user_id, ciphertext in tokens:
        try:
            cipher.decrypt(ciphertext.encode())
        except InvalidToken:
            unreadable.append(f"{provider}/{user_id}")
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        return Check(
            "token key",
            FAIL,
            f"{len(unreadable)} of {held} do not decrypt with {TOKEN_KEY_ENV} ({keys} Fernet "
            f"key(s)): {shown}",
            f"put the key they were saved with in {TOKEN_KEY_ENV} (after the new one, "
            "comma-separated, while keys rotate), or have those people connect again",
        )
    return Check(
        "token key", OK, f"{TOKEN_KEY_ENV}: {keys} Fernet key(s); {held}, all decrypt with it"
    )


# -- export sources: the files they name hold data -------------------------------------------------


def _first_data_line(path: object) -> bool:
    """Whether a CSV file holds a non-blank line after its header (reads two lines, not all)."""
    with path.open("rb") as stream:  # type: ignore[attr-defined]
        stream.readline()
        return any(line.strip() for line in stream)


def export_problem(setting: str, value: str) -> str | None:
    """What is wrong with the export a setting names, as one line naming it (None: it holds
    data). Fitabase: every folder exists and holds an export file with data rows; Apple Health:
    a file that is not empty; Polar: a file or a folder with files that are not empty."""
    from ohx_dagster.config.locations import kind, location, split_locations

    try:
        if setting == "OHX_FITABASE_DIR":
            from ohx_dagster.providers.fitabase import FitabaseSource

            for part in split_locations(value) or [value]:
                source = FitabaseSource([part], "UTC")  # the folder, and export files in it
                if not any(_first_data_line(path) for path, _ in source.files):
                    names = ", ".join(path.name for path, _ in source.files)
                    return (
                        f"{setting}={part!r}: its export files ({names}) hold a header and no "
                        "data rows: point it at a complete Fitabase export"
                    )
            return None
        where = location(value, setting)
        found = kind(where, setting)
        if found is None:
            return f"{setting}={value!r}: does not exist"
        if setting == "OHX_APPLE_HEALTH_EXPORT" and found != "file":
            return f"{setting}={value!r}: expected an export.xml or export.zip file, not a folder"
        files = [where] if found == "file" else [p for p in where.iterdir() if p.is_file()]
        if not any(p.stat().st_size > 0 for p in files):
            what = "is empty" if found == "file" else "holds no recording with data"
            return f"{setting}={value!r}: {what}"
    except OhxError as exc:
        return common.one_line(exc)
    except OSError as exc:
        return f"{setting}={value!r}: {exc.strerror or common.one_line(exc)}"
    return None


def configured_exports(env: Mapping[str, str] | None = None) -> list[str]:
    from ohx_dagster.config.sources import export_locations

    return list(export_locations(env))


def check_exports() -> Iterator[Check]:
    from ohx_dagster.config.sources import export_locations

    values = export_locations()
    names = list(values)
    if not names:
        yield Check(
            "export data",
            SKIP,
            "no export configured (" + ", ".join(n for n, _ in EXPORT_SETTINGS) + ")",
        )
        return
    for name in names:
        source = dict(EXPORT_SETTINGS)[name]
        value = values[name]
        problem = export_problem(name, value)
        if problem:
            yield Check(f"{source} export", FAIL, problem, f"point {name} at an export with data")
        else:
            yield Check(f"{source} export", OK, f"{name}={value} holds data")


def validate_environment() -> None:
    """What every command that reads the settings checks first: the settings parse
    (Settings.from_env), OHX_TOKEN_KEY when set is a set of Fernet keys, and every export the
    settings name holds data. Raises ConfigError: one line naming the setting."""
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.config.sources import export_locations
    from ohx_dagster.providers.registry import CATALOG

    settings = Settings.from_env(catalog=CATALOG)
    tokens = settings.tokens
    if tokens.key.strip():
        tokens.cipher()
    for name, value in export_locations(settings.env).items():
        problem = export_problem(name, value)
        if problem:
            raise ConfigError(problem)


def check_webhooks() -> Iterator[Check]:
    from ohx_dagster.config.receiver import WebhookSecrets
    from ohx_dagster.receiver.connect import ConnectConfig

    try:
        secrets = WebhookSecrets.from_env()
    except ConfigError as exc:
        yield Check("webhook secrets", FAIL, str(exc), "set or unset the variable it names")
    else:
        mounted = [p for p, on in secrets.mounted.items() if on]
        unmounted = [p for p, on in secrets.mounted.items() if not on]
        detail = f"mounted: {', '.join(mounted) or 'none'}"
        if unmounted:
            detail += f"; not mounted (secrets unset): {', '.join(unmounted)}"
        live = [p for p in configured_providers() if p in unmounted]
        if live:
            detail += f"; {', '.join(live)} sync on the schedules only"
        yield Check("webhook secrets", OK, detail)
    try:
        connect = ConnectConfig.from_env()
    except ConfigError as exc:
        yield Check(
            "connect routes",
            FAIL,
            str(exc),
            "set (or, if retired, unset) the variable the message names",
        )
        return
    if connect is None:
        yield Check(
            "connect routes", SKIP, "OHX_OAUTH_REDIRECT_BASE unset: /connect is not mounted"
        )
    else:
        names = ", ".join(sorted(connect.providers)) or "no provider (none has its OAuth app)"
        yield Check("connect routes", OK, f"/connect mounted for {names}")


def check_fhir_server() -> Check:
    import httpx

    from ohx_dagster.config.fhir import FhirServerSettings

    server = FhirServerSettings.from_env()
    base = server.base_url.strip().rstrip("/")
    if not base:
        return Check("FHIR server", SKIP, "OHX_FHIR_SERVER_URL unset: delivery is skipped")
    url = f"{base}/metadata"
    headers = {"Accept": "application/fhir+json"}
    token = server.bearer_token.strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    fix = "start the server, or correct OHX_FHIR_SERVER_URL (the FHIR base, without /metadata)"
    try:
        response = httpx.get(url, headers=headers, timeout=FHIR_SERVER_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Check("FHIR server", FAIL, f"GET {url}: {type(exc).__name__}: {exc}", fix)
    if response.status_code != 200:
        return Check("FHIR server", FAIL, f"GET {url}: HTTP {response.status_code}", fix)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        return Check("FHIR server", FAIL, f"GET {url}: not a CapabilityStatement", fix)
    version = str(body.get("fhirVersion", "?"))
    if not version.startswith("5."):
        return Check(
            "FHIR server",
            FAIL,
            f"{base} speaks FHIR {version}; this product delivers R5 (5.0.0)",
            "point OHX_FHIR_SERVER_URL at an R5 endpoint",
        )
    software = (
        (body.get("software") or {}).get("name") if isinstance(body.get("software"), dict) else None
    )
    return Check(
        "FHIR server", OK, f"{base}: FHIR {version}" + (f" ({software})" if software else "")
    )


def check_output(settings: object | None) -> Check:
    from ohx_dagster.config.storage import StorageSettings
    from ohx_dagster.fhir.output import FhirOutput

    root = getattr(settings, "fhir_dir", None) or StorageSettings.from_env().fhir_dir
    fix = "make OHX_FHIR_DIR writable for this user (or, for s3://, check its credentials)"
    if "://" not in root and not Path(root).exists():
        # Not created by a check: the nearest existing folder must let the first run create it.
        parent = next(p for p in Path(root).parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            return Check(
                "FHIR output", OK, f"{root} does not exist yet; {parent} lets it be created"
            )
        return Check(
            "FHIR output", FAIL, f"{root} cannot be created: {parent} is not writable", fix
        )
    probe = f".ohx-doctor-{uuid.uuid4().hex}.probe"
    try:
        output = FhirOutput(root)
        output.write(probe, b"ohx doctor\n")
        output.delete(probe)
    except Exception as exc:  # filesystem and object-store errors alike
        return Check(
            "FHIR output", FAIL, f"{root} is not writable: {type(exc).__name__}: {exc}", fix
        )
    return Check("FHIR output", OK, f"{root} is writable")


def checks() -> Iterator[Check]:
    settings = _settings()
    simple: list[Callable[[], Check]] = [
        check_configuration,
        check_database,
        check_dagster,
        check_fhir_packages,
    ]
    for check in simple:
        yield check()
    yield from check_exports()
    yield from check_providers()
    yield check_token_key()
    yield from check_webhooks()
    yield check_fhir_server()
    yield check_output(settings)


@click.command("doctor")
def doctor() -> None:
    """Check the configuration, database, Dagster instance, FHIR packages, export data, provider
    OAuth, token key (and that the stored tokens decrypt with it), webhook secrets, FHIR server
    and output root; exit 1 when any check fails."""
    failed = 0
    for check in checks():
        click.echo(check.line())
        failed += check.status == FAIL
    if failed:
        click.echo(f"{failed} check(s) failed", err=True)
        raise click.exceptions.Exit(1)
