"""Every command of the README's `bash` blocks runs as written, in the README's order, in a fresh
copy of the working tree.

The copy holds what a clone would (`git ls-files`: tracked and untracked-but-not-ignored files,
so uncommitted work is checked too) beside a `shared` folder (the real data sets the README
imports). Its `.venv` and `.fhir-packages` are links to this checkout's: they are the caches
`scripts/bootstrap` builds from `requirements.lock` and the pinned HL7 packages, and building them
again would add minutes and downloads without checking anything the README says (the link is
only made when this checkout's `.venv` matches the lock, so bootstrap in the copy changes
nothing). HOME, OHX_HOME and DAGSTER_HOME start empty; `.venv/bin` is not on PATH until a block
activates it.

- Long-running commands (`scripts/dev`) are started, checked ready (the Dagster UI answers and
  serves the `ohx` code location, the webhook receiver answers /healthz), then stopped with Ctrl-C
  (SIGINT to the process group), which must end them cleanly. The ports are free ones given
  through OHX_UI_PORT, OHX_WEBHOOK_PORT and OHX_FHIR_API_PORT, the variables the README names, so
  the test never collides with another instance on the machine.
- `scripts/test` is not run: it runs this test suite, this test included (recursion).
- The PostgreSQL block gets `DAGSTER_PG_URL` (the README says to set it) for a database of the
  test's own PostgreSQL server.
- Each other block runs in one bash (its exports and `source` carry over to its next lines), with
  `set -eo pipefail`, and must succeed; a failure names the command and shows its output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LONG_RUNNING = ("scripts/dev",)
NOT_RUN = {"scripts/test": "it runs the whole test suite, this test included (recursion)"}
BLOCK_TIMEOUT_S = 600
READY_TIMEOUT_S = 240
STOP_TIMEOUT_S = 90


# -- reading the README ----------------------------------------------------------------------------


def fences(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, blank and comment lines left out."""
    found: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.strip()[:-1].strip() + " "
            continue
        found.append(pending + line.strip())
        pending = ""
    assert not pending, f"a continuation line ends the block: {pending!r}"
    return found


def runnable_blocks() -> list[list[str]]:
    return [commands(body) for info, body in fences(README.read_text()) if info == "bash"]


def program(command: str) -> str:
    """The command's program, after any leading VAR=value assignments."""
    words = command.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    return words[0] if words else ""


def test_the_readme_marks_which_blocks_run() -> None:
    """`bash` blocks run (this test), `text` blocks are examples; nothing else looks like shell,
    so no command escapes the test by its block's label."""
    blocks = fences(README.read_text())
    labels = {info for info, _ in blocks}
    assert labels <= {"bash", "text"}, labels
    runnable = runnable_blocks()
    assert len(runnable) >= 4 and all(runnable)
    every = [c for block in runnable for c in block]
    assert "scripts/dev" in [program(c) for c in every]
    assert any(c.startswith("dagster job backfill -w workspace.yaml") for c in every)
    assert any('cp deploy/dagster.postgres.yaml "$DAGSTER_HOME/dagster.yaml"' in c for c in every)
    # A long-running command stands alone in its block: the test starts and stops it.
    for block in runnable:
        if any(program(c) in LONG_RUNNING for c in block):
            assert len(block) == 1, block


def test_commands_join_continuation_lines_and_skip_comments() -> None:
    body = "# a comment\nA=1 \\\n  dagster x --y '1|2'\n\nohx status  # inline\n"
    assert commands(body) == ["A=1 dagster x --y '1|2'", "ohx status  # inline"]
    assert program("A=1 B=2 dagster x") == "dagster"


# -- a fresh copy ----------------------------------------------------------------------------------


