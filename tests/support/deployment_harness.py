"""The product run the way its distributed deployment runs it, on this machine: every role a
separate process in its own working directory (and its own DAGSTER_HOME / OHX_HOME), sharing
nothing but PostgreSQL and the object store. Used by tests/deploy/test_deployment.py and
tests/privacy/test_secret_exposure.py.

- `Services` starts and stops the processes (each in its own process group, so a run worker a
  code server started is stopped with it) and keeps each one's output in a log file.
- `GraphQL` asks the webserver what the UI asks.
- `database` makes a PostgreSQL role with a real password (scram-sha-256 enforced for it on the
  socket) and a database it owns.
- `find_secrets`, `scan_database`, `scan_files`: where a secret value appears.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import psycopg2
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")

# The webserver's and daemon's workspace: the code location is its own gRPC server.
WORKSPACE = """load_from:
  - grpc_server:
      host: 127.0.0.1
      port: {port}
      location_name: ohx
"""
# Step stdout/stderr: production sends them to S3 (S3ComputeLogManager of dagster-aws, in
# deploy/dagster.docker.yaml); dagster-aws is a deployment package, not installed for the tests,
# so here they are not captured rather than written to a disk the services would have to share.
NO_COMPUTE_LOGS = """
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> Path | None:
    """A console script of this virtualenv (dagster, dagster-daemon, ohx, ohx-webhooks)."""
    path = BIN / name
    return path if path.exists() else None


