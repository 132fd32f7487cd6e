"""One Provenance per person and published partition: which resources (`target`), from which
source (the provider API or export, with the zone a wall-clock export was read in), by which
Dagster run, assembled by which software, and when (`recorded`).

The agent and the run are logical references (identifier only): they are not resources of the
output. R5 Provenance has no identifier: delivery updates it by its id (PUT Provenance/<id>), and
deletes it when the person's day no longer has one. A publication that changes no clinical
resource keeps the previous Provenance (ohx_dagster/publish/partitions.py); otherwise it names the
new run and time, so comparisons of outputs made by different runs leave it out (the clinical
resources are byte-identical whatever run made them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Final

from ohx_dagster.core.ids import content_key, stable_id
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.fhir.codes import (
    DATA_OPERATION,
    PARTICIPANT_TYPE,
    RUN_SYSTEM,
    SOFTWARE_SYSTEM,
    SOURCE_SYSTEM,
)
from ohx_dagster.fhir.common import patient_reference
from ohx_dagster.fhir.timefmt import format_us
from ohx_dagster.providers.registry import describe

SOFTWARE: Final = "ohx-dagster"


def provenance(
    provider: str,
    config: HealthSyncConfig,
    day: date,
    resources: Sequence[dict[str, Any]],
    *,
    run_id: str,
    recorded_us: int,
) -> dict[str, Any]:
    # R5 Provenance has no identifier: its id is its content key's, and delivery updates it by id.
    # The zone is part of the key as it is of the aggregates': the same export read in another
    # zone is another set of resources with another Provenance, never the first one's overwritten.
    key = content_key(
        provider, config.user_id, "provenance", day.isoformat(), config.zone_on(day).key,
        generation=config.link_generation,
    )  # fmt: skip
    resource: dict[str, Any] = {"resourceType": "Provenance", "id": stable_id("Provenance", key)}
    resource["target"] = [
        {"reference": f"{r['resourceType']}/{r['id']}"} for r in resources if "id" in r
    ]
    resource["recorded"] = format_us(recorded_us)
    resource["activity"] = {
        "coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]
    }
    resource["patient"] = patient_reference(config)
    resource["agent"] = [
        {
            "type": {
                "coding": [
                    {"system": PARTICIPANT_TYPE, "code": "assembler", "display": "Assembler"}
                ]
            },
            "who": {
                "identifier": {"system": SOFTWARE_SYSTEM, "value": SOFTWARE},
                "display": "Open Health Exchange sync on Dagster",
            },
        }
    ]
    entities = [
        {
            "role": "source",
            "what": {
                "identifier": {"system": SOURCE_SYSTEM, "value": provider},
                "display": describe(provider, config),
            },
        }
    ]
    if run_id:
        entities.append(
            {
                "role": "source",
                "what": {
                    "identifier": {"system": RUN_SYSTEM, "value": run_id},
                    "display": f"Dagster run {run_id}",
                },
            }
        )
    resource["entity"] = entities
    return resource
