"""No secret the product is given reaches Dagster: not the GraphQL answers the UI shows, not the
run storage.

The real deployment on this machine: PostgreSQL (pgserver) with two roles whose passwords are
enforced, the record store migrated by `ohx db upgrade`, moto's S3 server for the FHIR output, a
real FHIR server taking OAuth client credentials, then the code location as `dagster api grpc`,
`dagster-webserver` and `dagster-daemon` as separate processes, each in its own directory. Every
secret a production deployment has is in their environment: both database passwords, the token
key, every provider's OAuth client secret and webhook secret, the FHIR server's client secret and
bearer token, the S3 secret key. A run is launched through GraphQL and goes through to the FHIR
server and the bucket (so the secrets were really used). Then:

- the GraphQL answers the UI's pages are made of (resources with their configured values and
  the environment variables they use, the launchpad's default config, the run with its config and
  tags, its event log with every metadata entry, the assets' materializations, sensor ticks,
  the instance and workspace pages) hold none of the secret values;
- neither does any row of any table of the Dagster instance's PostgreSQL database, nor the
  record store's, nor any file under any service's DAGSTER_HOME.
"""

from __future__ import annotations

import secrets as random_secrets
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from deployment_harness import (
    FINISHED,
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
    scan_files,
    tool,
)
from fhir_test_server import FhirServer
from s3_test_server import ACCESS_KEY, REGION, S3Server

pytestmark = pytest.mark.skipif(
    not all(tool(n) for n in ("dagster", "dagster-webserver", "dagster-daemon", "ohx")),
    reason="the dagster, dagster-webserver, dagster-daemon and ohx console scripts of this "
    "virtualenv are needed (pip install -e '.[test]')",
)

TODAY = datetime.now(UTC).date()
DAY = TODAY - timedelta(days=1)
LOCATION = {"repositoryLocationName": "ohx", "repositoryName": "__repository__"}

METADATA = """
fragment metadata on MetadataEntry {
  label description __typename
  ... on TextMetadataEntry { text }
  ... on UrlMetadataEntry { url }
  ... on PathMetadataEntry { path }
  ... on JsonMetadataEntry { jsonString }
  ... on MarkdownMetadataEntry { mdStr }
  ... on IntMetadataEntry { intRepr }
  ... on FloatMetadataEntry { floatValue }
  ... on BoolMetadataEntry { boolValue }
  ... on TimestampMetadataEntry { timestamp }
}
"""
RESOURCES = """
query($repo: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $repo) {
    __typename
    ... on ResourceDetailsList { results {
      name description resourceType
      configFields { name description defaultValueAsJson configType { key description } }
      configuredValues { key value type }
      nestedResources { name type }
    } }
  }
  utilizedEnvVarsOrError(repositorySelector: $repo) {
    __typename ... on EnvVarWithConsumersList { results { envVarName envVarConsumers { name } } }
  }
}
"""
LAUNCHPAD = """
query($job: PipelineSelector!) {
  runConfigSchemaOrError(selector: $job) { __typename ... on RunConfigSchema { rootDefaultYaml } }
  pipelineOrError(params: $job) {
    __typename ... on Pipeline { name description tags { key value } }
  }
}
"""
RUN = (
    METADATA
    + """
query($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run {
    runId status runConfigYaml tags { key value } assetSelection { path }
    stats { ... on RunStatsSnapshot { stepsSucceeded stepsFailed materializations } }
  } }
  logsForRun(runId: $runId, limit: 10000) { __typename ... on EventConnection { events {
    __typename
    ... on MessageEvent { message level stepKey }
    ... on DisplayableEvent { label description metadataEntries { ...metadata } }
    ... on ExecutionStepFailureEvent { error { message stack } }
    ... on RunFailureEvent { pipelineRunFailureError: error { message stack } }
    ... on EngineEvent { engineError: error { message stack } }
  } } }
}
"""
)
ASSETS = (
    METADATA
    + """
{
  assetNodes { assetKey { path } description metadataEntries { ...metadata } }
  assetsOrError { __typename ... on AssetConnection { nodes {
    key { path }
    assetMaterializations(limit: 20) { runId partition metadataEntries { ...metadata } }
    assetObservations(limit: 20) { runId metadataEntries { ...metadata } }
  } } }
}
"""
)
INSTANCE = """
{
  instance { info runLauncher { name } runQueuingSupported
    daemonHealth { allDaemonStatuses { daemonType healthy lastHeartbeatErrors { message } } } }
  workspaceOrError { ... on Workspace { locationEntries { name
    displayMetadata { key value }
    locationOrLoadError { __typename ... on RepositoryLocation { repositories { name
      displayMetadata { key value } } } }
  } } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status ticks(limit: 20) { status skipReason cursor
      error { message stack } } } }
    schedules { name scheduleState { status ticks(limit: 20) { status skipReason
      error { message stack } } } }
  } } }
}
"""