def base_env(**extra: str) -> dict[str, str]:
    """The machine's environment without any product, Dagster or AWS setting of the caller's,
    plus `extra`: each service gets exactly what it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHX_", "DAGSTER_", "AWS_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def dagster_home(root: Path, *, extra_yaml: str = NO_COMPUTE_LOGS) -> Path:
    """A DAGSTER_HOME of its own holding deploy/dagster.postgres.yaml (PostgreSQL run, event
    log and schedule storage from DAGSTER_PG_URL; the default run launcher)."""
    root.mkdir(parents=True, exist_ok=True)
    text = (REPO / "deploy" / "dagster.postgres.yaml").read_text()
    (root / "dagster.yaml").write_text(text + extra_yaml)
    return root


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path
    cwd: Path

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.process.poll()}) ---\n{text[-chars:]}"


@dataclass
class Services:
    """Processes of one deployment, stopped in reverse order of start."""

    root: Path
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Service:
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        service = Service(name, process, log, cwd)
        self.started.append(service)
        return service

    def run(self, name: str, argv: list[str], env: Mapping[str, str], timeout: float = 180):
        """A one-shot step (a migration, a CLI) in its own directory; its output on failure."""
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, (
            f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
        return done

    def logs(self) -> str:
        return "\n".join(s.tail() for s in self.started)

    def check_alive(self) -> None:
        for service in self.started:
            assert service.process.poll() is None, f"{service.name} exited\n{self.logs()}"

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Poll `probe` until it returns something truthy; fail naming `what` with every
        service's log when a service dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = probe()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.logs()}"
            time.sleep(0.5)

    def stop(self) -> None:
        for service in reversed(self.started):
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGTERM)
        for service in reversed(self.started):
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def grpc_serving(port: int) -> bool:
    """The code server answers Dagster's gRPC health check (what `dagster api
    grpc-health-check` asks)."""
    from dagster._grpc.client import DagsterGrpcClient

    try:
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        return client.health_check_query() == "SERVING"
    except Exception:
        return False


@dataclass
class GraphQL:
    url: str
    answers: list[str] = field(default_factory=list)  # every answer's text, for scanning

    def raw(self, query: str, variables: Mapping[str, Any] | None = None) -> dict:
        answer = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            timeout=120,
        )
        self.answers.append(answer.text)
        assert answer.status_code == 200, answer.text[:2000]
        return answer.json()

    def __call__(self, query: str, variables: Mapping[str, Any] | None = None) -> dict:
        body = self.raw(query, variables)
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def location_loaded(self) -> bool:
        data = self(
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        kinds = [e["locationOrLoadError"] for e in entries]
        assert not any(k and k["__typename"] == "PythonError" for k in kinds), kinds
        return bool(kinds) and all(k and k["__typename"] == "RepositoryLocation" for k in kinds)

    def stop_instigators(self, keep: Iterable[str] = ()) -> list[str]:
        """Stop every schedule and sensor but `keep` (as an operator does in the UI); returns
        the names stopped."""
        data = self(
            "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
            "schedules { id name scheduleState { id status } } "
            "sensors { id name sensorState { id status } } } } } }"
        )
        stopped = []
        for repository in data["repositoriesOrError"]["nodes"]:
            for schedule in repository["schedules"]:
                if schedule["name"] in keep:
                    continue
                result = self(
                    "mutation($id: String) { stopRunningSchedule(id: $id) { __typename "
                    "... on PythonError { message } } }",
                    {"id": schedule["scheduleState"]["id"]},
                )
                assert result["stopRunningSchedule"]["__typename"] == "ScheduleStateResult", result
                stopped.append(schedule["name"])
            for sensor in repository["sensors"]:
                if sensor["name"] in keep:
                    continue
                result = self(
                    "mutation($id: String) { stopSensor(id: $id) { __typename "
                    "... on PythonError { message } } }",
                    {"id": sensor["id"]},
                )
                assert result["stopSensor"]["__typename"] == "StopSensorMutationResult", result
                stopped.append(sensor["name"])
        return stopped

    def runs(self, tags: Mapping[str, str] | None = None, statuses: list[str] | None = None):
        variables: dict[str, Any] = {"filter": {}}
        if tags:
            variables["filter"]["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        if statuses:
            variables["filter"]["statuses"] = statuses
        data = self(
            "query($filter: RunsFilter) { runsOrError(filter: $filter) { __typename "
            "... on Runs { results { runId status jobName tags { key value } } } } }",
            variables,
        )
        return data["runsOrError"]["results"]


IN_FLIGHT = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


# -- PostgreSQL ---------------------------------------------------------------------------------


def database(pg_server: Any, role: str, password: str, name: str, *, driver: str = "") -> str:
    """Role `role` with `password` (scram-sha-256, enforced for it on the server's socket) owning
    a new database `name`; returns its URL (postgresql[+driver]://role:password@/name?host=...)."""
    admin = sa.make_url(pg_server.get_uri())
    socket_dir = admin.query["host"]
    connection = psycopg2.connect(dbname=admin.database, user=admin.username, host=socket_dir)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SET password_encryption = 'scram-sha-256'")
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
        cursor.execute(f"CREATE DATABASE {name} OWNER {role}")
        hba = Path(pg_server.pgdata) / "pg_hba.conf"
        line = f"local all {role} scram-sha-256\n"
        text = hba.read_text()
        if line not in text:
            hba.write_text(line + text)  # first match wins: before the server's trust lines
        cursor.execute("SELECT pg_reload_conf()")
    connection.close()
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{role}:{quote(password, safe='')}@/{name}?host={socket_dir}"


def password_is_enforced(url: str) -> bool:
    """A wrong password is refused: the password in `url` is a real credential."""
    parsed = sa.make_url(url)
    try:
        psycopg2.connect(
            dbname=parsed.database,
            user=parsed.username,
            password="not-" + (parsed.password or ""),
            host=parsed.query["host"],
        ).close()
    except psycopg2.OperationalError as exc:
        return "password authentication failed" in str(exc)
    return False


# -- where secrets appear -------------------------------------------------------------------------


def find_secrets(text: str, secrets: Mapping[str, str]) -> list[str]:
    """Names of the secrets whose value (or its URL-encoded form) occurs in `text`."""
    return sorted(
        name for name, value in secrets.items() if value in text or quote(value, safe="") in text
    )


def scan_database(url: str, secrets: Mapping[str, str]) -> tuple[dict[str, list[str]], int]:
    """Every table of every schema of the database, every row as text: {table: secrets found},
    and the number of rows read."""
    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg2"))
    found: dict[str, list[str]] = {}
    rows = 0
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_type = 'BASE TABLE' "
                    "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            ).all()
            for schema, table in tables:
                texts = conn.execute(
                    sa.text(f'SELECT t::text FROM "{schema}"."{table}" AS t')
                ).scalars()
                for text in texts:
                    rows += 1
                    hits = find_secrets(text, secrets)
                    if hits:
                        found.setdefault(f"{schema}.{table}", [])
                        found[f"{schema}.{table}"] = sorted(
                            set(found[f"{schema}.{table}"]) | set(hits)
                        )
    finally:
        engine.dispose()
    return found, rows


def scan_files(root: Path, secrets: Mapping[str, str]) -> dict[str, list[str]]:
    """Every file under `root`: {path: secrets found in its bytes}."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            hits = find_secrets(path.read_bytes().decode("utf-8", "replace"), secrets)
            if hits:
                found[str(path.relative_to(root))] = hits
    return found
