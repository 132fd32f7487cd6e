"""Bulk Data exports as Dagster runs: the `fhir_export` job answers one `$export` request
(ohx_dagster/fhirapi/bulk.py), and the `fhir_exports` sensor asks for one run per request the FHIR
API accepted, so every export shows in the UI with its logs and how long it took.

The run key is the export's id (random, naming no one), so a request is run once. The sensor also
- marks failed an export whose run ended without finishing it (its process was killed, the run
  was terminated or could not start): the client's next poll gets the error instead of waiting
  for ever;
- deletes exports that expired (ohx_dagster/fhirapi/bulk.py EXPIRES_S after they finished).
"""

import dagster as dg
from pydantic import Field

from ohx_dagster.fhirapi import bulk
from resources import FhirOutputResource, RecordStoreResource

EXPORT_TAG = "ohx/export"


class ExportRequest(dg.Config):
    export_id: str = Field(description="The export the FHIR API accepted (fhir_exports).")


@dg.op(
    name="export_fhir",
    description="Write the files of one Bulk Data export from the published NDJSON.",
    # Its outcome is the export's row and files: nothing for an IO manager to keep.
    out=dg.Out(dg.Nothing),
)
def export_fhir_op(
    context: dg.OpExecutionContext,
    config: ExportRequest,
    store: RecordStoreResource,
    output: FhirOutputResource,
) -> None:
    export_id = config.export_id
    ended = bulk.run_export(store.get_store(), output.get(), export_id, run_id=context.run_id)
    if ended is None:
        raise dg.Failure(description=f"no export {config.export_id} (expired or never accepted)")
    count = sum(int(f["count"]) for f in ended.output)
    metadata: dict[str, dg.RawMetadataValue] = {
        "state": ended.state,
        "files": len(ended.output),
        "resources": count,
    }
    if ended.state == "failed":
        raise dg.Failure(description=f"export {ended.export_id}: {ended.error}", metadata=metadata)
    context.log.info(f"export {ended.export_id}: {ended.state}, {count} resources")
    context.add_output_metadata(metadata)


@dg.job(
    name="fhir_export",
    description="One FHIR Bulk Data export (Patient/$export or Group/[id]/$export), launched by "
    "the fhir_exports sensor for each request the FHIR API accepts.",
    tags={"ohx/kind": "bulk-export"},
)
def fhir_export_job() -> None:
    export_fhir_op()


def _ended_without_finishing(instance: dg.DagsterInstance, export: bulk.Export) -> str | None:
    """Why an accepted or running export will not finish (its run ended), or None."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={EXPORT_TAG: export.export_id}), limit=5)
    ended = [r for r in runs if r.is_finished]
    if not ended or len(ended) < len(runs):
        return None
    return f"its run {ended[0].run_id} ended {ended[0].status.value.lower()}: kick off again"


@dg.sensor(
    name="fhir_exports",
    job=fhir_export_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches a fhir_export run for each Bulk Data export the FHIR API accepted; "
    "fails exports whose run ended without them, deletes expired ones.",
)
def fhir_exports_sensor(
    context: dg.SensorEvaluationContext, store: RecordStoreResource, output: FhirOutputResource
) -> dg.SensorResult:
    record_store = store.get_store()
    expired = bulk.expire(record_store, output.get())
    failed = 0
    for export in bulk.in_states(record_store, *bulk.LIVE):
        why = _ended_without_finishing(context.instance, export)
        if why is not None and bulk.fail(record_store, export.export_id, why):
            failed += 1
    requests = [
        dg.RunRequest(
            run_key=export.export_id,
            run_config={"ops": {"export_fhir": {"config": {"export_id": export.export_id}}}},
            tags={EXPORT_TAG: export.export_id},
        )
        for export in bulk.in_states(record_store, "accepted")
    ]
    if expired or failed:
        context.log.info(f"{expired} expired exports deleted, {failed} failed")
    return dg.SensorResult(run_requests=requests)
