"""Google Health API v4 (the successor of the Fitbit Web API), per connected user:
GET /v4/users/me/dataTypes/{dataType}/dataPoints?filter=...&pageSize=...&pageToken=...

| our type | dataType | DataPoint field | value | time |
|---|---|---|---|---|
| heart_rate | heart-rate | heartRate | beatsPerMinute (bpm) | sampleTime |
| steps | steps | steps | count, over the interval (duration kept) | interval.startTime |
| weight | weight | weight | weightGrams (g -> kg) | sampleTime |
| spo2 | oxygen-saturation | oxygenSaturation | percentage (%) | sampleTime |

Sample times are {physicalTime (RFC 3339), utcOffset (a protobuf Duration such as "3600s")},
intervals {startTime, startUtcOffset, endTime, endUtcOffset}; the local offset is kept. The
filter (AIP-160) selects the window on physical time (`{type}.sample_time.physical_time`, or
`{type}.interval.start_time` for intervals); pages follow `nextPageToken`. int64 fields arrive
as JSON strings (protobuf JSON), and an empty result may omit `dataPoints` altogether.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pandas as pd

from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.providers import payload
from ohx_dagster.providers.api import ApiSource, Sample, samples_batch
from ohx_dagster.providers.http import TokenSource, paginate

NAME: Final = "google_health"
MAX_PAGE_SIZE: Final = 10_000


@dataclass(frozen=True, slots=True)
class GoogleType:
    data_type: str  # in the URL
    field: str  # the DataPoint's union field
    filter_name: str  # in filter expressions
    value: str  # the value's field in the record
    unit: str
    interval: bool = False

    @property
    def endpoint(self) -> str:
        return f"/v4/users/me/dataTypes/{self.data_type}/dataPoints"


TYPES: Final[dict[HealthDataType, GoogleType]] = {
    HealthDataType.HEART_RATE: GoogleType("heart-rate", "heartRate", "heart_rate",
                                          "beatsPerMinute", "bpm"),
    HealthDataType.STEPS: GoogleType("steps", "steps", "steps", "count", "steps", interval=True),
    HealthDataType.WEIGHT: GoogleType("weight", "weight", "weight", "weightGrams", "g"),
    HealthDataType.SPO2: GoogleType("oxygen-saturation", "oxygenSaturation", "oxygen_saturation",
                                    "percentage", "%"),
}  # fmt: skip


def rfc3339(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def time_filter(kind: GoogleType, window: DateRange) -> str:
    path = "interval.start_time" if kind.interval else "sample_time.physical_time"
    field = f"{kind.filter_name}.{path}"
    return f'{field} >= "{rfc3339(window.start)}" AND {field} < "{rfc3339(window.end)}"'


class GoogleHealthSource(ApiSource):
    def read(
        self,
        user: HealthSyncConfig,
        kind: HealthDataType,
        window: DateRange,
        auth: TokenSource,
        batch_size: int = MAX_PAGE_SIZE,
    ) -> pd.DataFrame:
        if kind not in TYPES:
            return super().read(user, kind, window, auth)
        spec = TYPES[kind]
        where = self.connection.where(spec.endpoint)
        params = {
            "filter": time_filter(spec, window),
            "pageSize": str(max(1, min(batch_size, MAX_PAGE_SIZE))),
        }

        def page(token: str | None) -> tuple[list[Any], str | None]:
            query = params if token is None else {**params, "pageToken": token}
            body = self.connection.api.json(
                "GET", spec.endpoint, auth=auth, params=query, budget=self.connection.budget(user)
            )
            if not isinstance(body, dict):
                raise payload.bad_field(where, "(body)", body, "a JSON object")
            points = body.get("dataPoints", [])  # protobuf JSON omits an empty list
            if not isinstance(points, list):
                raise payload.bad_field(where, "dataPoints", points, "a JSON array")
            following = body.get("nextPageToken")
            if following is not None and not isinstance(following, str):
                raise payload.bad_field(where, "nextPageToken", following, "a string")
            return points, following

        samples = []
        for index, point in enumerate(paginate(NAME, spec.endpoint, page)):
            at = f"{where} dataPoints[{index}]"
            record = payload.get(point, spec.field, at, f"a {spec.field} object")
            value = payload.number(record, spec.value, f"{at}.{spec.field}")
            if spec.interval:
                start = payload.instant(record, "interval.startTime", f"{at}.{spec.field}")
                end = payload.instant(record, "interval.endTime", f"{at}.{spec.field}")
                offset_s = payload.duration_s(record, "interval.startUtcOffset", f"{at}.steps")
                duration = (end - start).total_seconds()
            else:
                start = payload.instant(record, "sampleTime.physicalTime", f"{at}.{spec.field}")
                offset_s = payload.duration_s(record, "sampleTime.utcOffset", f"{at}.{spec.field}")
                duration = None
            if window.contains(start):
                samples.append(Sample(start, value, int(offset_s // 60), duration))
        return samples_batch(NAME, user.user_id, kind, spec.unit, samples)
