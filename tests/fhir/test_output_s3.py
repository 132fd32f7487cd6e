"""The FHIR output on object storage: publish to s3://, read back, collect garbage, deliver from
the bucket, against moto's S3 running as a real HTTP server process
(tests/support/s3_test_server.py).

What must hold with no shared disk: the objects of a partition are written before the manifest
that names them (the server's own request log shows the order); a writer that dies before its
manifest leaves the last version whole and readable; the next publish collects what no manifest
names; a listing made by one process sees what another wrote since; delivery reads the files from
the bucket, not from a disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from fhir_test_server import FhirServer, running_fhir_server
from s3_test_server import S3Server

from ohx_dagster.core.times import to_us, utc_day
from ohx_dagster.fhir.delivery.auth import BearerToken
from ohx_dagster.fhir.delivery.client import FhirClient
from ohx_dagster.fhir.delivery.outbox import enqueue_partition, pending
from ohx_dagster.fhir.output import MANIFEST, FhirOutput
from ohx_dagster.providers.base import Windowed
from ohx_dagster.providers.registry import SUPPORTED_TYPES
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.publish.partitions import partition_dir, partition_key, publish_partition
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.fetch import sync_partition
from ohx_dagster.sync.shards import Shard

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DAY = NOW.date() - timedelta(days=5)
HORIZON = timedelta(hours=1)
SOURCE = Windowed(
    SimulatedSource(3, seed=7, clock=lambda: NOW), SUPPORTED_TYPES["simulated"], HORIZON
)
DIRECTORY = partition_dir(DAY, "simulated")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    record_store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    sync_partition(SOURCE, record_store, DAY, strategy="partition", now=NOW)
    yield record_store
    record_store.dispose()


def publish(store: RecordStore, output: FhirOutput, **kw):
    return publish_partition(
        store, output, provider="simulated", key="simulated", shard=Shard("simulated"),
        day=DAY, scope=None, now=NOW, horizon=HORIZON, **kw,
    )  # fmt: skip


def named_files(manifest: dict) -> set[str]:
    return {entry["url"].rsplit("/", 1)[-1] for entry in manifest["output"]}


def partition_objects(s3: S3Server, bucket: str) -> dict[str, bytes]:
    """The partition's objects as the server holds them: file name -> bytes."""
    prefix = f"fhir/{DIRECTORY}/"
    return {key.removeprefix(prefix): body for key, body in s3.objects(bucket, prefix).items()}


def delete_an_hour(store: RecordStore, user_id: str) -> None:
    """The provider deleted an hour of the person's heart rate: their bucket changes."""
    config = store.user("simulated", user_id)
    hour = to_us(utc_day(DAY).start) + 5 * 3_600_000_000
    store.commit("simulated", user_id, config.zone, SOURCE.fetch_windows(config, {}).batch,
                 replace={"heart_rate": [(hour, hour + 3_600_000_000)]})  # fmt: skip


def test_a_partition_is_published_to_the_bucket_files_first_then_its_manifest(
    s3: S3Server, bucket: str, store: RecordStore, tmp_path: Path
) -> None:
    output = FhirOutput(f"s3://{bucket}/fhir")
    assert not output.local
    report = publish(store, output)
    assert report.buckets

    objects = partition_objects(s3, bucket)
    manifest = orjson.loads(objects.pop(MANIFEST))
    # The manifest names exactly the objects there, by their s3:// URL, with their counts.
    assert named_files(manifest) == set(objects)
    for entry in manifest["output"]:
        name = entry["url"].rsplit("/", 1)[-1]
        assert entry["url"] == f"s3://{bucket}/fhir/{DIRECTORY}/{name}"
        assert entry["count"] == len(objects[name].splitlines())

    # The same partition published to a local folder gives the same files, byte for byte.
    local = FhirOutput(str(tmp_path / "fhir"))
    publish(store, local, force=True)
    assert {n: (tmp_path / "fhir" / DIRECTORY / n).read_bytes() for n in objects} == objects

    # Read back through the product's own reader.
    assert output.manifest(DIRECTORY) == manifest
    resources = [r for n in sorted(objects) for r in output.read_resources(f"{DIRECTORY}/{n}")]
    assert len(resources) == report.resources > 0

    # The server's log: each bucket's files are put, then the manifest that adds that bucket
    # (one per bucket committed), and nothing after the last manifest.
    puts = [path for method, path, status in s3.requests() if method == "PUT" and status == 200]
    prefix = f"/{bucket}/fhir/{DIRECTORY}/"
    order = [p.removeprefix(prefix).split("?")[0] for p in puts if p.startswith(prefix)]
    assert order[-1] == MANIFEST and set(order) - {MANIFEST} == set(objects)
    manifests = [i for i, name in enumerate(order) if name == MANIFEST]
    assert len(manifests) == len(report.buckets)
    for k, position in enumerate(manifests, start=1):
        buckets_before = {name.split(".")[1] for name in order[:position] if name != MANIFEST}
        assert len(buckets_before) == k, f"manifest {k} was put before its bucket's files"


