"""fhir_delivery: the partition's FHIR resources into the outbox, then to the FHIR server.

Runs after fhir_observations. Every attempt (a step retry too) first enqueues the files of the
partition's current output that are not in the outbox yet, read from the output store (a path or
s3://: no shared disk needed), then sends what the server has not acknowledged. Without a
configured server it records "skipped" and touches nothing.
The outbox makes it safe to retry: what the server acknowledged is not sent again, what it did not
stays pending for the next run (see ohx_dagster.fhir.delivery.outbox). A server that stays
unavailable fails the step after its retries, with the outbox's counts in the failure's metadata.

Checks: `outbox_drained` (every resource of the partition's current files acknowledged by the
server with exactly the published body: compared with the partition, never with whatever happens
to be queued) and `server_confirms` (a sample of the delivered resources, searched on the server
by identifier, holds exactly what was sent, once).

A server's error or a mismatch can quote an identifier, which names its person: what the step
logs and reports names the provider's people by their salted subject instead (assets/pseudonyms.py).
Every transaction sent is in the audit log (`export`, actor "dagster run <run id>", one row per
person it held: ohx_dagster/fhir/delivery/client.py); the read-back sample of `server_confirms`
is the same step checking what it sent, not an access of its own.
"""

from typing import TypeVar

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from assets.partitions import BACKFILL_POLICY, days_and_shard
from assets.pseudonyms import Hider
from ohx_dagster.fhir.delivery.client import DeliveryReport
from ohx_dagster.fhir.delivery.errors import DeliveryError
from ohx_dagster.fhir.delivery.outbox import delivered_sample, enqueue_partition, partition_counts
from ohx_dagster.privacy.subjects import erasure_salt
from ohx_dagster.publish.partitions import partition_key
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.shards import Sharding
from resources import FhirOutputResource, RecordStoreResource
from resources.fhir_server import FhirServerResource

SKIPPED = "skipped: no FHIR server configured"
T = TypeVar("T")


def build_fhir_delivery_asset(
    partitions: dg.PartitionsDefinition, sharding: Sharding
) -> dg.AssetsDefinition:
    @dg.asset(
        partitions_def=partitions,
        backfill_policy=BACKFILL_POLICY,
        deps=[dg.AssetKey("fhir_observations")],
        group_name="fhir",
        kinds={"fhir"},
        owners=["team:clinical-integration"],
        # Delivery outages retry by the resource's step_retries (RetryRequested); this policy
        # covers anything else (the record store unavailable, say).
        retry_policy=dg.RetryPolicy(
            max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
        check_specs=[
            dg.AssetCheckSpec(
                "outbox_drained",
                asset="fhir_delivery",
                description="Nothing of the partition is left pending or failed in the outbox.",
            ),
            dg.AssetCheckSpec(
                "server_confirms",
                asset="fhir_delivery",
                description="A sample of delivered resources, searched on the server by "
                "identifier, is held exactly once with the content that was sent.",
            ),
        ],
    )
    def fhir_delivery(
        context: dg.AssetExecutionContext,
        store: RecordStoreResource,
        output: FhirOutputResource,
        fhir_server: FhirServerResource,
    ) -> dg.MaterializeResult:
        """Transaction Bundles of conditional updates (PUT Type?identifier=...) to the configured
        FHIR server, in bounded batches, through the durable outbox."""
        if not fhir_server.configured:
            skipped = {"status": SKIPPED}
            return dg.MaterializeResult(
                metadata={"status": SKIPPED, "skipped": True},
                check_results=[
                    dg.AssetCheckResult(check_name=name, passed=True, metadata=skipped)
                    for name in ("outbox_drained", "server_confirms")
                ],
            )
        days, shard = days_and_shard(context, sharding)
        record_store = store.get_store()
        partitions = [partition_key(day, shard.key) for day in days]
        client = fhir_server.client()
        server = fhir_server.display_url
        report = DeliveryReport()
        try:
            # Every attempt enqueues what is not queued yet: an attempt that failed before its
            # partition was queued (the database locked, the output store unreachable) leaves
            # nothing for the next one to miss.
            enqueued = sum(enqueue_partition(record_store, output.get(), p) for p in partitions)
            before = _counts(record_store, partitions)
            for partition in partitions:
                report.add(
                    client.deliver(record_store, partition, actor=f"dagster run {context.run_id}")
                )
        except (DeliveryError, SQLAlchemyError, OSError) as exc:
            counts = _counts(record_store, partitions)
            attempt = context.retry_number
            error = _hidden(record_store, shard.provider, str(exc))
            context.log.warning(
                f"FHIR delivery to {server} failed (step attempt {attempt + 1}): {error}; "
                f"{counts['pending']} of {counts['total']} resources stay pending in the outbox"
            )
            if attempt < fhir_server.step_retries:
                raise dg.RetryRequested(
                    max_retries=fhir_server.step_retries,
                    seconds_to_wait=fhir_server.step_retry_wait_s * 2**attempt,
                ) from None
            raise dg.Failure(
                description=f"FHIR server {server} unavailable: {error}",
                metadata={"server": server, **counts},
                allow_retries=False,
            ) from None
        counts = _counts(record_store, partitions)
        sample = [
            resource
            for partition in partitions
            for resource in delivered_sample(record_store, partition, fhir_server.confirm_sample)
        ]
        mismatches = client.read_back(sample)
        if mismatches:
            mismatches = _hidden(record_store, shard.provider, mismatches)
        return dg.MaterializeResult(
            metadata={
                "status": "delivered",
                "server": server,
                "files_enqueued": enqueued,
                "resources": counts["total"],
                "sent": report.sent,
                "unchanged": before["delivered"],
                "pending": counts["pending"],
                "failed": counts["failed"],
                "transactions": report.batches,
                "retries": report.retries,
                "step_attempt": context.retry_number + 1,
                "statuses": dg.MetadataValue.json(report.statuses),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="outbox_drained",
                    passed=counts["pending"] == 0 and counts["failed"] == 0,
                    metadata=counts,
                ),
                dg.AssetCheckResult(
                    check_name="server_confirms",
                    passed=not mismatches,
                    metadata={
                        "server": server,
                        "sampled": len(sample),
                        "mismatches": len(mismatches),
                        "problems": dg.MetadataValue.json(mismatches[:20]),
                    },
                ),
            ],
        )

    return fhir_delivery


def _hidden(store: RecordStore, provider: str, value: T) -> T:
    """The value with the provider's people named by subject (an error quoting identifiers)."""
    people = [p.config.user_id for p in store.people(provider)]
    return Hider(provider, erasure_salt())(value, people)


def _counts(store: RecordStore, partitions: list[str]) -> dict[str, int]:
    totals = {"total": 0, "delivered": 0, "pending": 0, "failed": 0}
    for partition in partitions:
        for name, value in partition_counts(store, partition).items():
            totals[name] += value
    return totals
