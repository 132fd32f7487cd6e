"""Daily renewal of the app's Oura webhook subscriptions (they expire; Withings subscribes per
user when the person connects, Google Health needs none)."""

import dagster as dg

from ohx_dagster.config import environment
from ohx_dagster.providers.oura.subscriptions import renew
from ohx_dagster.providers.registry import API_PROVIDERS
from resources import RecordStoreResource


@dg.op(description="Create missing and renew expiring Oura webhook subscriptions of this app.")
def renew_oura_subscriptions(
    context: dg.OpExecutionContext, store: RecordStoreResource
) -> dg.Output[int]:
    results = renew(store.get_store(), environment.environ(), API_PROVIDERS["oura"])
    failed = [r for r in results if not r.ok]
    for result in results:
        context.log.info(f"oura {result.target}: {result.status} {result.detail or ''}")
    if failed:
        # Recorded in the store already; failing the run makes it visible in the UI and alerts.
        raise dg.Failure(
            description=f"{len(failed)} of {len(results)} Oura subscriptions failed",
            metadata={"failed": dg.MetadataValue.json([f"{r.target}: {r.detail}" for r in failed])},
        )
    return dg.Output(len(results), metadata={"subscriptions": len(results)})


@dg.job(description="Keep this app's Oura webhook subscriptions alive.")
def oura_subscriptions_job() -> None:
    renew_oura_subscriptions()


oura_subscriptions_schedule = dg.ScheduleDefinition(
    name="daily_oura_subscriptions",
    job=oura_subscriptions_job,
    cron_schedule="15 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 04:15 UTC: create or renew the Oura webhook subscriptions.",
)
