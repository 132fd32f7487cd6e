"""nginx for the tests: deploy/nginx/ohx.conf filled in as the nginx image fills it in (envsubst
of the ${OHX_...} it names), inside a minimal main configuration with every path under one
prefix, and a self-signed certificate made with the `cryptography` package."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nginx" / "ohx.conf"
PLACEHOLDER = re.compile(r"\$\{(OHX_[A-Z_]+)\}")


def nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def why_no_nginx() -> str | None:
    """Why nginx cannot run here, or None: Debian's nginx is installed with apt-get when it is
    missing and this is root (as tests/dagster/test_browser.py does for Chromium), so a fresh CI
    machine
    runs the proxy tests instead of skipping them."""
    if nginx():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "nginx is not installed and apt-get cannot install it here (needs root on Debian)"
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
        done = subprocess.run(command, capture_output=True, text=True, env=quiet, check=False)
        if done.returncode != 0:
            return f"could not install nginx ({' '.join(command)}): {done.stderr[-300:]}"
    return None if nginx() else "apt-get installed nginx, but no nginx command was found"


def require_nginx() -> None:
    """Skip the calling test, with the reason, where nginx cannot run (checked when it runs, so
    collecting the tests never installs anything)."""
    import pytest

    reason = why_no_nginx()
    if reason is not None:
        pytest.skip(reason)


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def render(template: str, env: Mapping[str, str]) -> str:
    """What the nginx image's envsubst makes of the file; every placeholder must be set."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(env))
    if missing:
        raise KeyError(f"deploy/nginx/ohx.conf needs {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: env[m.group(1)], template)


def prefix(folder: Path, env: Mapping[str, str], template: str | None = None) -> Path:
    """An nginx prefix: conf/nginx.conf (main context, the http block includes ohx.conf filled
    in), logs/ and temp folders; returns the main configuration's path."""
    conf = folder / "conf"
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "temp").mkdir(exist_ok=True)
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "ohx.conf").write_text(render(CONF.read_text() if template is None else template, env))
    temps = "\n".join(
        f"    {kind}_temp_path {folder / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = conf / "nginx.conf"
    main.write_text(
        f"worker_processes 1;\npid {folder / 'logs' / 'nginx.pid'};\n"
        f"error_log {folder / 'logs' / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n{temps}\n    include {conf / 'ohx.conf'};\n}}\n"
    )
    return main


def check(main: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the configuration."""
    binary = nginx()
    assert binary is not None
    return subprocess.run(
        [binary, "-t", "-p", str(main.parent.parent), "-c", str(main), "-g", "user root;"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def argv(main: Path) -> list[str]:
    """nginx in the foreground on the configuration (workers as root: a test's temp folders)."""
    binary = nginx()
    assert binary is not None
    return [binary, "-p", str(main.parent.parent), "-c", str(main), "-g", "daemon off; user root;"]
