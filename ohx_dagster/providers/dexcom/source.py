"""Dexcom API v3 (https://api.dexcom.com/v3/users/self/...), per connected person. Sources of
every shape and rule: SOURCE.md beside this module.

interstitial_glucose <- egvs (GET /v3/users/self/egvs?startDate&endDate): a continuous glucose
monitor's estimated glucose values (EGVs), one every 5 minutes.

- The instant is `systemTime`, "the ISO 8601 time according to the system clock at which
  observation was made (UTC)"; records from the mobile apps write it with an offset, records from
  receivers without one: a time without an offset is read as UTC.
- The record's local offset is `displayTime`'s, where it has one: "records sourced from mobile
  apps (with displayDevice of iOS or android) will have UTC offsets; records sourced from
  receivers ... will not". A receiver's record has none (its local day follows the person's zone
  history, ohx_dagster/core/localdays.py), as its display clock may be set to anything.
- `value` is in `unit` (mg/dL or mmol/L), converted through the type's spellings (mmol/L x
  18.0156, exactly as ohx_dagster/core/datatypes.py says); a record whose `unit` is "unknown" is
  a ProviderError naming the record (the value has no unit this product could store), as a value
  that is present but unusable is for every provider: the type fails for the run, the others go
  on.
- `value` is "integer or null": a null is no reading and is skipped (as Oura's null SpO2 and
  Google Health's omitted values are). A record whose `status` is "high" or "low" is outside the
  sensor's measuring range: whatever number it carries is not a measurement (the documentation
  says no more), so none is stored for it.
- The device is `dexcom-<transmitterGeneration>[-<transmitterId>]`.

Dexcom answers a window of at most MAX_SPAN: a longer window is asked in consecutive requests,
the dates written as Dexcom's examples write them (YYYY-MM-DDThh:mm:ss, UTC, no offset), whole
seconds around the window; the records kept are those whose `systemTime` is in the window.
Dexcom sends no notifications (no webhooks): the schedules poll it, and the re-sync horizon
re-reads what the apps upload late.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pandas as pd

from ohx_dagster.core.models import HARD_LIMITS, DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import concat
from ohx_dagster.core.units import to_canonical
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.http import TokenSource
from ohx_dagster.providers.api.source import ApiSource, Sample, offset_min, samples_batch

NAME: Final = "dexcom"
EGVS: Final = "/v3/users/self/egvs"
DATA_RANGE: Final = "/v3/users/self/dataRange"
CGM: Final = HealthDataType.INTERSTITIAL_GLUCOSE
# The longest window one egvs request may ask (SOURCE.md).
MAX_SPAN: Final = timedelta(days=30)
# The egvs `unit` values this product can store (the type's spellings); "unknown" is refused.
UNITS: Final = ("mg/dL", "mmol/L")
# `status` of a reading outside the sensor's measuring range: no number is stored for it.
OUT_OF_RANGE: Final = frozenset({"high", "low"})
DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"


def spans(window: DateRange, longest: timedelta = MAX_SPAN) -> Iterator[tuple[datetime, datetime]]:
    """The requests that cover `window`: whole seconds around it, each at most `longest`."""
    start = window.start.replace(microsecond=0)
    end = datetime.fromtimestamp(math.ceil(window.end.timestamp()), tz=UTC)
    while start < end:
        stop = min(start + longest, end)
        yield start, stop
        start = stop


def _time(record: Any, name: str, where: str) -> tuple[datetime, bool]:
    """An ISO 8601 date-time and whether it was written with an offset; one written without is
    UTC (Dexcom's receivers write none)."""
    value = payload.get(record, name, where, "an ISO 8601 date-time")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None:
            if moment.utcoffset() is None:
                return moment.replace(tzinfo=UTC), False
            return moment, True
    raise payload.bad_field(where, name, value, "an ISO 8601 date-time")


def _device(record: Any) -> str:
    generation = record.get("transmitterGeneration")
    transmitter = record.get("transmitterId")
    device = f"{NAME}-{generation}" if isinstance(generation, str) and generation else NAME
    return f"{device}-{transmitter}" if isinstance(transmitter, str) and transmitter else device


def read_egv(record: Any, where: str) -> tuple[str, Sample] | None:
    """(unit, sample) of one egvs record; None for a record that holds no measured value."""
    if not isinstance(record, dict):
        raise payload.bad_field(where, "(record)", record, "an EGV object")
    record_id = record.get("recordId")
    if isinstance(record_id, str) and record_id:
        where = f"{where} (recordId {record_id})"
    if record.get("value") is None or record.get("status") in OUT_OF_RANGE:
        return None
    unit = payload.get(record, "unit", where, " or ".join(UNITS))
    if unit not in UNITS:
        raise payload.bad_field(where, "unit", unit, " or ".join(UNITS))
    value = payload.number(record, "value", where)
    low, high = HARD_LIMITS[CGM]
    canonical = float(to_canonical(CGM, [value], unit)[0])
    if not low <= canonical <= high:
        expected = f"{low:g}..{high:g} {CGM.canonical_unit} once converted from {unit}"
        raise payload.bad_field(where, "value", record["value"], expected)
    at, _ = _time(record, "systemTime", where)
    shown, has_offset = _time(record, "displayTime", where)
    offset = offset_min(shown) if has_offset else None
    return unit, Sample(at.astimezone(UTC), value, offset, device_id=_device(record))


class DexcomSource(ApiSource):
    def read(
        self, user: HealthSyncConfig, kind: HealthDataType, window: DateRange, auth: TokenSource
    ) -> pd.DataFrame:
        if kind is not CGM:
            return super().read(user, kind, window, auth)
        where = self.connection.where(EGVS)
        budget = self.connection.budget(user)
        by_unit: dict[str, list[Sample]] = {}
        for start, end in spans(window):
            params = {
                "startDate": start.strftime(DATE_FORMAT),
                "endDate": end.strftime(DATE_FORMAT),
            }
            body = self.connection.api.json("GET", EGVS, auth=auth, params=params, budget=budget)
            if not isinstance(body, dict):
                raise payload.bad_field(where, "(body)", body, "a JSON object")
            chunk = window.intersect(DateRange(start, end)) or window
            for index, record in enumerate(payload.items(body, "records", where)):
                found = read_egv(record, f"{where} records[{index}]")
                if found is not None and chunk.contains(found[1].at):
                    by_unit.setdefault(found[0], []).append(found[1])
        return concat(
            [samples_batch(NAME, user.user_id, CGM, unit, s) for unit, s in sorted(by_unit.items())]
        )
