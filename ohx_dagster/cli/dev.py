"""`ohx dev`: the product on its embedded default, as scripts/dev runs it.

1. The three ports are checked first: one that is taken stops everything at once, naming the port
   and its variable (OHX_UI_PORT, default 3000: the Dagster UI; OHX_WEBHOOK_PORT, default 8787:
   the webhook receiver; OHX_FHIR_API_PORT, default 8790: the FHIR API).
2. OHX_HOME (default ./.ohx) and DAGSTER_HOME (default $OHX_HOME/dagster, given deploy/dagster.yaml
   on first start); the simulated users are seeded into the store.
3. The webhook receiver on 127.0.0.1:$OHX_WEBHOOK_PORT (awaited until /healthz answers), the FHIR
   API on 127.0.0.1:$OHX_FHIR_API_PORT (awaited until /fhir/metadata answers), the simulator
   posting a signed webhook every minute, and `dagster dev` (webserver, daemon, code server) on
   127.0.0.1:$OHX_UI_PORT; "UI at http://..." once the webserver answers.

What it says: a line per step from the first second, then one line per run start and end (read
from the Dagster instance) and the warnings and errors of the services and runs, one line each.
Everything the services print goes to $OHX_HOME/logs/<service>.log (`dagster dev` logs at its
`--log-level info` there, runs' event logs included); `--verbose` shows those lines on the console
too.

Stopping: SIGINT (Ctrl-C) or SIGTERM. Each service runs in a process group of its own, so a
Ctrl-C in the terminal reaches `ohx dev` only (no service prints its own KeyboardInterrupt
traceback); `ohx dev` then sends SIGTERM to each service (`dagster dev` shuts its webserver, daemon
and code server down itself), waits for them, ends what is left of each group (SIGTERM, then
SIGKILL), and prints one line: "stopped".

The simulated webhook secret is a fresh random one per start, handed to the receiver and the
simulator through their environment only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click

from ohx_dagster.config.cli import PORTS, CliSettings
from ohx_dagster.core.errors import ConfigError, OhxError

HOST: Final = "127.0.0.1"
RECEIVER_START_S: Final = 60.0
# `dagster dev` imports the code location before the webserver answers: minutes on a busy machine.
UI_START_S: Final = 900.0
STOP_WAIT_S: Final = 30.0
GROUP_WAIT_S: Final = 10.0
TICK_S: Final = 0.5
LINE_CHARS: Final = 240
UNREADABLE_POLLS: Final = 10
CHECKOUT: Final = Path(__file__).resolve().parents[2]
# deploy/dagster.yaml and workspace.yaml of the checkout, for an installed wheel that has neither
# (tests/cli/test_cli.py keeps these copies equal to the files).
DAGSTER_YAML: Final = """\
# Dagster instance for the embedded default (SQLite under $DAGSTER_HOME), written by `ohx dev`.
run_queue:
  max_concurrent_runs: 4
  tag_concurrency_limits:
    - key: "dagster/partition/source"
      value:
        applyLimitPerUniqueValue: true
      limit: 2
telemetry:
  enabled: false
"""
WORKSPACE_YAML: Final = """\
load_from:
  - python_module:
      module_name: ohx_dagster.definitions
      location_name: ohx