def test_a_writer_that_dies_before_its_manifest_leaves_the_last_version_whole(
    s3: S3Server, bucket: str, store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = FhirOutput(f"s3://{bucket}/fhir")
    publish(store, output)
    first = partition_objects(s3, bucket)
    first_manifest = orjson.loads(first[MANIFEST])

    delete_an_hour(store, "sim-002")

    def die(*args, **kwargs):
        raise RuntimeError("the run worker was killed before its manifest")

    with monkeypatch.context() as patch:
        patch.setattr(FhirOutput, "write_manifest", die)
        with pytest.raises(RuntimeError, match="killed"):
            publish(store, output)
    torn = partition_objects(s3, bucket)
    # The new bucket files are there, but the manifest is the old one, byte for byte, and every
    # file it names is still there and whole: a reader sees the last complete version.
    assert torn[MANIFEST] == first[MANIFEST]
    new_files = set(torn) - set(first)
    assert new_files, "the dying writer put its files before failing"
    for name in named_files(first_manifest):
        assert torn[name] == first[name]
    # A stray object no manifest will name (a copy by hand, a writer from another release).
    s3.client().put_object(Bucket=bucket, Key=f"fhir/{DIRECTORY}/Observation.07.stray.ndjson",
                           Body=b"{}\n")  # fmt: skip

    # The next run publishes the change: a manifest naming exactly the new version. The files of
    # neither manifest (replaced bucket files, the stray object) are young: another publisher's
    # uncommitted files look just so, and they stay until they are older than the grace period.
    report = publish(store, output)
    assert report.buckets
    assert "Observation.07.stray.ndjson" in partition_objects(s3, bucket)
    manifest = orjson.loads(partition_objects(s3, bucket)[MANIFEST])
    assert output.collect_garbage(DIRECTORY, named_files(manifest), grace_s=0) > 0
    after = partition_objects(s3, bucket)
    manifest = orjson.loads(after.pop(MANIFEST))
    assert named_files(manifest) == set(after)
    assert "Observation.07.stray.ndjson" not in after
    replaced = named_files(first_manifest) - named_files(manifest)
    assert replaced and not replaced & set(after)
    assert new_files <= set(after)  # the dead writer's files were this version's: reused


def test_a_listing_sees_what_another_process_wrote_since(s3: S3Server, bucket: str) -> None:
    output = FhirOutput(f"s3://{bucket}/fhir")
    output.write("2026-01-01/simulated/a.ndjson", b"{}\n")
    assert output.names("2026-01-01/simulated") == ["a.ndjson"]
    assert not output.exists("2026-01-01/simulated/b.ndjson")
    # Another writer (here: a plain S3 client) adds and removes objects.
    client = s3.client()
    client.put_object(Bucket=bucket, Key="fhir/2026-01-01/simulated/b.ndjson", Body=b"{}\n")
    client.delete_object(Bucket=bucket, Key="fhir/2026-01-01/simulated/a.ndjson")
    assert output.names("2026-01-01/simulated") == ["b.ndjson"]
    assert output.exists("2026-01-01/simulated/b.ndjson")
    assert not output.exists("2026-01-01/simulated/a.ndjson")
    assert output.delete_tree("2026-01-01") == 1
    assert s3.objects(bucket) == {}


def test_delivery_reads_the_partition_from_the_bucket(
    s3: S3Server, bucket: str, store: RecordStore
) -> None:
    output = FhirOutput(f"s3://{bucket}/fhir")
    report = publish(store, output)
    key = partition_key(DAY, "simulated")
    before = len(s3.requests())
    files = enqueue_partition(store, output, key)
    objects = partition_objects(s3, bucket)
    assert files == len(objects) - 1  # every file but the manifest
    gets = {p for m, p, _ in s3.requests()[before:] if m == "GET"}
    for name in set(objects) - {MANIFEST}:
        assert f"/{bucket}/fhir/{DIRECTORY}/{name}" in gets, f"{name} was not read from S3"
    assert len(pending(store, key)) == report.resources

    server: FhirServer
    with running_fhir_server() as server:
        delivered = FhirClient(server.url, auth=BearerToken(server.token)).deliver(store, key)
        held = [kind for kind, _ in server.resources]
    assert pending(store, key) == []
    assert delivered.sent == report.resources
    assert held.count("Observation") == report.resources_by_type["Observation"] > 0
