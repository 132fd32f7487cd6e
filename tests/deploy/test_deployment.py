"""The product deployed as Dagster's distributed deployment runs it, on this machine.

Each role is a separate process with its own working directory (and its own DAGSTER_HOME and
OHX_HOME); they share nothing but PostgreSQL and the object store, as the Docker and Kubernetes
deployments in deploy/ do:

    PostgreSQL (pgserver)     two databases, two roles with enforced passwords
    S3 (moto's server mode)   the bucket for the FHIR output
    ohx db upgrade            the schema migration step, before the code location starts
    dagster api grpc          the code location "ohx" (runs are started by it, one process each)
    dagster-daemon run        sensors, the run queue, backfills
    dagster-webserver         the UI's GraphQL API (workspace: the gRPC server)
    ohx-webhooks              the webhook receiver, with the development route configured
    ohx fhir serve            the FHIR API, reading the store and the bucket
    nginx                     deploy/nginx/ohx.conf: TLS (a self-signed certificate), the staff
                              login (auth_request to the receiver's /auth/staff) before the UI
                              and /connect; webhooks pass through it unauthenticated
    dagster job backfill      an operator launching a backfill from another machine

Dagster's instance is deploy/dagster.postgres.yaml (PostgreSQL run, event log and schedule
storage; the queued run coordinator; the default run launcher, which starts runs through the
code server). Two simulated people are connected (`python -m ohx_dagster.cli.seed`); every
schedule and sensor but the webhook sensor and the Bulk Data export sensor is stopped first, so
only what the test sends runs.
A staff member is issued a token (`ohx staff add`): through the proxy, the UI answers 401 without
it and 200 with it, /connect refuses without it (and a token in its URL) and starts a connection
with it; `ohx audit` shows each refusal under the staff member the token names, or "unknown".
Then a signed webhook goes through the proxy, without staff credentials, to the receiver and its
run puts today's FHIR objects into the bucket, and a two-day backfill puts the two days before;
each partition's manifest names exactly the objects of its folder. A clinical system registered
with `ohx fhir clients add` gets a token through the proxy with a signed assertion and finds
each person's Observations in the bucket's objects through the FHIR API, then pulls the same
Observations with `Patient/$export`: the daemon's sensor launches the export's run, whose files
land in the bucket and come back through the proxy. The secrets the
services were given appear in no GraphQL answer and no row of the Dagster database.
"""

from __future__ import annotations

import re
import ssl
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nginx_harness
import orjson
import pytest
from cryptography.fernet import Fernet
from deployment_harness import (
    FINISHED,
    IN_FLIGHT,
    WORKSPACE,
    GraphQL,
    Services,
    base_env,
    dagster_home,
    database,
    find_secrets,
    free_port,
    grpc_serving,
    http_ok,
    password_is_enforced,
    scan_database,
    tool,
)
from s3_test_server import ACCESS_KEY, REGION, S3Server

from ohx_dagster.privacy.subjects import subject_hash
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.receiver.simulator import send_event

TOOLS = ("dagster", "dagster-webserver", "dagster-daemon", "ohx", "ohx-webhooks")
pytestmark = [
    pytest.mark.skipif(
        not all(tool(n) for n in TOOLS),
        reason=f"the console scripts {', '.join(TOOLS)} of this virtualenv are needed "
        "(pip install -e '.[test]')",
    ),
]

USERS = 2