"""


def port_taken(port: int, host: str = HOST) -> bool:
    """Whether a server could not listen on host:port (bound the way uvicorn and the Dagster
    webserver bind: SO_REUSEADDR, so a port in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def check_ports(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """The ports by variable; a taken one (or a bad value) is a ConfigError naming both."""
    ports = CliSettings.from_env(env).ports()
    names = sorted(ports)
    for n, first in enumerate(names):
        for second in names[n + 1 :]:
            if ports[first] == ports[second]:
                raise ConfigError(
                    f"{first} and {second} are both {ports[first]}: give them different ports"
                )
    for name, _, what in PORTS:
        if port_taken(ports[name]):
            raise ConfigError(
                f"port {ports[name]} ({name}, {what}) is taken on {HOST}: stop what listens "
                f"there, or set {name} to a free port"
            )
    return ports


def _instance_files(dagster_home: Path) -> Path:
    """DAGSTER_HOME with its dagster.yaml; the workspace file `dagster dev` loads."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.is_file():
        shipped = CHECKOUT / "deploy" / "dagster.yaml"
        if shipped.is_file():
            shutil.copyfile(shipped, config)
        else:
            config.write_text(DAGSTER_YAML)
    workspace = CHECKOUT / "workspace.yaml"
    if workspace.is_file():
        return workspace
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    return workspace


def _dagster() -> str:
    beside = Path(sys.executable).parent / "dagster"
    found = str(beside) if beside.is_file() else shutil.which("dagster")
    if found is None:
        raise ConfigError(
            "the `dagster` command is not installed in this environment (pip install dagster)"
        )
    return found


def say(line: str) -> None:
    click.echo(line)


# -- stopping ----------------------------------------------------------------------------------


class Stopper:
    """SIGINT and SIGTERM set a flag the loops read: no KeyboardInterrupt unwinds half-way
    through a start or a stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._received)

    def _received(self, number: int, frame: object) -> None:
        self.signal = number

    @property
    def requested(self) -> bool:
        return self.signal is not None


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group(group: int, seconds: float) -> bool:
    """Whether every process of the group is gone within `seconds`."""
    deadline = time.monotonic() + seconds
    while _group_alive(group):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal_group(group: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, number)


# -- the services and their logs ------------------------------------------------------------------

ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A service's warning or error line: Dagster's "... - WARNING - ...", uvicorn's "WARNING:  ...",
# the simulator's "WARNING name: ...".
PROBLEM: Final = re.compile(r"(^| - )(WARNING|ERROR|CRITICAL)(:| - | )")
# Dagster's notes on its own API's stability (a parameter in beta, in preview), logged as
# warnings whenever a process loads the code location: for Dagster's developers, not for the
# person running the product. They stay in the log file.
DAGSTER_NOTES: Final = re.compile(r"\b(Beta|Preview|Supersession)Warning: ")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    offset: int = 0
    partial: str = ""

    def new_lines(self) -> list[str]:
        """The lines its log file gained since the last call."""
        try:
            with self.log.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        text = self.partial + data.decode(errors="replace")
        *lines, self.partial = text.split("\n")
        return [ANSI.sub("", line).rstrip() for line in lines]


@dataclass
class Services:
    env: Mapping[str, str]
    logs: Path
    verbose: bool
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"\n== {datetime.now(UTC).isoformat()} {' '.join(command)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches `ohx dev` only
            )
        service = Service(name, process, log)
        service.offset = log.stat().st_size
        self.started.append(service)
        return process

    def echo(self) -> None:
        """Warnings and errors of every service's log, one line each (every line: --verbose)."""
        for service in self.started:
            for line in service.new_lines():
                problem = PROBLEM.search(line) and not DAGSTER_NOTES.search(line)
                if line and (self.verbose or problem):
                    text = line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"
                    say(f"{service.name}: {text}")

    def exited(self) -> Service | None:
        return next((s for s in self.started if s.process.poll() is not None), None)

    def stop(self) -> None:
        """SIGTERM to each service (`dagster dev` stops its webserver, daemon and code server),
        a wait for them, then whatever is left in their process groups: SIGTERM, then SIGKILL."""
        for service in reversed(self.started):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for service in reversed(self.started):
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        for service in self.started:
            group = service.process.pid
            if _group_alive(group):
                _signal_group(group, signal.SIGTERM)
                if not _wait_group(group, GROUP_WAIT_S):
                    _signal_group(group, signal.SIGKILL)
                    _wait_group(group, GROUP_WAIT_S)
        self.echo()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class Stopped(Exception):
    """A signal asked `ohx dev` to stop while it was starting."""


def _await(
    what: str,
    url: str,
    service: subprocess.Popen[bytes],
    services: Services,
    stopper: Stopper,
    seconds: float,
    setting: str,
) -> None:
    """Until `url` answers 200: the service's warnings shown as they come, a stop honoured."""
    deadline = time.monotonic() + seconds
    while not _answers(url):
        services.echo()
        if stopper.requested:
            raise Stopped
        code = service.poll()
        if code is not None:
            raise OhxError(
                f"{what} exited with code {code} before it served {HOST} ({setting}): "
                f"see {services.logs}"
            )
        if time.monotonic() >= deadline:
            raise OhxError(
                f"{what} did not answer on {url} ({setting}) within {seconds:.0f} s: "
                f"see {services.logs}"
            )
        time.sleep(TICK_S)


