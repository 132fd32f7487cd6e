"""A real S3-compatible HTTP server on 127.0.0.1 for the object-storage tests: moto's server mode
(`moto_server`), started as its own process in its own working directory, in memory, stopped
when the context ends. Every request it serves is in its log (`requests()`), as
`METHOD /bucket/key STATUS`, which is how a test sees the order of the writes.

Credentials: moto accepts any; the tests give the product made-up ones through the standard
AWS_* variables, exactly as a deployment gives it real ones.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ACCESS_KEY = "AKIAOHXTESTMOTO00000"
SECRET_KEY = "ohx-moto-secret-key-0000000000000000000000"
REGION = "us-east-1"

_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log: Path

    def env(self) -> dict[str, str]:
        """What a process of the product needs to reach this store."""
        return {
            "OHX_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self):
        """A boto3 client of this server: the tests' own view of the bucket."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under the prefix, read back over HTTP: key -> bytes."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                found[item["Key"]] = body
        return found

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request served so far, in order."""
        text = _ANSI.sub("", self.log.read_text(errors="replace"))
        return [(m["method"], m["path"], int(m["status"])) for m in _REQUEST.finditer(text)]


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """moto_server on a free port of 127.0.0.1; waits until it answers. Skips the test, saying
    why, where moto is not installed (it is pinned in requirements.lock: scripts/bootstrap)."""
    import pytest

    pytest.importorskip(
        "moto.server",
        reason="moto's S3 server is not installed (pinned in requirements.lock and pyproject's "
        "[test] extra: run scripts/bootstrap)",
    )
    workdir = Path(tempfile.mkdtemp(prefix="ohx-moto-"))
    port = free_port()
    log = workdir / "moto.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = S3Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"{server.endpoint}/moto-api/", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 60 s") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
