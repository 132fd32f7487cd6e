"""End to end: a signed webhook from the simulated provider reaches the store and FHIR by itself.

The receiver is a real uvicorn server; the sensor is evaluated as the daemon evaluates it, and its
RunRequest is executed in process with the request's own partition and tags.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from ohx_dagster.config.receiver import WebhookSecrets
from ohx_dagster.config.settings import Settings
from ohx_dagster.core.models import DateRange
from ohx_dagster.core.times import utc_day
from ohx_dagster.definitions import build_definitions
from ohx_dagster.fhir.output import FhirOutput
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.receiver.simulator import send_event
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox
from resources import RecordStoreResource

SECRET = "e2e-simulated-secret"  # the development route is mounted only with a secret


def test_signed_webhook_becomes_records_and_fhir_without_a_human(tmp_path) -> None:
    now = datetime.now(UTC)
    # Two minutes ago, but never across UTC midnight: the event's day is today's partition.
    moment = max(now - timedelta(minutes=2), now.replace(hour=0, minute=0, second=0, microsecond=0))
    database_url = f"sqlite:///{tmp_path / 'ohx.db'}"
    settings = Settings.from_env(
        {
            "OHX_HOME": str(tmp_path),
            "OHX_DATABASE_URL": database_url,
            "OHX_PARTITIONS_START": (now.date() - timedelta(days=3)).isoformat(),
        }
    )
    store = RecordStore(database_url)
    users = SimulatedSource(3).discover_users()
    store.add_users(users)
    named, other = users[0], users[1]

    with serve_in_thread(create_app(store, WebhookSecrets(simulated_secret=SECRET))) as url:
        answer = send_event(url, SECRET, named.user_id, "heart_rate", moment)
        forged = send_event(url, "not-the-secret", other.user_id, "heart_rate", now)
    assert answer.status_code == 200, answer.text
    assert forged.status_code == 401
    assert Inbox(store).counts()["pending"] == 1

    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"store": RecordStoreResource(database_url=database_url)}
    )
    result = defs.get_sensor_def("webhook_sensor")(context)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.partition_key == f"{now.date()}|simulated"

    job = defs.resolve_job_def("sync_partition")
    run = job.execute_in_process(
        partition_key=request.partition_key, tags=request.tags, instance=instance
    )
    assert run.success
    checks = [e for e in run.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert checks and all(e.event_specific_data.passed for e in checks)

    recent = DateRange(now - timedelta(minutes=20), datetime.now(UTC))
    stored = store.read_records("simulated", recent)
    assert set(stored["user_id"]) == {named.user_id}  # only the user the webhook named
    assert (stored["data_type"] == "heart_rate").any()
    assert store.last_synced("simulated", named.user_id, "heart_rate") >= now
    assert store.last_synced("simulated", other.user_id, "heart_rate") is None

    output = FhirOutput(settings.fhir_dir)
    directory = f"{now.date().isoformat()}/simulated"
    observations = [
        r for r in output.listed_resources(directory) if r["resourceType"] == "Observation"
    ]
    patient = f"Patient/{named.fhir_patient_id}"
    hour = moment.replace(minute=0, second=0, microsecond=0)
    heart_rate_now = [
        o
        for o in observations
        if o.get("subject", {}).get("reference") == patient
        and o["code"]["coding"][0]["code"] == "8867-4"
        and "effectivePeriod" in o
        and datetime.fromisoformat(o["effectivePeriod"]["start"]) <= hour + timedelta(minutes=59)
        and datetime.fromisoformat(o["effectivePeriod"]["end"]) > hour - timedelta(minutes=20)
    ]
    assert heart_rate_now, "no heart-rate Observation for the webhook's hour"
    assert utc_day(now.date()).contains(now)