# -- runs ----------------------------------------------------------------------------------------


def _seconds(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    from ohx_dagster.core.times import words

    return f" in {words(timedelta(seconds=round(max(0.0, end - start))))}"


class RunWatcher:
    """One line per run start and end, read from the Dagster instance `dagster dev` runs on."""

    def __init__(self, dagster_home: Path, since: datetime) -> None:
        import warnings

        from dagster import DagsterInstance

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.instance = DagsterInstance.from_config(str(dagster_home))
        self.since = since
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.failures = 0  # polls in a row that could not read the instance

    def watch(self) -> None:
        """poll, where a read that fails (the instance's SQLite busy with the daemon's writes) is
        tried again at the next tick; the tenth failure in a row is said once, in one line."""
        try:
            self.poll()
        except Exception as exc:  # whatever the instance's storage raises
            self.failures += 1
            if self.failures == UNREADABLE_POLLS:
                reason = " ".join(str(exc).split())[:LINE_CHARS]
                say(f"ohx dev: cannot read the runs from the Dagster instance: {reason}")
        else:
            self.failures = 0

    def close(self) -> None:
        self.instance.dispose()

    def poll(self) -> None:
        from dagster import DagsterRunStatus, RunsFilter

        ended = {
            DagsterRunStatus.SUCCESS: "succeeded",
            DagsterRunStatus.FAILURE: "failed",
            DagsterRunStatus.CANCELED: "canceled",
        }
        records = self.instance.get_run_records(
            filters=RunsFilter(updated_after=self.since - timedelta(seconds=2)),
            order_by="update_timestamp",
            ascending=True,
        )
        for record in records:
            run = record.dagster_run
            self.since = max(self.since, record.update_timestamp)
            if run.run_id in self.ended:
                continue
            running = run.status in (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)
            if (running or run.status in ended) and run.run_id not in self.started:
                self.started.add(run.run_id)
                say(f"run {run.run_id[:8]} started: {self._describe(run)}")
            if run.status in ended:
                self.ended.add(run.run_id)
                took = _seconds(record.start_time, record.end_time)
                line = f"run {run.run_id[:8]} {ended[run.status]}{took}"
                if run.status == DagsterRunStatus.FAILURE:
                    line += f": {self._error(run.run_id)}"
                say(line)

    @staticmethod
    def _describe(run: Any) -> str:
        tags = run.tags
        part = tags.get("dagster/partition")
        if part is None and "dagster/asset_partition_range_start" in tags:
            part = (
                f"{tags['dagster/asset_partition_range_start']}.."
                f"{tags['dagster/asset_partition_range_end']}"
            )
        how = ", ".join(
            v
            for v in (
                tags.get("ohx/strategy"),
                "backfill" if tags.get("dagster/backfill") else None,
                tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name"),
            )
            if v
        )
        job = "assets" if run.job_name == "__ASSET_JOB" else run.job_name  # a backfill's
        return " ".join(t for t in (job, part, f"({how})" if how else "") if t)

    def _error(self, run_id: str) -> str:
        from dagster import DagsterEventType

        for kind in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
            for entry in self.instance.all_logs(run_id, of_type=kind):
                event = entry.dagster_event
                data = getattr(event, "event_specific_data", None)
                error = getattr(data, "error", None)
                # Dagster wraps what the step raised ("Error occurred while executing op"): the
                # innermost cause is what went wrong.
                while getattr(error, "cause", None) is not None:
                    error = error.cause  # type: ignore[union-attr]
                text = getattr(error, "message", None) or (event.message if event else None)
                if text:
                    text = " ".join(text.split())
                    return text if len(text) <= LINE_CHARS else text[: LINE_CHARS - 1] + "…"
        return "see the run in the UI"


# -- the command ---------------------------------------------------------------------------------


@click.command("dev")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also show every line the services and runs log (they always go to $OHX_HOME/logs).",
)
def dev(verbose: bool) -> None:
    """Run the product locally: seed the simulated users, then the webhook receiver, the FHIR
    API, the simulator and `dagster dev` (UI + daemon). Ctrl-C (or SIGTERM) stops everything.

    \b
    The console shows each step, one line per run start and end, and warnings and errors;
    everything the services log is in $OHX_HOME/logs (--verbose: on the console too).

    \b
    OHX_UI_PORT       Dagster UI port (default 3000)
    OHX_WEBHOOK_PORT  webhook receiver port (default 8787)
    OHX_FHIR_API_PORT FHIR API port (default 8790; docs/fhir-api.md)
    OHX_HOME          data directory (default ./.ohx)
    DAGSTER_HOME      Dagster instance (default $OHX_HOME/dagster)
    """
    ports = check_ports()  # first: a taken port stops everything before anything starts
    stopper = Stopper()

    from ohx_dagster.cli.seed import seed
    from ohx_dagster.config.environment import child_environment
    from ohx_dagster.config.receiver import SIMULATED_SECRET
    from ohx_dagster.config.settings import Settings
    from ohx_dagster.providers.registry import CATALOG

    home, dagster_home = CliSettings.from_env().dev_homes(Path.cwd())
    env = child_environment(
        {
            "OHX_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "PYTHONUNBUFFERED": "1",  # log lines reach the files (and the console) as they happen
            SIMULATED_SECRET: secrets.token_urlsafe(32),
        }
    )
    settings = Settings.from_env(env, catalog=CATALOG)
    dagster = _dagster()
    workspace = _instance_files(dagster_home)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"ohx dev: data in {home}, logs in {logs}")
    say(seed(settings))
    ui, webhooks = ports["OHX_UI_PORT"], ports["OHX_WEBHOOK_PORT"]
    fhir_port = ports["OHX_FHIR_API_PORT"]
    python = sys.executable
    services = Services(env, logs, verbose)
    watcher: RunWatcher | None = None
    failed: str | None = None
    since = datetime.now(UTC)
    try:
        receiver = services.start(
            "webhooks",
            [python, "-m", "ohx_dagster.receiver.cli", "--host", HOST, "--port", str(webhooks)],
        )
        _await(
            "the webhook receiver",
            f"http://{HOST}:{webhooks}/healthz",
            receiver,
            services,
            stopper,
            RECEIVER_START_S,
            "OHX_WEBHOOK_PORT",
        )
        say(f"webhook receiver at http://{HOST}:{webhooks}")
        fhir_api = services.start(
            "fhir-api",
            [str(Path(python).parent / "ohx"), "fhir", "serve", "--host", HOST,
             "--port", str(fhir_port)],
        )  # fmt: skip
        _await(
            "the FHIR API",
            f"http://{HOST}:{fhir_port}/fhir/metadata",
            fhir_api,
            services,
            stopper,
            RECEIVER_START_S,
            "OHX_FHIR_API_PORT",
        )
        say(f"FHIR API at http://{HOST}:{fhir_port}/fhir (clients: `ohx fhir clients add`)")
        services.start(
            "simulator",
            [
                python,
                "-m",
                "ohx_dagster.receiver.simulator",
                "--url",
                f"http://{HOST}:{webhooks}",
                "--every",
                "60",
            ],
        )
        say("starting Dagster: webserver, daemon, code server ...")
        ui_process = services.start(
            "dagster",
            [
                dagster,
                "dev",
                "-w",
                str(workspace),
                "-h",
                HOST,
                "-p",
                str(ui),
                "--log-level",
                "info",
            ],
        )
        _await(
            "the Dagster webserver",
            f"http://{HOST}:{ui}/server_info",
            ui_process,
            services,
            stopper,
            UI_START_S,
            "OHX_UI_PORT",
        )
        say(f"UI at http://{HOST}:{ui}")
        watcher = RunWatcher(dagster_home, since)
        while not stopper.requested:
            watcher.watch()
            services.echo()
            gone = services.exited()
            if gone is not None:
                failed = f"{gone.name} exited with code {gone.process.returncode}: see {gone.log}"
                break
            time.sleep(TICK_S)
    except Stopped:
        pass
    except OhxError as exc:
        failed = " ".join(str(exc).split())
    finally:
        services.stop()
        if watcher is not None:
            watcher.watch()  # runs that ended while the services stopped
            watcher.close()
        say("stopped")
    if failed:
        raise OhxError(failed)