def test_a_webhook_and_a_backfill_reach_the_bucket_through_the_deployed_services(
    pg_server: object, s3: S3Server, tmp_path: Path
) -> None:
    nginx_harness.require_nginx()
    now = datetime.now(UTC)
    today = now.date()
    days = [today - timedelta(days=2), today - timedelta(days=1)]  # the backfill's
    suffix = uuid.uuid4().hex[:8]
    secrets = {
        "OHX_DATABASE_PASSWORD": uuid.uuid4().hex,
        "DAGSTER_DATABASE_PASSWORD": uuid.uuid4().hex,
        "OHX_SIMULATED_WEBHOOK_SECRET": uuid.uuid4().hex,
        "OHX_TOKEN_KEY": Fernet.generate_key().decode(),
        "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex,
        # One salt for every service: the daemon's sensors name people by subject, the runs
        # resolve them (each service has its own OHX_HOME, so no shared salt file).
        "OHX_ERASURE_SALT": uuid.uuid4().hex,
    }
    ohx_url = database(
        pg_server, f"ohx_{suffix}", secrets["OHX_DATABASE_PASSWORD"], f"ohx_{suffix}"
    )
    dagster_url = database(
        pg_server,
        f"dagster_{suffix}",
        secrets["DAGSTER_DATABASE_PASSWORD"],
        f"dagster_{suffix}",
        driver="psycopg2",
    )
    assert password_is_enforced(ohx_url) and password_is_enforced(dagster_url)
    bucket = f"ohx-fhir-{suffix}"
    s3.create_bucket(bucket)
    product = {
        "OHX_DATABASE_URL": ohx_url,
        "DAGSTER_PG_URL": dagster_url,
        "OHX_SOURCES": "simulated",
        "OHX_SIMULATED_USERS": str(USERS),
        "OHX_PARTITIONS_START": days[0].isoformat(),
        "OHX_FHIR_DIR": f"s3://{bucket}/output",
        "OHX_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        **{k: v for k, v in secrets.items() if not k.endswith("_DATABASE_PASSWORD")},
    }
    services = Services(tmp_path)
    homes = {
        name: dagster_home(tmp_path / "homes" / name)
        for name in ("codeserver", "webserver", "daemon", "backfill")
    }

    def env(role: str) -> dict[str, str]:
        extra = {"DAGSTER_HOME": str(homes[role])} if role in homes else {}
        return base_env(**product, **extra, OHX_HOME=str(tmp_path / "ohx-home" / role))

    grpc_port, web_port, receiver_port, fhir_port = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    )
    proxy_port = free_port()
    proxy = f"https://127.0.0.1:{proxy_port}"
    cert, key = nginx_harness.certificate(tmp_path / "tls")
    tls = httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=30)
    # The receiver's connect flow: its public URL is the proxy's; one provider's OAuth app, so
    # /connect has something to start (no call to the provider happens before consent).
    receiver_env = {
        "OHX_OAUTH_REDIRECT_BASE": proxy,
        "OHX_OURA_CLIENT_ID": "oura-client",
        "OHX_OURA_CLIENT_SECRET": uuid.uuid4().hex,
    }
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(WORKSPACE.format(port=grpc_port))
    url = f"http://127.0.0.1:{web_port}"
    receiver = f"http://127.0.0.1:{receiver_port}"
    graphql = GraphQL(url)
    try:
        # 1. The schema, before the code location starts.
        services.run("migrate", [str(tool("ohx")), "db", "upgrade"], env("migrate"))
        # 2. The code location, then what reads it; the receiver beside them.
        services.start(
            "codeserver",
            [str(tool("dagster")), "api", "grpc", "-h", "127.0.0.1", "-p", str(grpc_port),
             "-m", "ohx_dagster.definitions"],
            env("codeserver"),
        )  # fmt: skip
        services.start(
            "receiver",
            [str(tool("ohx-webhooks")), "--host", "127.0.0.1", "--port", str(receiver_port)],
            {**env("receiver"), **receiver_env},
        )
        services.start(
            "fhir-api",
            [str(tool("ohx")), "fhir", "serve", "--host", "127.0.0.1", "--port", str(fhir_port),
             "--public-url", proxy],
            env("fhir-api"),
        )  # fmt: skip
        services.wait("the code server", lambda: grpc_serving(grpc_port), timeout=120)
        services.start(
            "webserver",
            [str(tool("dagster-webserver")), "-h", "127.0.0.1", "-p", str(web_port),
             "-w", str(workspace)],
            env("webserver"),
        )  # fmt: skip
        services.wait("the webserver", lambda: http_ok(f"{url}/server_info"), timeout=120)
        services.wait("the code location in the webserver", graphql.location_loaded, timeout=60)
        # Before the daemon ticks anything: only the webhook sensor runs.
        stopped = graphql.stop_instigators(keep={"webhook_sensor", "fhir_exports"})
        assert "new_user_sensor" in stopped and "hourly_incremental_sync" in stopped
        services.start(
            "daemon", [str(tool("dagster-daemon")), "run", "-w", str(workspace)], env("daemon")
        )
        services.wait("the receiver", lambda: http_ok(f"{receiver}/healthz"), timeout=60)

        # 3a. The authenticating proxy in front of the webserver and the receiver.
        main = nginx_harness.prefix(
            tmp_path / "nginx",
            {
                "OHX_TLS_CERT": str(cert),
                "OHX_TLS_KEY": str(key),
                "OHX_PROXY_PORT": f"127.0.0.1:{proxy_port}",
                "OHX_WEBSERVER_UPSTREAM": f"127.0.0.1:{web_port}",
                "OHX_RECEIVER_UPSTREAM": f"127.0.0.1:{receiver_port}",
                "OHX_FHIR_UPSTREAM": f"127.0.0.1:{fhir_port}",
            },
        )
        checked = nginx_harness.check(main)
        assert checked.returncode == 0, checked.stderr
        services.start("proxy", nginx_harness.argv(main), base_env())

        def proxy_answers() -> bool:
            try:
                return tls.get(f"{proxy}/server_info").status_code == 401
            except httpx.TransportError:
                return False

        services.wait("the proxy", proxy_answers, timeout=60)
        token = services.run("staff", [str(tool("ohx")), "staff", "add", "j.doe"], env("staff"))
        token = token.stdout.strip()
        bearer = {"Authorization": f"Bearer {token}"}
        # The UI and its GraphQL API: 401 with a login prompt, 200 for the staff member.
        for path in ("/", "/server_info", "/runs"):
            refused = tls.get(f"{proxy}{path}")
            assert refused.status_code == 401, (path, refused.status_code)
            assert refused.headers["www-authenticate"].startswith("Basic realm=")
            assert tls.get(f"{proxy}{path}", auth=("j.doe", token)).status_code == 200, path
        assert tls.get(f"{proxy}/", auth=("j.doe", token[:-1] + "x")).status_code == 401
        assert tls.get(f"{proxy}/", auth=("a.smith", token)).status_code == 401
        answer = tls.post(
            f"{proxy}/graphql",
            json={"query": "{ version }"},
            headers={**bearer, "Content-Type": "application/json"},
        )
        assert answer.status_code == 200 and answer.json()["data"]["version"], answer.text
        assert tls.post(f"{proxy}/graphql", json={"query": "{ version }"}).status_code == 401
        # /connect: refused without the token, and with it in the URL; started with it.
        start = f"{proxy}/connect/oura"
        assert tls.get(start, params={"patient": "pat-1"}).status_code == 401
        in_url = tls.get(start, params={"patient": "pat-1", "token": token}, headers=bearer)
        assert in_url.status_code == 400, in_url.text
        started = tls.get(start, params={"patient": "pat-1"}, headers=bearer)
        assert started.status_code == 302, started.text
        consent = httpx.URL(started.headers["location"])
        assert consent.params["client_id"] == "oura-client"
        assert consent.params["redirect_uri"] == f"{proxy}/oauth/oura/callback"
        # Each refusal is in the audit log: under the staff member the token names, else
        # "unknown"; the UI's login prompts (no credentials) are not attempts. Never the token.
        shown = services.run("audit", [str(tool("ohx")), "audit", "--json"], env("staff"))
        entries = orjson.loads(shown.stdout)["entries"]
        refused = [
            (e["action"], e["actor"], e["detail"]) for e in entries if e["outcome"] == "refused"
        ]
        assert any(
            (a, who) == ("connect", "unknown")
            and d.startswith("the proxy's check for GET /connect/oura: no staff credentials")
            for a, who, d in refused
        ), refused
        assert any(
            (a, who) == ("connect", "j.doe")
            and d.startswith("GET /connect/oura: a token in the URL")
            for a, who, d in refused
        ), refused
        assert {who for a, who, _ in refused if a == "sign-in"} == {"j.doe"}, refused
        assert token not in shown.stdout and "pat-1" not in shown.stdout
        # Nothing else of the receiver is reachable from outside.
        assert tls.get(f"{proxy}/auth/staff", headers=bearer).status_code == 404
        # The open paths need no staff login: a callback with a state nobody issued is the
        # receiver's own 400, not the proxy's 401.
        assert tls.get(f"{proxy}/oauth/oura/callback", params={"state": "x"}).status_code == 400

        # 3. People connect (the simulated source's), then a webhook names one of them.
        services.run("seed", [sys.executable, "-m", "ohx_dagster.cli.seed"], env("seed"))
        person, other = SimulatedSource(USERS).discover_users()
        moment = max(now - timedelta(minutes=2), now.replace(hour=0, minute=0, second=0))
        # Through the proxy, without staff credentials: webhooks are signed, not logged in.
        answer = send_event(
            proxy,
            secrets["OHX_SIMULATED_WEBHOOK_SECRET"],
            person.user_id,
            "heart_rate",
            moment,
            client=tls,
        )
        assert answer.status_code == 200, answer.text
        unsigned = tls.post(f"{proxy}/webhooks/simulated", content=b"{}")
        assert unsigned.status_code in (400, 401) and "Basic" not in unsigned.headers.get(
            "www-authenticate", ""
        )

        # 4. An operator's backfill of the two days before, from its own machine.
        partitions = ",".join(f"{day.isoformat()}|simulated" for day in days)
        launched = services.run(
            "backfill",
            [str(tool("dagster")), "job", "backfill", "-w", str(workspace), "-l", "ohx",
             "-j", "sync_partition", "--partitions", partitions, "--noprompt"],
            env("backfill"),
        )  # fmt: skip
        found = re.search(r"Launched backfill job `([^`]+)`", launched.stdout)
        assert found, launched.stdout
        backfill_id = found.group(1)

        def all_done(tags: dict[str, str], count: int):
            def probe():
                runs = graphql.runs(tags)
                if len(runs) == count and all(r["status"] in FINISHED for r in runs):
                    return runs
                return None

            return probe

        webhook_runs = services.wait(
            "the webhook sensor's run",
            all_done({"dagster/sensor_name": "webhook_sensor"}, 1),
            timeout=240,
        )
        backfill_runs = services.wait(
            "the backfill's runs", all_done({"dagster/backfill": backfill_id}, 2), timeout=240
        )
        assert [r["status"] for r in webhook_runs + backfill_runs] == ["SUCCESS"] * 3, (
            services.logs()
        )
        assert graphql.runs(statuses=IN_FLIGHT) == []
        tags = {t["key"]: t["value"] for t in webhook_runs[0]["tags"]}
        assert tags["dagster/partition"] == f"{today.isoformat()}|simulated"
        # The run names its person by salted subject, never by id (issue 19).
        salt = secrets["OHX_ERASURE_SALT"].encode()
        assert "ohx/users" not in tags and person.user_id not in str(tags)
        assert tags["ohx/subjects"] == subject_hash("simulated", person.user_id, salt=salt)

        # 5. A clinical system pulls through the proxy: no staff login, its own token.
        found = fhir_pull(services, env("staff"), tmp_path, tls, proxy, (person, other))
        assert found[person.fhir_patient_id] > 0 and found[other.fhir_patient_id] > 0, found

        leaked_graphql = find_secrets("\n".join(graphql.answers), secrets)
        stored, _ = scan_database(dagster_url, secrets)
        # No run wrote into another service's directory: nothing is shared but PG and S3.
        written = {
            name: sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
            for name, home in homes.items()
        }
    finally:
        tls.close()
        services.stop()

    # 6. The bucket: each partition's folder holds its NDJSON objects and a manifest naming
    # exactly them, with their counts.
    everything = s3.objects(bucket, "output/")
    # A Bulk Data export's files, under exports/<export id>/ (step 5).
    exports = {k: body for k, body in everything.items() if k.startswith("output/exports/")}
    assert len({k.split("/")[2] for k in exports}) == 1 and exports, sorted(exports)
    objects = {k: body for k, body in everything.items() if k not in exports}
    folders = sorted({key.rsplit("/", 1)[0] for key in objects})
    expected = [f"output/{day.isoformat()}/simulated" for day in [*days, today]]
    assert folders == expected, folders
    subjects: dict[str, set[str]] = {}
    for folder in folders:
        files = {k.rsplit("/", 1)[1]: body for k, body in objects.items() if k.startswith(folder)}
        manifest = orjson.loads(files.pop("manifest.json"))
        named = {entry["url"]: entry["count"] for entry in manifest["output"]}
        assert named == {
            f"s3://{bucket}/{folder}/{n}": len(b.splitlines()) for n, b in files.items()
        }
        assert files and all(name.endswith(".ndjson") for name in files)
        resources = [orjson.loads(line) for body in files.values() for line in body.splitlines()]
        subjects[folder] = {
            r["subject"]["reference"] for r in resources if r["resourceType"] == "Observation"
        }
    # The webhook's run published its person only; the backfill published both.
    everyone = {f"Patient/{p.fhir_patient_id}" for p in (person, other)}
    assert subjects[expected[2]] == {f"Patient/{person.fhir_patient_id}"}
    assert subjects[expected[0]] == subjects[expected[1]] == everyone

    assert leaked_graphql == [] and stored == {}, (leaked_graphql, stored)
    assert all(files == ["dagster.yaml"] for files in written.values()), written


