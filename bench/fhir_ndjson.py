"""FHIR output throughput: source samples per second into NDJSON, for a day of 1 Hz heart rate
for 100 users (8.64 M samples), this product's way next to the seed's, in the same run.

- ohx: record batch -> one Observation (valueSampledData) per user and hour -> orjson NDJSON;
- seed: one Observation dict per sample + json.dumps (measured on a subset, extrapolated);
- seed + fhir.resources: the same, each resource validated through the pydantic model (a smaller
  subset, extrapolated).
A stratified sample of the emitted resources is validated with the three-layer validator.

Run: .venv/bin/python bench/fhir_ndjson.py   (one core; prints the figures)
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# This file is named fhir.py: keep its folder off sys.path so `fhir.resources` is the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pandas as pd  # noqa: E402

from ohx_dagster.fhir.series import series_observations  # noqa: E402
from ohx_dagster.fhir.validate import validate_resources  # noqa: E402
from ohx_dagster.models import HealthSyncConfig  # noqa: E402
from ohx_dagster.records import make_batch  # noqa: E402

USERS = 100
SECONDS = 86_400
DAY = datetime(2025, 3, 4, tzinfo=UTC)


def day_of_heart_rate() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    stamps = pd.date_range(DAY, periods=SECONDS, freq="s")
    batches = [
        make_batch(
            provider="bench",
            user_id=f"user-{u:03d}",
            data_type="heart_rate",
            timestamps=stamps,
            values=np.clip(60 + np.cumsum(rng.normal(0, 0.3, SECONDS)), 40, 180).round(0),
            unit="/min",
            device_id=f"watch-{u:03d}",
        )
        for u in range(USERS)
    ]
    return pd.concat(batches, ignore_index=True)


def ohx(records: pd.DataFrame, configs: dict) -> tuple[bytes, list[dict]]:
    resources = list(series_observations(records, configs))
    resources.sort(key=lambda r: r["id"])
    return b"".join(orjson.dumps(r) + b"\n" for r in resources), resources


def seed_resource(user: str, ts: datetime, value: float) -> dict:
    """What the seed built: one Observation per sample (its naive isoformat()+"Z" fixed)."""
    return {
        "resourceType": "Observation",
        "id": f"{user}-{ts.timestamp():.0f}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{user}"},
        "effectiveDateTime": ts.isoformat(),
        "valueQuantity": {
            "value": value,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def seed(records: pd.DataFrame, validate: bool) -> int:
    from fhir.resources.observation import Observation

    size = 0
    for user, ts, value in zip(records["user_id"], records["ts"], records["value"], strict=True):
        resource = seed_resource(user, ts.to_pydatetime(), float(value))
        if validate:
            Observation.model_validate(resource)
        size += len(json.dumps(resource)) + 1
    return size


def main() -> None:
    records = day_of_heart_rate()
    users = records["user_id"].unique()
    configs = {u: HealthSyncConfig(user_id=u, provider="bench") for u in users}
    samples = len(records)

    started = time.perf_counter()
    body, resources = ohx(records, configs)
    ohx_s = time.perf_counter() - started

    subset = records.iloc[:: max(1, samples // 200_000)].head(200_000)
    started = time.perf_counter()
    seed_bytes = seed(subset, validate=False)
    seed_rate = len(subset) / (time.perf_counter() - started)

    small = subset.head(20_000)
    started = time.perf_counter()
    seed(small, validate=True)
    validated_rate = len(small) / (time.perf_counter() - started)

    checked = validate_resources(resources, limit=48)
    started = time.perf_counter()
    problems = validate_resources(resources, limit=48)
    validate_s = time.perf_counter() - started

    print(f"FHIR NDJSON bench: {USERS} users x {SECONDS} s of 1 Hz heart rate = {samples:,}")
    print(
        f"  ohx  (SampledData per user-hour, orjson): {samples / ohx_s:>12,.0f} samples/s "
        f"({ohx_s:.2f} s, {len(resources):,} resources, {len(body) / 1e6:.1f} MB)"
    )
    print(
        f"  seed (dict per sample + json.dumps):       {seed_rate:>12,.0f} samples/s "
        f"(measured on {len(subset):,} samples, extrapolated: {samples / seed_rate:.0f} s, "
        f"~{seed_bytes / len(subset) * samples / 1e9:.1f} GB)"
    )
    print(
        f"  seed + fhir.resources validation:          {validated_rate:>12,.0f} samples/s "
        f"(measured on {len(small):,} samples, extrapolated: {samples / validated_rate:.0f} s)"
    )
    print(f"  speed-up vs seed: {samples / ohx_s / seed_rate:,.0f}x")
    print(
        f"  validation (model + JSON schema + R5 profiles) of a 48-resource sample: "
        f"{len(problems)} problems, {validate_s:.2f} s"
    )
    assert not checked and not problems, [str(p) for p in problems[:5]]


if __name__ == "__main__":
    main()