class OAuthFhirServer(FhirServer):
    """The local FHIR test server, taking this deployment's client secret for its token."""

    def __init__(self, client_secret: str) -> None:
        super().__init__()
        self.client_secret = client_secret

    def token_response(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        if form.get("client_secret") == [self.client_secret]:
            form = {**form, "client_secret": ["s3cret"]}  # the base server's own secret
        return super().token_response(form)


def secret() -> str:
    return f"sx{random_secrets.token_hex(16)}"


def test_no_secret_reaches_graphql_or_the_run_storage(
    pg_server: object, s3: S3Server, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    values = {
        "OHX_DATABASE_PASSWORD": secret(),
        "DAGSTER_DATABASE_PASSWORD": secret(),
        "OHX_TOKEN_KEY": Fernet.generate_key().decode(),
        "OHX_OURA_CLIENT_SECRET": secret(),
        "OHX_OURA_VERIFICATION_TOKEN": secret(),
        "OHX_WITHINGS_CLIENT_SECRET": secret(),
        "OHX_WITHINGS_CALLBACK_TOKEN": secret(),
        "OHX_GOOGLE_HEALTH_CLIENT_SECRET": secret(),
        "OHX_POLAR_ACCESSLINK_CLIENT_SECRET": secret(),
        "OHX_DEXCOM_CLIENT_SECRET": secret(),
        "OHX_SIMULATED_WEBHOOK_SECRET": secret(),
        "OHX_FHIR_CLIENT_SECRET": secret(),
        "OHX_FHIR_BEARER_TOKEN": secret(),
        "AWS_SECRET_ACCESS_KEY": secret(),
    }
    ohx_url = database(pg_server, f"ohx_{suffix}", values["OHX_DATABASE_PASSWORD"], f"ohx_{suffix}")
    dagster_url = database(
        pg_server,
        f"dagster_{suffix}",
        values["DAGSTER_DATABASE_PASSWORD"],
        f"dagster_{suffix}",
        driver="psycopg2",
    )
    assert password_is_enforced(ohx_url) and password_is_enforced(dagster_url)
    fhir = OAuthFhirServer(values["OHX_FHIR_CLIENT_SECRET"])
    bucket = f"ohx-fhir-{suffix}"
    s3.create_bucket(bucket)

    product = {
        "OHX_DATABASE_URL": ohx_url,
        "DAGSTER_PG_URL": dagster_url,
        "OHX_SOURCES": "simulated,oura,withings,google_health,polar_accesslink,dexcom",
        "OHX_SIMULATED_USERS": "2",
        "OHX_PARTITIONS_START": (TODAY - timedelta(days=2)).isoformat(),
        "OHX_FHIR_DIR": f"s3://{bucket}/fhir",
        "OHX_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "OHX_OURA_CLIENT_ID": "oura-app",
        "OHX_WITHINGS_CLIENT_ID": "withings-app",
        "OHX_GOOGLE_HEALTH_CLIENT_ID": "google-app",
        "OHX_POLAR_ACCESSLINK_CLIENT_ID": "polar-app",
        "OHX_DEXCOM_CLIENT_ID": "dexcom-app",
        "OHX_OAUTH_REDIRECT_BASE": "https://receiver.example.org",
        "OHX_FHIR_SERVER_URL": fhir.url,
        "OHX_FHIR_TOKEN_URL": fhir.token_url,
        "OHX_FHIR_CLIENT_ID": "ohx-client",
        **{k: v for k, v in values.items() if not k.endswith("_DATABASE_PASSWORD")},
    }
    services = Services(tmp_path)
    grpc_port, web_port = free_port(), free_port()
    homes = {name: dagster_home(tmp_path / "homes" / name) for name in ("code", "web", "daemon")}

    def env(role: str) -> dict[str, str]:
        return base_env(
            **product,
            DAGSTER_HOME=str(homes.get(role, tmp_path / "homes" / "code")),
            OHX_HOME=str(tmp_path / "ohx-home" / role),
        )

    try:
        services.run("migrate", [str(tool("ohx")), "db", "upgrade"], env("migrate"))
        services.start(
            "codeserver",
            [str(tool("dagster")), "api", "grpc", "-h", "127.0.0.1", "-p", str(grpc_port),
             "-m", "ohx_dagster.definitions"],
            env("code"),
        )  # fmt: skip
        services.wait("the code server", lambda: grpc_serving(grpc_port), timeout=120)
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(WORKSPACE.format(port=grpc_port))
        services.start(
            "webserver",
            [str(tool("dagster-webserver")), "-h", "127.0.0.1", "-p", str(web_port),
             "-w", str(workspace)],
            env("web"),
        )  # fmt: skip
        url = f"http://127.0.0.1:{web_port}"
        services.wait("the webserver", lambda: http_ok(f"{url}/server_info"), timeout=120)
        graphql = GraphQL(url)
        services.wait("the code location", graphql.location_loaded, timeout=60)
        # Only this run: no sensor backfills, no scheduled runs; the webhook sensor keeps
        # ticking (its ticks are in the storage scanned below).
        graphql.stop_instigators(keep={"webhook_sensor"})
        services.run("seed", [sys.executable, "-m", "ohx_dagster.cli.seed"], env("seed"))
        services.start(
            "daemon", [str(tool("dagster-daemon")), "run", "-w", str(workspace)], env("daemon")
        )

        partition = f"{DAY.isoformat()}|simulated"
        launched = graphql(
            """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
                 __typename ... on LaunchRunSuccess { run { runId } }
                 ... on PythonError { message stack } } }""",
            {
                "params": {
                    "selector": {**LOCATION, "jobName": "sync_partition"},
                    "runConfigData": {},
                    "executionMetadata": {
                        "tags": [
                            {"key": "dagster/partition", "value": partition},
                            {"key": "dagster/partition/day", "value": DAY.isoformat()},
                            {"key": "dagster/partition/source", "value": "simulated"},
                        ]
                    },
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def finished() -> str | None:
            status = graphql(
                "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                {"id": run_id},
            )["runOrError"]["status"]
            return status if status in FINISHED else None

        status = services.wait("the run", finished, timeout=240)
        assert status == "SUCCESS", services.logs()

        # The secrets were used: the FHIR server issued a token for the client secret and holds
        # the partition's resources; the bucket holds its files.
        assert fhir.token_requests >= 1 and fhir.resources
        assert any(k.endswith("manifest.json") for k in s3.objects(bucket, "fhir/"))

        repo = {"repositoryLocationName": "ohx", "repositoryName": "__repository__"}
        resources = graphql(RESOURCES, {"repo": repo})
        graphql(LAUNCHPAD, {"job": {**LOCATION, "pipelineName": "sync_partition"}})
        graphql(RUN, {"runId": run_id})
        graphql(ASSETS)
        graphql(INSTANCE)

        leaked_graphql = find_secrets("\n".join(graphql.answers), values)
        stored, rows = scan_database(dagster_url, values)
        # The scan reads every row: it finds the run's id where the run storage keeps it.
        found_run, _ = scan_database(dagster_url, {"run": run_id})
        record_store, _ = scan_database(ohx_url, values)
        files = {
            name: scan_files(home, values)
            for name, home in homes.items()
            if scan_files(home, values)
        }
    finally:
        services.stop()
        fhir.stop()

    assert rows > 100 and "public.runs" in found_run and "public.event_logs" in found_run
    leaks = {
        "GraphQL answers": leaked_graphql,
        "Dagster run storage (table: secrets)": stored,
        "record store (table: secrets)": record_store,
        "files under each DAGSTER_HOME": files,
    }
    assert not any(leaks.values()), f"secrets found: { {k: v for k, v in leaks.items() if v} }"
    # The resource page shows the variables' names where the secrets go.
    configured = {
        r["name"]: {v["key"]: (v["type"], v["value"]) for v in r["configuredValues"]}
        for r in resources["allTopLevelResourceDetailsOrError"]["results"]
    }
    assert configured["store"]["database_url"] == ("ENV_VAR", "OHX_DATABASE_URL")
    assert configured["fhir_server"]["client_secret"] == ("ENV_VAR", "OHX_FHIR_CLIENT_SECRET")
    assert configured["fhir_server"]["bearer_token"] == ("ENV_VAR", "OHX_FHIR_BEARER_TOKEN")
