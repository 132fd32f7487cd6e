"""`ohx fhir clients`, `ohx fhir groups` and `ohx fhir serve` as staff run them: bad input is
one line naming what was wrong, a client or a group is added, listed and removed (audited), and
the server runs as its own process, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec

from ohx_dagster.cli import cli
from ohx_dagster.privacy import audit
from ohx_dagster.storage.store import RecordStore

OHX = Path(sys.executable).parent / "ohx"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("OHX_") and name not in ("OHX_FHIR_PACKAGES", "OHX_ERASURE_SALT"):
            monkeypatch.delenv(name)
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("OHX_HOME", str(folder))
    RecordStore(f"sqlite:///{folder / 'ohx.db'}", migrate_schema=True).dispose()
    return folder


def ohx(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ohx: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def public_jwks(tmp_path: Path, private: bool = False) -> Path:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key if private else key.public_key(), as_dict=True)
    path = tmp_path / ("private.json" if private else "public.json")
    path.write_bytes(orjson.dumps({"keys": [{**jwk, "kid": "k-1"}]}))
    return path


def test_clients_add_list_remove_and_their_one_line_errors(home: Path, tmp_path: Path) -> None:
    scope = "system/Observation.rs system/Patient.r"
    good = public_jwks(tmp_path)
    assert "private key" in one_error_line(
        ohx(
            "fhir",
            "clients",
            "add",
            "ehr",
            "--jwks",
            str(public_jwks(tmp_path, True)),
            "--scope",
            scope,
        )
    )
    assert "--jwks" in one_error_line(
        ohx(
            "fhir", "clients", "add", "ehr", "--jwks", str(tmp_path / "nope.json"), "--scope", scope
        )
    )
    assert "system/Observation.read" in one_error_line(
        ohx(
            "fhir",
            "clients",
            "add",
            "ehr",
            "--jwks",
            str(good),
            "--scope",
            "system/Observation.read",
        )
    )
    (tmp_path / "garbage.json").write_text("{not json")
    assert "JSON Web Key Set" in one_error_line(
        ohx(
            "fhir",
            "clients",
            "add",
            "ehr",
            "--jwks",
            str(tmp_path / "garbage.json"),
            "--scope",
            scope,
        )
    )
    added = ohx("fhir", "clients", "add", "ehr", "--jwks", str(good), "--scope", scope)
    assert added.exit_code == 0, added.output
    client_id = added.stdout.strip()
    assert client_id.startswith("ohxc-")
    assert "a name no other client has" in one_error_line(
        ohx("fhir", "clients", "add", "ehr", "--jwks", str(good), "--scope", scope)
    )
    listed = ohx("fhir", "clients", "list")
    assert listed.stdout.split("\t")[:3] == ["ehr", client_id, "k-1"]
    assert ohx("fhir", "clients", "remove", "ehr").exit_code == 0
    assert "registered client" in one_error_line(ohx("fhir", "clients", "remove", "ehr"))
    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    actions = [row.action for row in audit.read(store)]
    store.dispose()
    assert actions.count("client-add") == 1 and actions.count("client-remove") == 1


def test_groups_add_list_remove_and_their_one_line_errors(home: Path) -> None:
    from ohx_dagster.fhirapi.groups import cohort
    from ohx_dagster.providers.simulated import SimulatedSource

    store = RecordStore(f"sqlite:///{home / 'ohx.db'}")
    people = SimulatedSource(3).discover_users()
    store.add_users(people)
    patient = people[1].fhir_patient_id
    assert "GROUP" in one_error_line(ohx("fhir", "groups", "add", "a b", "--everyone"))
    assert "exactly one of" in one_error_line(
        ohx("fhir", "groups", "add", "g", "--everyone", "--provider", "oura")
    )
    assert "exactly one of" in one_error_line(ohx("fhir", "groups", "add", "g"))
    assert "--provider='fitbit'" in one_error_line(
        ohx("fhir", "groups", "add", "g", "--provider", "fitbit")
    )
    assert "--patient='nobody'" in one_error_line(
        ohx("fhir", "groups", "add", "g", "--patient", patient, "--patient", "nobody")
    )
    assert ohx("fhir", "groups", "list").stdout.startswith("no groups")
    one = ohx("fhir", "groups", "add", "one", "--patient", patient, "--description", "a study")
    assert one.exit_code == 0 and one.stdout.strip() == "Group/one: 1 people", one.output
    assert ohx("fhir", "groups", "add", "sim", "--provider", "simulated").exit_code == 0
    assert "it exists" in one_error_line(ohx("fhir", "groups", "add", "one", "--everyone"))
    listed = ohx("fhir", "groups", "list").stdout.splitlines()
    assert listed == ["one\t1 people\ta study", "sim\tthe people of simulated\t"]
    assert [c.user_id for c in cohort(store, "one") or []] == [people[1].user_id]
    assert len(cohort(store, "sim") or []) == 3 and cohort(store, "nope") is None
    assert ohx("fhir", "groups", "remove", "one").exit_code == 0
    assert "a group here" in one_error_line(ohx("fhir", "groups", "remove", "one"))
    actions = [row.action for row in audit.read(store)]
    store.dispose()
    assert actions.count("group-add") == 2 and actions.count("group-remove") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_server_runs_as_its_own_process_and_stops_cleanly(home: Path) -> None:
    port = free_port()
    env = {**os.environ, "OHX_HOME": str(home)}
    process = subprocess.Popen(
        [str(OHX), "fhir", "serve", "--port", str(port), "--public-url", "https://fhir.example"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the FHIR API did not start"
                time.sleep(0.2)
        assert answer.status_code == 200
        assert answer.json()["implementation"]["url"] == "https://fhir.example/fhir"
        refused = httpx.get(f"http://127.0.0.1:{port}/fhir/Observation?patient=x")
        assert refused.status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then lets the signal end the process as it would have.
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err
