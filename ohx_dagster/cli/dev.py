"""`ohx dev`: the product on its embedded default, as scripts/dev runs it.

1. The two ports are checked first: one that is taken stops everything at once, naming the port
   and its variable (OHX_UI_PORT, default 3000: the Dagster UI; OHX_WEBHOOK_PORT, default 8787:
   the webhook receiver).
2. OHX_HOME (default ./.ohx) and DAGSTER_HOME (default $OHX_HOME/dagster, given deploy/dagster.yaml
   on first start); the simulated users are seeded into the store.
3. The webhook receiver on 127.0.0.1:$OHX_WEBHOOK_PORT (awaited until /healthz answers), the
   simulator posting a signed webhook every minute, and `dagster dev` (UI + daemon) on
   127.0.0.1:$OHX_UI_PORT. Ctrl-C stops them all.

The simulated webhook secret is a fresh random one per start, handed to the receiver and the
simulator through their environment only.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import click

from ohx_dagster.errors import ConfigError, OhxError

HOST: Final = "127.0.0.1"
PORTS: Final = (
    ("OHX_UI_PORT", 3000, "the Dagster UI"),
    ("OHX_WEBHOOK_PORT", 8787, "the webhook receiver"),
)
RECEIVER_START_S: Final = 30.0
STOP_WAIT_S: Final = 10.0
CHECKOUT: Final = Path(__file__).resolve().parents[2]

# deploy/dagster.yaml and workspace.yaml of the checkout, for an installed wheel that has neither
# (tests/test_cli.py keeps these copies equal to the files).
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


def port_setting(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    text = env.get(name, "").strip() or str(default)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{name}={text!r}: expected a port number 1..65535 (default {default})")
    return int(text)


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
    ports = {name: port_setting(name, default, env) for name, default, _ in PORTS}
    if ports["OHX_UI_PORT"] == ports["OHX_WEBHOOK_PORT"]:
        raise ConfigError(
            f"OHX_UI_PORT and OHX_WEBHOOK_PORT are both {ports['OHX_UI_PORT']}: give them "
            "different ports"
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


def _await_receiver(process: subprocess.Popen, port: int) -> None:
    import httpx

    deadline = time.monotonic() + RECEIVER_START_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise OhxError(
                f"the webhook receiver exited with code {code} before it served 127.0.0.1:{port} "
                "(its message is above): fix what it names and start again"
            )
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise OhxError(
        f"the webhook receiver did not answer on {HOST}:{port} (OHX_WEBHOOK_PORT) within "
        f"{RECEIVER_START_S:.0f} s"
    )


class _Terminated(Exception):
    """SIGTERM reached this process (and, unlike Ctrl-C, not its children)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_dagster(process: subprocess.Popen, *, forward: bool) -> int:
    """`dagster dev` until it ends; on an interrupt, its own shutdown (webserver, daemon) first.
    Ctrl-C reaches the whole process group, `dagster dev` included; a SIGTERM sent to this
    process alone is passed on (`dagster dev` treats SIGTERM as Ctrl-C). A second Ctrl-C kills."""
    if forward and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_WAIT_S * 6)
    except (subprocess.TimeoutExpired, KeyboardInterrupt, _Terminated):
        process.kill()
        return process.wait()


@click.command("dev")
def dev() -> None:
    """Run the product locally: seed the simulated users, then the webhook receiver, the
    simulator and `dagster dev` (UI + daemon). Ctrl-C stops everything.

    \b
    OHX_UI_PORT       Dagster UI port (default 3000)
    OHX_WEBHOOK_PORT  webhook receiver port (default 8787)
    OHX_HOME          data directory (default ./.ohx)
    DAGSTER_HOME      Dagster instance (default $OHX_HOME/dagster)
    """
    ports = check_ports()  # first: a taken port stops everything before anything starts

    from ohx_dagster.seed import seed
    from ohx_dagster.settings import Settings
    from ohx_dagster.webhooks.config import SIMULATED_SECRET

    home = Path(os.environ.get("OHX_HOME") or Path.cwd() / ".ohx").absolute()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").absolute()
    env = {
        **os.environ,
        "OHX_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        SIMULATED_SECRET: secrets.token_urlsafe(32),
    }
    settings = Settings.from_env(env)
    dagster = _dagster()
    workspace = _instance_files(dagster_home)
    click.echo(seed(settings))
    ui, webhooks = ports["OHX_UI_PORT"], ports["OHX_WEBHOOK_PORT"]
    python = sys.executable
    # Handlers, not "ignore": children start with the default dispositions (an `ohx dev` started
    # with SIGINT ignored, as background jobs of scripts are, still stops its children on it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started: list[subprocess.Popen] = []
    code = 0
    try:
        receiver = subprocess.Popen(
            [python, "-m", "ohx_dagster.webhooks.cli", "--host", HOST, "--port", str(webhooks)],
            env=env,
        )
        started.append(receiver)
        _await_receiver(receiver, webhooks)
        started.append(
            subprocess.Popen(
                [
                    python,
                    "-m",
                    "ohx_dagster.webhooks.simulator",
                    "--url",
                    f"http://{HOST}:{webhooks}",
                    "--every",
                    "60",
                ],
                env=env,
            )
        )
        click.echo(f"Dagster UI: http://{HOST}:{ui}  webhook receiver: http://{HOST}:{webhooks}")
        ui_process = subprocess.Popen(
            [dagster, "dev", "-w", str(workspace), "-h", HOST, "-p", str(ui)], env=env
        )
        started.append(ui_process)
        try:
            code = ui_process.wait()
        except KeyboardInterrupt:
            code = _wait_for_dagster(ui_process, forward=False)
        except _Terminated:
            code = _wait_for_dagster(ui_process, forward=True)
    except (KeyboardInterrupt, _Terminated):
        code = 0  # stopped while starting up
    finally:
        _stop(started)
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise click.exceptions.Exit(code)