def lock_digest(folder: Path) -> str:
    """What scripts/bootstrap writes to .venv/.lock-sha256 for this folder's lock files."""
    done = subprocess.run(
        "sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1",
        shell=True,
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stamp = REPO / ".venv" / ".lock-sha256"
    if not stamp.is_file() or stamp.read_text().strip() != lock_digest(REPO):
        pytest.fail(
            ".venv does not match requirements.lock and pyproject.toml: run scripts/bootstrap "
            "(scripts/test does) before this test"
        )
    workspace = tmp_path_factory.mktemp("fresh")
    target = workspace / "main"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not source.is_file():  # deleted in the working tree
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)
    assert lock_digest(target) == stamp.read_text().strip()
    (target / ".venv").symlink_to(REPO / ".venv")
    if (REPO / ".fhir-packages").is_dir():
        (target / ".fhir-packages").symlink_to(REPO / ".fhir-packages")
    (workspace / "shared").symlink_to(REPO.parent / "shared")
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(clone: Path, pg_database_url: str) -> dict[str, str]:
    """A new user's shell: nothing of this machine's OHX or Dagster settings, an empty HOME, the
    venv not activated."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OHX_", "DAGSTER_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    path = [p for p in base.get("PATH", "").split(os.pathsep) if not p.endswith("/.venv/bin")]
    home = clone.parent / "home"
    home.mkdir(exist_ok=True)
    return {
        **base,
        "PATH": os.pathsep.join(path),
        "HOME": str(home),
        "COLUMNS": "200",
        # As the README says to set it: naming the driver.
        "DAGSTER_PG_URL": sa.make_url(pg_database_url)
        .set(drivername="postgresql+psycopg2")
        .render_as_string(hide_password=False),
        "OHX_UI_PORT": str(free_port()),
        "OHX_WEBHOOK_PORT": str(free_port()),
        "OHX_FHIR_API_PORT": str(free_port()),
    }


# -- running -----------------------------------------------------------------------------------


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:]


def ui_serves_the_code_location(url: str) -> bool:
    query = (
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { location { name } } } } }"
    )
    try:
        answer = httpx.post(f"{url}/graphql", json={"query": query}, timeout=10)
        nodes = answer.json()["data"]["repositoriesOrError"].get("nodes") or []
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False
    return any(n["location"]["name"] == "ohx" for n in nodes)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def run_long(command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
    """Start, wait until the UI and the receiver are ready, stop with Ctrl-C."""
    ui = f"http://127.0.0.1:{env['OHX_UI_PORT']}"
    receiver = f"http://127.0.0.1:{env['OHX_WEBHOOK_PORT']}/healthz"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (answers(receiver) and ui_serves_the_code_location(ui)):
            assert process.poll() is None, f"`{command}` exited early:\n{tail(log)}"
            assert time.monotonic() < deadline, f"`{command}` not ready in time:\n{tail(log)}"
            time.sleep(1)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in its terminal
        code = process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert code in (0, 130, -signal.SIGINT), f"`{command}` ended with {code}:\n{tail(log)}"
    text = log.read_text(errors="replace")
    assert "simulated users:" in text and "UI at http://127.0.0.1:" in text, tail(log)
    assert text.rstrip().endswith("stopped") and "Traceback" not in text, tail(log)


def run_block(block: list[str], cwd: Path, env: dict[str, str], log: Path) -> str:
    script = ["set -eo pipefail"]
    for number, command in enumerate(block):
        script += [f"echo '@@ command {number}' >&2", command]
    with log.open("wb") as out:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
    text = log.read_text(errors="replace")
    if done.returncode != 0:
        started = re.findall(r"^@@ command (\d+)$", text, re.MULTILINE)
        failed = block[int(started[-1])] if started else block[0]
        pytest.fail(f"README command failed ({done.returncode}): {failed}\n{tail(log)}")
    assert "Traceback" not in text, tail(log)
    return text


# Settings that would let the running Dagster publish the 2016 and 2017 examples itself.
DAGSTER_SCOPE = r"\bOHX_(SOURCES|PARTITIONS_START)="


def examples_published(home: Path) -> None:
    """A day of each README import example has a manifest naming its Observations, Patient and
    Provenance."""
    for day, source in (("2016-04-02", "fitabase"), ("2017-11-06", "apple_health")):
        manifest = json.loads((home / "fhir" / day / source / "manifest.json").read_text())
        kinds = {entry["type"] for entry in manifest["output"]}
        assert {"Observation", "Patient", "Provenance"} <= kinds, (day, source, kinds)


def test_every_readme_command_runs_from_a_fresh_copy(clone: Path, env: dict[str, str]) -> None:
    logs = clone.parent / "logs"
    logs.mkdir(exist_ok=True)
    ran: list[str] = []
    not_run: list[str] = []
    for number, block in enumerate(runnable_blocks()):
        log = logs / f"block-{number}.log"
        if any(program(c) in LONG_RUNNING for c in block):
            run_long(block[0], clone, env, log)
            ran.append(block[0])
            continue
        todo = [c for c in block if program(c) not in NOT_RUN]
        not_run += [c for c in block if program(c) in NOT_RUN]
        if todo:
            output = run_block(todo, clone, env, log)
            ran += todo
            if any(program(c) == "ohx" and "status" in c for c in todo):
                assert "sim-001" in output  # the people scripts/dev seeded
            if any(c.startswith("ohx import") for c in todo):
                # The import examples, published under the dev defaults: no command so far
                # (scripts/dev's included) gave Dagster their sources or an earlier partition,
                # so no run did; the imports published their days themselves, and said where.
                assert not {"OHX_SOURCES", "OHX_PARTITIONS_START"} & set(env)
                assert not [c for c in ran if re.search(DAGSTER_SCOPE, c)], ran
                assert output.count("published by this import to") == 2, output
                examples_published(clone / ".ohx")
    assert [program(c) for c in not_run] == ["scripts/test"]
    assert len(ran) >= 20
    # What the commands left behind is what the README says they do.
    home = clone / ".ohx"
    assert (home / "ohx.db").is_file() and (home / "dagster" / "dagster.yaml").is_file()
    assert (home / "fhir" / "2025-06-01" / "simulated" / "manifest.json").is_file()
    assert (home / "fhir" / "2016-04-12" / "fitabase" / "manifest.json").is_file()
    # The README's import examples, still published after the README's blocks and after the
    # daily_retention schedule's job: retention counts back from an export's newest record, not
    # from today (it deleted these 2016 and 2017 days at once).
    examples_published(home)
    retention = [
        "source .venv/bin/activate",
        "export OHX_HOME=$PWD/.ohx DAGSTER_HOME=$PWD/.ohx/dagster",
        "dagster job execute -m ohx_dagster.definitions -j apply_retention_job",
    ]
    run_block(retention, clone, env, logs / "retention.log")
    examples_published(home)
    assert (home / "dagster-pg" / "dagster.yaml").read_bytes() == (
        REPO / "deploy" / "dagster.postgres.yaml"
    ).read_bytes()
