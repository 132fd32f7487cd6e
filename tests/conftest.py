"""Shared fixtures: the real data in ../shared/data, a real PostgreSQL (pgserver), record stores.

Nothing here is a stub: SQLite stores are files in tmp_path, PostgreSQL is a real server started
once per session from PyPI's `pgserver`, and every test database is created fresh.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from provider_api_server import FakeApi, fake_api
from s3_test_server import S3Server, running_s3_server

from faults.backends import create_database
from ohx_dagster.storage.store import RecordStore

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository as a sibling of shared/, exactly like the working tree.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def erasure_salt(monkeypatch: pytest.MonkeyPatch) -> str:
    """A known salt for every test (subjects in the audit log, tombstones), so that no test
    writes the installation's salt file under the home directory
    (ohx_dagster/privacy/identity.py)."""
    salt = "test-salt-0123456789abcdef"
    monkeypatch.setenv("OHX_ERASURE_SALT", salt)
    return salt


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets (Fitabase, Apple Health, Polar H10); a missing folder is a failure."""
    assert (SHARED_DATA / "fitabase" / "heartrate_seconds_merged.csv").is_file(), (
        f"real data not found at {SHARED_DATA}: clone the repo next to shared/"
    )
    return SHARED_DATA


@pytest.fixture(scope="session")
def fitabase_dir(shared_data: Path) -> Path:
    return shared_data / "fitabase"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A real PostgreSQL server for the whole session (pgserver: about a second to start).

    Its data directory is not under pytest's tmp root: run as root, pgserver runs PostgreSQL as
    a `pgserver` user and opens the parent folders to it, and every other pytest session on the
    machine resets /tmp/pytest-of-<user> to 0700 again, locking the server out of its own files.
    """
    import pgserver

    data = Path(tempfile.mkdtemp(prefix="ohx-pg-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: object) -> str:
    """The server's admin URL, with the driver this product pins (psycopg2)."""
    url = sa.make_url(pg_server.get_uri())  # type: ignore[attr-defined]
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


_DATABASE_NUMBERS = itertools.count(1)


@pytest.fixture
def pg_database_url(pg_url: str) -> str:
    """A fresh, empty database on the session's server, as a plain postgresql:// URL."""
    return create_database(pg_url, f"ohx_test_{next(_DATABASE_NUMBERS)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh record-store URL: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ohx.db'}"
    return request.getfixturevalue("pg_database_url")


@pytest.fixture
def store(store_url: str) -> Iterator[RecordStore]:
    """A RecordStore on SQLite and on PostgreSQL (tests using it run once per backend), its
    schema migrated as `ohx db upgrade` does."""
    record_store = RecordStore(store_url, migrate_schema=True)
    yield record_store
    record_store.dispose()


# -- shared by the provider API, token and connect tests -------------------------------------------


@pytest.fixture
def token_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Fernet key in OHX_TOKEN_KEY: provider tokens are encrypted at rest with it."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("OHX_TOKEN_KEY", key)
    return key


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[RecordStore]:
    """A RecordStore on a SQLite file in tmp_path (for tests that need one backend only)."""
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    yield record_store
    record_store.dispose()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """A provider API test server on 127.0.0.1 (tests/support/provider_api_server.py)."""
    with fake_api() as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 as a real HTTP server process, one per test module."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket; the product reaches the server through OHX_S3_ENDPOINT_URL and AWS_*."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    name = f"ohx-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


# -- test tiers ---------------------------------------------------------------------------------
#
# Every test gets one tier marker, so a developer can run the fast loop (`scripts/test --fast`:
# the unit tier) while CI and the README run everything. The tier follows what a test needs:
# whole processes, servers or Dagster runs (e2e), a browser, the fault suite, PostgreSQL, any
# other database or server (integration); none of these: unit.

E2E_MODULES = frozenset({
    "test_dagster_cli_errors", "test_deploy_kit", "test_deployment", "test_dev",
    "test_image_packages", "test_materialize", "test_cli_fitabase", "test_pseudonymous_runs",
    "test_readme_commands", "test_realtime_e2e", "test_realtime_process", "test_secret_exposure",
    "test_webserver", "test_fhir_cli", "test_bulk_export",
})  # fmt: skip
FAULT_MODULES = frozenset({"test_faults", "test_invariants"})
POSTGRES_FIXTURES = frozenset({"pg_server", "pg_url", "pg_database_url", "postgres"})
# A database, a server, files of its own or a CLI run: integration.
SERVER_FIXTURES = frozenset({
    "store", "store_url", "sqlite_store", "api", "s3", "bucket", "cli_store", "world",
    "sqlite_world", "server", "simulated", "fresh", "tmp_path", "tmp_path_factory",
})  # fmt: skip
INTEGRATION_MODULES = frozenset({
    "test_cli", "test_cli_first_hour", "test_identity", "test_import_bounds",
    "test_import_output", "test_import_publish", "test_inbox", "test_shards", "test_sync",
    "test_webhooks_app", "test_webhooks_serve", "test_webhooks_subscriptions",
})  # fmt: skip
TIERS = ("unit", "integration", "postgres", "e2e", "browser", "faults")


def tier_of(item: pytest.Item) -> str:
    module = item.path.stem
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    params = list(callspec.params.values()) if callspec is not None else []
    if module == "test_browser":
        return "browser"
    if module in FAULT_MODULES:
        return "faults"
    if module in E2E_MODULES:
        return "e2e"
    if names & POSTGRES_FIXTURES or "postgresql" in params:
        return "postgres"
    if names & SERVER_FIXTURES or module in INTEGRATION_MODULES:
        return "integration"
    return "unit"


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the {tier} tier (tests/conftest.py tier_of)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item)))
