"""`ohx dev` as a person runs it: the installed command in its own process, on free ports and a
temp OHX_HOME, with real `dagster dev`, receiver and simulator. Heavy (a whole Dagster deployment
each): two tests.

- Started, it says what it does from its first line; once the webserver answers it says
  "UI at http://..."; SIGINT (Ctrl-C) stops every process it started: none is left (psutil, by
  the processes seen and by every process of the machine carrying this OHX_HOME), its last line
  is "stopped", and nothing it printed is a traceback.
- A session that runs 3 runs prints at most 10 lines per run (a line per run start and end, the
  steps, warnings and errors); everything else is in $OHX_HOME/logs. SIGTERM stops it like
  SIGINT.

Every wait is on a condition (a line printed, an HTTP answer, a process ending) with a generous
timeout: the machine's speed decides how long the test takes, never whether it passes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

OHX = Path(sys.executable).parent / "ohx"
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900
RUNS_TIMEOUT_S = 1800
STOP_TIMEOUT_S = 180
RUN_ENDED = re.compile(r"^run [0-9a-f]{8} (succeeded|failed|canceled)\b")
RUN_STARTED = re.compile(r"^run [0-9a-f]{8} started: ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Session:
    """A running `ohx dev` and the lines it printed so far (stdout and stderr, in order)."""

    process: subprocess.Popen[str]
    home: Path
    ui: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ended: bool = False  # its output is closed: it printed all it will

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, check: Callable[[list[str]], bool], what: str, timeout: float) -> None:
        """Until `check` holds for the lines printed (re-checked on every new line and every
        few seconds, for conditions outside the output)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not check(list(self.lines)):
                assert not self.ended, f"ohx dev ended before {what}:\n{self.output()}"
                left = deadline - time.monotonic()
                assert left > 0, f"waited {timeout:.0f} s for {what}:\n{self.output()}"
                self.changed.wait(timeout=min(left, 2.0))

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def processes_of_this_home(self) -> list[psutil.Process]:
        """Every process of the machine whose environment names this session's OHX_HOME."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get("OHX_HOME") == str(self.home):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found


def running(processes: list[psutil.Process]) -> list[str]:
    left = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return left


def ui_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/server_info", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Session]]:
    sessions: list[Session] = []

    def start(**settings: str) -> Session:
        home = tmp_path / "home"
        dagster_home = home / "dagster"
        dagster_home.mkdir(parents=True)
        # One run at a time: this machine is shared (the product's default is 4).
        (dagster_home / "dagster.yaml").write_text(
            "run_queue:\n  max_concurrent_runs: 1\ntelemetry:\n  enabled: false\n"
        )
        ui = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OHX_", "DAGSTER_"))}
        env.update(
            OHX_HOME=str(home),
            DAGSTER_HOME=str(dagster_home),
            OHX_UI_PORT=str(ui),
            OHX_WEBHOOK_PORT=str(free_port()),
            OHX_FHIR_API_PORT=str(free_port()),
            OHX_SIMULATED_USERS="1",
            OHX_FHIR_PACKAGES=os.environ.get("OHX_FHIR_PACKAGES", str(REPO / ".fhir-packages")),
            COLUMNS="200",
            **settings,
        )
        process = subprocess.Popen(
            [str(OHX), "dev"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # the test's signals reach `ohx dev` alone
        )
        session = Session(process, home, ui)
        threading.Thread(target=session.read, daemon=True).start()
        sessions.append(session)
        return session

    yield start
    for session in sessions:  # a failed test leaves nothing running either
        if session.process.poll() is None:
            session.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                session.process.wait(timeout=STOP_TIMEOUT_S)
        for proc in session.processes_of_this_home():
            proc.kill()
        if session.process.poll() is None:
            os.killpg(session.process.pid, signal.SIGKILL)
            session.process.wait()


def wait_ready(session: Session) -> str:
    url = f"http://127.0.0.1:{session.ui}"
    session.wait_for(lambda lines: f"UI at {url}" in lines, "the line 'UI at ...'", START_TIMEOUT_S)
    assert ui_answers(url)
    return url


def stop(session: Session, number: int) -> None:
    """Send the signal, wait for `ohx dev` to end; it ends with 0, says "stopped" last, leaves
    no process behind and printed no traceback."""
    seen = session.descendants()
    assert len(seen) >= 5, [p.cmdline() for p in seen]  # receiver, simulator, dagster dev, ...
    session.process.send_signal(number)
    code = session.process.wait(timeout=STOP_TIMEOUT_S)
    session.wait_for(lambda lines: bool(lines) and lines[-1] == "stopped", "'stopped'", 60)
    assert code == 0, session.output()
    assert running(seen) == [], running(seen)
    assert running(session.processes_of_this_home()) == []
    text = "\n".join(session.lines)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert session.lines.count("stopped") == 1


def test_ohx_dev_says_what_it_does_and_ctrl_c_leaves_nothing_running(
    start_dev: Callable[..., Session],
) -> None:
    session = start_dev()
    session.wait_for(lambda lines: bool(lines), "a first line", START_TIMEOUT_S)
    assert session.lines[0].startswith(f"ohx dev: data in {session.home}, logs in ")
    wait_ready(session)
    lines = list(session.lines)
    assert lines.index("starting Dagster: webserver, daemon, code server ...") < len(lines) - 1
    assert any(line.startswith("webhook receiver at http://127.0.0.1:") for line in lines)
    fhir_api = next(line.split()[3] for line in lines if line.startswith("FHIR API at "))
    assert httpx.get(f"{fhir_api}/metadata", timeout=10).json()["fhirVersion"] == "5.0.0"
    stop(session, signal.SIGINT)
    # What the services said is in their log files, not on the console.
    logs = session.home / "logs"
    assert {p.name for p in logs.iterdir()} == {
        "webhooks.log", "fhir-api.log", "simulator.log", "dagster.log",
    }  # fmt: skip
    assert f"127.0.0.1:{session.ui}" in (logs / "dagster.log").read_text()
    assert "Application startup complete" in (logs / "webhooks.log").read_text()


def test_a_dev_session_of_three_runs_is_quiet(start_dev: Callable[..., Session]) -> None:
    session = start_dev()
    wait_ready(session)
    session.wait_for(
        lambda lines: sum(bool(RUN_ENDED.match(line)) for line in lines) >= 3,
        "3 runs to end",
        RUNS_TIMEOUT_S,
    )
    stop(session, signal.SIGTERM)
    lines = session.lines
    runs = sum(bool(RUN_STARTED.match(line)) for line in lines)
    ended = sum(bool(RUN_ENDED.match(line)) for line in lines)
    assert runs >= ended >= 3, session.output()
    assert len(lines) <= 10 * runs, session.output()
    assert not [line for line in lines if "BetaWarning" in line or " - INFO - " in line]
    # Each run's start and end is one line; the services' own lines went to the log files.
    dagster_log = (session.home / "logs" / "dagster.log").read_text()
    assert dagster_log.count("\n") > len(lines)
    assert "RUN_START" in dagster_log or "Started execution of run" in dagster_log


def test_the_console_gets_warnings_and_errors_verbose_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `ohx dev` echoes of a service's log file as it grows (lines completed so far)."""
    from ohx_dagster.cli import dev

    log = tmp_path / "dagster.log"
    quiet = dev.Services({}, tmp_path, verbose=False)
    loud = dev.Services({}, tmp_path, verbose=True)
    for services in (quiet, loud):
        services.started.append(dev.Service("dagster", None, log))  # type: ignore[arg-type]
    log.write_text(
        "\x1b[32m2026-01-01 00:00:00 +0000\x1b[0m - dagster.daemon - \x1b[34mINFO\x1b[0m - tick\n"
        "2026-01-01 00:00:01 +0000 - dagster.daemon.SensorDaemon - WARNING - sensor slow\n"
        "2026-01-01 00:00:02 +0000 - dagster - WARNING - /x.py:1: BetaWarning: in beta\n"
        "ERROR:    uvicorn could not bind\n"
        "WARNING ohx_dagster.receiver.simulator: POST failed\n"
        "2026-01-01 00:00:03 +0000 - dagster - ERROR - half a li"
    )
    quiet.echo()
    assert capsys.readouterr().out.splitlines() == [
        "dagster: 2026-01-01 00:00:01 +0000 - dagster.daemon.SensorDaemon - WARNING - sensor slow",
        "dagster: ERROR:    uvicorn could not bind",
        "dagster: WARNING ohx_dagster.receiver.simulator: POST failed",
    ]
    with log.open("a") as out:
        out.write("ne\n")
    quiet.echo()
    assert capsys.readouterr().out.splitlines() == [
        "dagster: 2026-01-01 00:00:03 +0000 - dagster - ERROR - half a line"
    ]
    loud.echo()
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 6 and shown[0] == (
        "dagster: 2026-01-01 00:00:00 +0000 - dagster.daemon - INFO - tick"
    )


FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in interpreter: `-m venv DIR` makes DIR/bin/python (this script); `-m pip install -r`
# talks as pip does, one requirement at a time, with a warning on stderr.
if [ "$2" = venv ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
if [ "$5" = "--progress-bar" ]; then
  for spec in $(cat requirements.lock); do
    echo "Collecting $spec"; echo "  Using cached ${spec%%==*}.whl (12 kB)"
  done
  echo "Installing collected packages: a, b, c"; echo "Successfully installed a b c"
  echo "WARNING: a warning pip gives" >&2
fi
"""


def test_bootstrap_says_what_it_installs(tmp_path: Path) -> None:
    """scripts/bootstrap on a fresh copy: a line per step and per package, pip's warnings kept;
    a second run (the lock unchanged) installs nothing and says nothing."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "bootstrap"
    script.write_bytes((REPO / "scripts" / "bootstrap").read_bytes())
    fetch = tmp_path / "scripts" / "fetch-fhir-packages"
    fetch.write_text("#!/usr/bin/env bash\n")
    python = tmp_path / "fake-python"
    python.write_text(FAKE_PYTHON)
    for path in (script, fetch, python):
        path.chmod(0o755)
    (tmp_path / "requirements.lock").write_text("a==1.0\nb==2.0\nc==3.0\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    env = {**os.environ, "PYTHON": str(python)}
    first = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    assert lines[0].startswith("bootstrap: creating .venv")
    assert lines.index("  [1/3] a==1.0") < lines.index("  [3/3] c==3.0")
    assert "bootstrap: installing 3 pinned packages from requirements.lock ..." in lines
    assert "WARNING: a warning pip gives" in lines
    assert lines[-1] == "bootstrap: .venv ready"
    again = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_runs_are_one_line_at_start_and_one_at_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run lines of `ohx dev`, read from a real SQLite instance two runs went through."""
    import dagster as dg

    from ohx_dagster.cli import dev

    @dg.op
    def works() -> int:
        return 1

    @dg.op
    def breaks() -> None:
        raise ValueError("the provider answered 418\nwith a second line")

    @dg.job
    def fine() -> None:
        works()

    @dg.job
    def broken() -> None:
        breaks()

    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    since = datetime.now(UTC) - timedelta(seconds=5)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ok = fine.execute_in_process(instance=instance, tags={"ohx/strategy": "push"})
        bad = broken.execute_in_process(instance=instance, raise_on_error=False)
    watcher = dev.RunWatcher(home, since)
    try:
        watcher.watch()
        watcher.watch()  # nothing new: nothing said twice
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"run {ok.run_id[:8]} started: fine (push)"
        assert re.fullmatch(rf"run {ok.run_id[:8]} succeeded in \d+ s", lines[1]), lines
        assert lines[2] == f"run {bad.run_id[:8]} started: broken"
        assert re.fullmatch(
            rf"run {bad.run_id[:8]} failed in \d+ s: .*the provider answered 418 with a second "
            "line.*",
            lines[3],
        ), lines
        assert len(lines) == 4
        # An instance that cannot be read: tried at every tick, said once after ten in a row.
        watcher.instance.dispose()

        def unreadable(**_: object) -> None:
            raise RuntimeError("database is locked")

        watcher.instance.get_run_records = unreadable  # type: ignore[method-assign]
        for _ in range(25):
            watcher.watch()
        assert capsys.readouterr().out.splitlines() == [
            "ohx dev: cannot read the runs from the Dagster instance: database is locked"
        ]
    finally:
        watcher.close()
