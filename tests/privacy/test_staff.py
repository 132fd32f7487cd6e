"""Staff credentials (ohx_dagster/privacy/staff.py): `ohx staff add/list/remove`, tokens stored only
as
hashes, audited, and the receiver's /auth/staff that the deployment's nginx asks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from ohx_dagster.cli import cli
from ohx_dagster.config.receiver import WebhookSecrets
from ohx_dagster.privacy import audit, staff
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.connect import ConnectConfig
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.schema import staff_tokens
from ohx_dagster.storage.store import RecordStore


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordStore]:
    for name in list(os.environ):
        if name.startswith("OHX_") and name != "OHX_FHIR_PACKAGES":
            monkeypatch.delenv(name)
    url = f"sqlite:///{tmp_path / 'ohx.db'}"
    monkeypatch.setenv("OHX_DATABASE_URL", url)
    monkeypatch.setenv("OHX_HOME", str(tmp_path / "home"))
    record_store = RecordStore(url, migrate_schema=True)
    yield record_store
    record_store.dispose()


def ohx(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_add_prints_the_token_once_and_stores_only_its_hash(store: RecordStore) -> None:
    added = ohx("staff", "add", "j.doe")
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert staff.TOKEN.fullmatch(token), token
    _, token_id, secret = token.split("_", 2)
    with store.read() as conn:
        (row,) = conn.execute(sa.select(staff_tokens)).all()
    assert (row.name, row.token_id) == ("j.doe", token_id)
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in " ".join(map(str, row))
    assert staff.verify(store, token) == "j.doe"

    listed = ohx("staff", "list")
    assert listed.exit_code == 0 and "j.doe" in listed.stdout and token_id in listed.stdout
    assert secret not in listed.output
    # A second token for the same name: refused, in one line; the first still works.
    assert "j.doe" in one_error_line(ohx("staff", "add", "j.doe"))
    assert "name=" in one_error_line(ohx("staff", "add", "Bad Name"))
    assert staff.verify(store, token) == "j.doe"

    other = ohx("staff", "add", "a.smith").stdout.strip()
    removed = ohx("staff", "remove", "j.doe")
    assert removed.exit_code == 0 and "removed j.doe" in removed.stdout
    assert staff.verify(store, token) is None and staff.verify(store, other) == "a.smith"
    assert "j.doe" in one_error_line(ohx("staff", "remove", "j.doe"))

    rows = [(r.action, r.detail.split(" (")[0]) for r in audit.read(store)]
    assert rows == [
        ("staff-add", "staff j.doe"),
        ("staff-add", "staff a.smith"),
        ("staff-remove", "staff j.doe"),
    ]
    assert all(
        r.actor.startswith(("ohx staff add (", "ohx staff remove (")) for r in audit.read(store)
    )
    assert not any(secret in r.detail for r in audit.read(store))


@pytest.mark.parametrize(
    "bent",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the secret one character off
        lambda t: t.replace("ohxs_", "ohxs_0", 1)[:-1],  # another id
        lambda t: t + "x",
        lambda t: "",
        lambda t: t.upper(),
    ],
)
def test_a_bent_token_authenticates_no_one(store: RecordStore, bent) -> None:
    token = staff.add(store, "j.doe", actor="test")
    assert staff.verify(store, bent(token)) is None


def test_auth_staff_answers_the_proxy(store: RecordStore) -> None:
    token = staff.add(store, "j.doe", actor="test")
    config = ConnectConfig.from_env({"OHX_OAUTH_REDIRECT_BASE": "https://ohx.example.org"})
    assert config is not None
    with (
        serve_in_thread(create_app(store, WebhookSecrets(), connect=config)) as url,
        httpx.Client(timeout=10) as http,
    ):
        ok = http.get(f"{url}/auth/staff", headers={"Authorization": f"Bearer {token}"})
        assert (ok.status_code, ok.headers["x-ohx-staff"]) == (204, "j.doe")
        basic = http.get(f"{url}/auth/staff", auth=("j.doe", token))
        assert (basic.status_code, basic.headers["x-ohx-staff"]) == (204, "j.doe")
        for refused in (
            http.get(f"{url}/auth/staff"),
            http.get(f"{url}/auth/staff", auth=("a.smith", token)),
            http.get(f"{url}/auth/staff", headers={"Authorization": f"Bearer {token}x"}),
            http.get(f"{url}/auth/staff", headers={"Authorization": "Basic %%%"}),
        ):
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Basic realm=")
            assert "x-ohx-staff" not in refused.headers
        staff.remove(store, "j.doe", actor="test")
        assert http.get(f"{url}/auth/staff", auth=("j.doe", token)).status_code == 401


def test_doctor_names_the_retired_shared_token(store: RecordStore, monkeypatch) -> None:
    from ohx_dagster.cli import doctor

    def connect_routes() -> doctor.Check:
        return next(c for c in doctor.check_webhooks() if c.name == "connect routes")

    assert connect_routes().status == doctor.SKIP  # no public URL: /connect is not mounted
    monkeypatch.setenv("OHX_OAUTH_REDIRECT_BASE", "https://ohx.example.org")
    assert connect_routes().status == doctor.OK
    monkeypatch.setenv("OHX_CONNECT_TOKEN", "staff-token-0123456789")
    line = connect_routes().line()
    assert line.startswith("FAIL connect routes: OHX_CONNECT_TOKEN is retired"), line
    assert "ohx staff add" in line and "unset" in line
