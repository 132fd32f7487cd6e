"""Withings measure getmeas (POST https://wbsapi.withings.net/measure, action=getmeas), per
connected user.

Every answer is {"status": 0, "body": {...}} with HTTP 200, errors included: status 401 is an
invalid token (refreshed once, like an HTTP 401), 601 is Withings' rate limit, any other status
is a ProviderError naming it. The body holds `measuregrps` (one per measurement session: `date`
in Unix seconds, `timezone`, `deviceid`, `measures`), `more` and `offset` for the next page.

A measure's value is `value * 10^unit`. The types read (category 1, real measures):

| meastype | our type | unit |
|---|---|---|
| 1 | weight | kg |
| 10 / 9 | blood_pressure systolic / diastolic (both from the same group) | mmHg |
| 11 | heart_rate (heart pulse) | bpm |
| 54 | spo2 | % |
| 71 | temperature (body) | Cel |

Each record keeps the local offset of the group's `timezone` (else the body's, else the user's)
at its instant; the device is the group's `deviceid` (or `hash_deviceid`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from ohx_dagster.errors import ProviderError, RateLimited
from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.providers import payload
from ohx_dagster.providers.api import ApiSource, Sample, offset_min, samples_batch
from ohx_dagster.providers.base import FetchResult, Windows
from ohx_dagster.providers.http import TokenSource, Unauthorized, excerpt, paginate
from ohx_dagster.records import concat
from ohx_dagster.times import from_us

NAME: Final = "withings"
MEASURE: Final = "/measure"
WEIGHT, DIASTOLIC, SYSTOLIC, PULSE, SPO2, BODY_TEMPERATURE = 1, 9, 10, 11, 54, 71
SINGLE: Final[dict[int, tuple[HealthDataType, str]]] = {
    WEIGHT: (HealthDataType.WEIGHT, "kg"),
    PULSE: (HealthDataType.HEART_RATE, "bpm"),
    SPO2: (HealthDataType.SPO2, "%"),
    BODY_TEMPERATURE: (HealthDataType.TEMPERATURE, "Cel"),
}
MEASTYPES: Final = (WEIGHT, DIASTOLIC, SYSTOLIC, PULSE, SPO2, BODY_TEMPERATURE)
READS: Final = frozenset({*(kind for kind, _ in SINGLE.values()), HealthDataType.BLOOD_PRESSURE})
STATUS_INVALID_TOKEN: Final = 401
STATUS_TOO_MANY_REQUESTS: Final = 601


def measure_value(measure: Any, where: str) -> float:
    """value * 10^unit, exact for the decimal values Withings encodes this way."""
    value = payload.number(measure, "value", where)
    unit = payload.number(measure, "unit", where)
    if not unit.is_integer():
        raise payload.bad_field(where, "unit", unit, "an integer power of ten")
    return value / 10 ** -int(unit) if unit < 0 else value * 10 ** int(unit)


class WithingsSource(ApiSource):
    def _check(self, body: Any) -> None:
        where = f"{NAME} {MEASURE} getmeas"
        status = payload.get(body, "status", where, "a status code")
        if status == 0:
            return
        message = excerpt(str(body.get("error", "")))
        if status == STATUS_INVALID_TOKEN:
            raise Unauthorized(NAME, MEASURE, 401, f"status 401 {message}".rstrip())
        if status == STATUS_TOO_MANY_REQUESTS:
            raise RateLimited(NAME, None)
        raise ProviderError(f"{where}: status {status} {message}".rstrip())

    def _groups(self, window: DateRange, auth: TokenSource, budget) -> list[tuple[Any, Any]]:
        """(body, group) of every page."""
        where = f"{NAME} {MEASURE} getmeas"
        form = {
            "action": "getmeas",
            "meastypes": ",".join(str(t) for t in MEASTYPES),
            "category": "1",
            "startdate": str(math.floor(window.start.timestamp())),
            "enddate": str(math.ceil(window.end.timestamp())),
        }

        def page(offset: str | None) -> tuple[list[tuple[Any, Any]], str | None]:
            data = form if offset is None else {**form, "offset": offset}
            answer = self.connection.api.json(
                "POST", MEASURE, auth=auth, data=data, check=self._check, budget=budget
            )
            body = payload.get(answer, "body", where, "an object")
            groups = payload.items(body, "measuregrps", where)
            more = body.get("more")
            following = None
            if more:  # documented as 0/1 (older answers: true/false)
                following = str(int(payload.number(body, "offset", where)))
            return [(body, group) for group in groups], following

        return list(paginate(NAME, MEASURE, page))

    def fetch_windows(self, user: HealthSyncConfig, windows: Windows) -> FetchResult:
        """One getmeas (paged) for every type and window of the run: Withings serves all measure
        types in one call, so asking per type would repeat the same request."""
        wanted = {HealthDataType(t) for t in windows} & READS
        result = FetchResult()
        if not wanted:
            return result
        start = min(s for kind in wanted for s, _ in windows[kind])
        end = max(e for kind in wanted for _, e in windows[kind])
        span = DateRange(from_us(start), from_us(end))
        batch = self._measures(user, wanted, span)
        inside = []
        for kind in sorted(wanted):
            rows = batch[batch["data_type"] == kind.value]
            stamps = rows["ts"].dt.as_unit("us").astype("int64")
            keep = pd.Series(False, index=rows.index)
            for s, e in windows[kind]:
                keep |= (stamps >= s) & (stamps < e)
            inside.append(rows[keep])
            result.covered[kind.value] = list(windows[kind])
        result.batch = concat(inside)
        return result

    def _measures(
        self, user: HealthSyncConfig, wanted: set[HealthDataType], window: DateRange
    ) -> pd.DataFrame:
        samples: dict[HealthDataType, list[Sample]] = {kind: [] for kind in wanted}
        auth = self.connection.auth(user)
        budget = self.connection.budget(user)
        for index, (body, group) in enumerate(self._groups(window, auth, budget)):
            where = f"{NAME} {MEASURE} measuregrps[{index}]"
            moment = datetime.fromtimestamp(payload.number(group, "date", where), tz=UTC)
            if not window.contains(moment):
                continue
            local = moment.astimezone(self._zone(group, body, user, where))
            device = str(group.get("deviceid") or group.get("hash_deviceid") or "")
            by_type: dict[int, float] = {}
            for m, measure in enumerate(payload.items(group, "measures", where)):
                kind = payload.number(measure, "type", f"{where}.measures[{m}]")
                by_type[int(kind)] = measure_value(measure, f"{where}.measures[{m}]")
            for meastype, (kind, _unit) in SINGLE.items():
                if meastype in by_type and kind in wanted:
                    sample = Sample(moment, by_type[meastype], offset_min(local), None, device)
                    samples[kind].append(sample)
            if HealthDataType.BLOOD_PRESSURE in wanted and {SYSTOLIC, DIASTOLIC} & set(by_type):
                for meastype in (SYSTOLIC, DIASTOLIC):
                    if meastype not in by_type:
                        raise payload.bad_field(
                            where, f"measures[type={meastype}]", by_type, "systolic with diastolic"
                        )
                samples[HealthDataType.BLOOD_PRESSURE].append(
                    Sample(
                        moment,
                        by_type[SYSTOLIC],
                        offset_min(local),
                        None,
                        device,
                        diastolic=by_type[DIASTOLIC],
                    )
                )
        units = {kind: unit for kind, unit in SINGLE.values()}
        units[HealthDataType.BLOOD_PRESSURE] = "mmHg"
        return concat(
            samples_batch(NAME, user.user_id, kind, units[kind], samples[kind])
            for kind in sorted(wanted)
        )

    @staticmethod
    def _zone(group: Any, body: Any, user: HealthSyncConfig, where: str) -> ZoneInfo:
        name = group.get("timezone") or body.get("timezone")
        if not name:
            return user.zone
        try:
            return ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise payload.bad_field(where, "timezone", name, "an IANA time zone") from None
