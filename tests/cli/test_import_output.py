"""What a person sees of `ohx import apple-health` (the real export, the real `ohx` in its own
process): a few lines. Progress is one line that rewrites itself in a terminal and is gone at the
end; in a pipe there is none. Before: 61 lines in a pipe (two tables), 103 in an 80-column
terminal (the tables wrapped)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

OHX = Path(sys.executable).parent / "ohx"
SUMMARY = (
    "Imported ",
    "Zone: Asia/Jerusalem",
    "Days (UTC): 2017-01-22 .. 2017-11-06, 289 days; 210 days changed in the store.",
    "Records: 6,380 (blood_glucose 35 of which 2 implausible (kept), heart_rate 2,177, "
    "sleep 87, steps 3,980, weight 40, workout 61).",
    "Skipped: 39 kinds (4,622 in all) this product does not sync: --verbose lists them and why.",
    # Where the FHIR is: the import published every day (apple_health is not in scripts/dev's
    # OHX_SOURCES, so no Dagster run would).
    "FHIR: 210 days (2017-01-22 .. 2017-11-06) published by this import to ",
)  # no "Retention:" line: the export spans under a year (ohx_dagster/privacy/retention.py)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHX_", "COLUMNS"))}
    env.update(OHX_HOME=str(home), OHX_ERASURE_SALT="test-salt-0123456789abcdef", TERM="xterm")
    return env


def _export(shared_data: Path) -> Path:
    return shared_data / "apple-health" / "export.xml"


def test_an_import_in_a_pipe_is_its_summary(tmp_path: Path, shared_data: Path) -> None:
    result = subprocess.run(
        [str(OHX), "import", "apple-health", str(_export(shared_data))],
        env=_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(SUMMARY), lines
    for line, start in zip(lines, SUMMARY, strict=True):
        assert line.startswith(start), (line, start)
    assert result.stderr == ""  # no progress where nobody watches it


def test_an_import_in_a_terminal_rewrites_one_progress_line(
    tmp_path: Path, shared_data: Path
) -> None:
    """Under a pseudo-terminal (80 columns, as a new terminal opens): the progress line is drawn
    and erased in place (carriage return, erase line), never scrolled; what stays is the
    summary, each line wrapped at 80 columns at most."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real ohx on the terminal
        env = {**_env(tmp_path / "home"), "COLUMNS": "80", "LINES": "24"}
        os.execve(str(OHX), [str(OHX), "import", "apple-health", str(_export(shared_data))], env)
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child has ended (EIO on Linux)
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    text = seen.decode()
    assert "\r\x1b[2K" in text  # a line erased in place: the progress, at its end
    assert "synced to 2017-11-06" not in text.split("Imported ")[-1]  # gone before the summary
    # Rows on the screen: every line break, plus the long summary lines wrapped at 80 columns.
    printed = text.split("Imported ")[-1]
    wrapped = sum(max(1, -(-len(_visible(line)) // 80)) for line in printed.splitlines())
    # 6 lines; the zone and publishing notes wrap (under 16 rows at 80 columns, was 103).
    assert text.count("\n") <= 10 and wrapped <= 16, text
    for start in SUMMARY[1:]:
        assert start in text


def _visible(line: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", line)
