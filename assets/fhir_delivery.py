"""fhir_delivery: the partition's FHIR resources into the outbox, then to the FHIR server.

Runs after fhir_observations. Without a configured server it records "skipped" and touches nothing.
The outbox makes it safe to retry: what the server acknowledged is not sent again, what it did not
stays pending for the next run (see ohx_dagster.fhir.delivery).
"""

import dagster as dg

from assets.partitions import day_and_source
from ohx_dagster.fhir.delivery import enqueue
from ohx_dagster.fhir.publish import partition_resources
from resources import RecordStoreResource
from resources.fhir_server import FhirServerResource


def build_fhir_delivery_asset(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        partitions_def=partitions,
        deps=[dg.AssetKey("fhir_observations")],
        group_name="fhir",
        kinds={"fhir"},
        owners=["team:clinical-integration"],
        retry_policy=dg.RetryPolicy(
            max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
    )
    def fhir_delivery(
        context: dg.AssetExecutionContext,
        store: RecordStoreResource,
        fhir_server: FhirServerResource,
    ) -> dg.MaterializeResult:
        """Transaction Bundles of conditional updates (PUT Type?identifier=...) to the configured
        FHIR server, in bounded batches, through the durable outbox."""
        if not fhir_server.configured:
            return dg.MaterializeResult(metadata={"status": "skipped: no FHIR server configured"})
        day, source = day_and_source(context)
        record_store = store.get_store()
        partition = f"{day.isoformat()}|{source}"
        queued = enqueue(record_store, partition, partition_resources(record_store, source, day))
        report = fhir_server.client().deliver(record_store, partition)
        return dg.MaterializeResult(
            metadata={
                "status": "delivered",
                "pending_before": queued,
                "sent": report.sent,
                "transactions": report.batches,
                "retries": report.retries,
                "statuses": dg.MetadataValue.json(report.statuses),
            }
        )

    return fhir_delivery