def fhir_pull(
    services: Services,
    env: dict[str, str],
    folder: Path,
    tls: httpx.Client,
    proxy: str,
    people: tuple,
) -> dict[str, int]:
    """Register a client system, get a token through the proxy, and count each person's
    Observations the FHIR API finds (in the bucket's objects)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (folder / "ehr.jwks").write_bytes(orjson.dumps({"keys": [{**jwk, "kid": "ehr-1"}]}))
    added = services.run(
        "clients",
        [str(tool("ohx")), "fhir", "clients", "add", "ehr", "--jwks", str(folder / "ehr.jwks"),
         "--scope", "system/Observation.rs"],
        env,
    )  # fmt: skip
    client_id = added.stdout.strip()
    token_url = f"{proxy}/fhir/auth/token"
    assertion = jwt.encode(
        {"iss": client_id, "sub": client_id, "aud": token_url, "jti": uuid.uuid4().hex,
         "exp": int(datetime.now(UTC).timestamp()) + 240},
        key, algorithm="ES384", headers={"kid": "ehr-1"},
    )  # fmt: skip
    unauthenticated = tls.get(f"{proxy}/fhir/Observation", params={"patient": "x"})
    assert unauthenticated.status_code == 401, unauthenticated.text
    assert unauthenticated.json()["resourceType"] == "OperationOutcome"  # not the staff login
    answer = tls.post(token_url, data={
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion, "scope": "system/Observation.rs",
    })  # fmt: skip
    assert answer.status_code == 200, answer.text
    bearer = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    found = {}
    for person in people:
        search = tls.get(f"{proxy}/fhir/Observation", headers=bearer,
                         params={"patient": person.fhir_patient_id, "_count": "1"})  # fmt: skip
        assert search.status_code == 200, search.text
        found[person.fhir_patient_id] = search.json()["total"]
        assert search.json()["link"][0]["url"].startswith(f"{proxy}/fhir/Observation?")
    # Bulk Data: the daemon's fhir_exports sensor launches the export's run, which writes to the
    # bucket; the files come back through the proxy, the same Observations as the search found.
    kicked = tls.get(f"{proxy}/fhir/Patient/$export", params={"_type": "Observation"},
                     headers={**bearer, "Accept": "application/fhir+json",
                              "Prefer": "respond-async"})  # fmt: skip
    assert kicked.status_code == 202, kicked.text
    status = kicked.headers["Content-Location"]
    assert status.startswith(f"{proxy}/fhir/bulk-status/")
    deadline = time.monotonic() + 180
    while (polled := tls.get(status, headers=bearer)).status_code == 202:
        assert time.monotonic() < deadline, ("the export did not finish", services.logs())
        time.sleep(2)
    assert polled.status_code == 200, polled.text
    exported: dict[str, int] = {}
    for entry in polled.json()["output"]:
        assert entry["url"].startswith(f"{proxy}/fhir/bulk-files/")
        body = tls.get(entry["url"], headers=bearer)
        assert body.status_code == 200, body.text
        for line in body.content.splitlines():
            reference = orjson.loads(line)["subject"]["reference"].removeprefix("Patient/")
            exported[reference] = exported.get(reference, 0) + 1
    assert exported == found, (exported, found)
    return found
