"""Oura API v2 (https://api.ouraring.com/v2/usercollection/...), per connected user.

- heart_rate <- heartrate (start_datetime, end_datetime): `bpm` at `timestamp`, about every
  5 minutes. Timestamps are UTC: Oura gives no local offset here, so none is stored.
- steps <- daily_activity (start_date, end_date): `steps` of the Oura day, a 24-hour period
  starting 4 a.m. local at `timestamp` (its offset kept), duration 86400 s.
- spo2 <- daily_spo2 (start_date, end_date): `spo2_percentage.average` of the night, stamped at
  local midnight of `day` in the user's zone, duration 86400 s; a null aggregate (documented as
  nullable: no reading that night) is skipped.

Oura has no per-interval steps (daily_activity's `class_5_min` is an activity class, not a
count), no weight, blood pressure or body temperature: those types yield nothing. Every
collection pages with `next_token`; daily collections are asked for a day more on each side
and cut to the window, so a day whose 4 a.m. start falls inside the window is never missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import pandas as pd

from ohx_dagster.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.providers import payload
from ohx_dagster.providers.api import ApiSource, Sample, offset_min, samples_batch
from ohx_dagster.providers.http import TokenSource, paginate
from ohx_dagster.records import concat

NAME: Final = "oura"
DEVICE: Final = "oura-ring"
HEARTRATE: Final = "/v2/usercollection/heartrate"
DAILY_ACTIVITY: Final = "/v2/usercollection/daily_activity"
DAILY_SPO2: Final = "/v2/usercollection/daily_spo2"
DAY_S: Final = 86_400.0


class OuraSource(ApiSource):
    name = NAME

    def _documents(self, endpoint: str, params: dict[str, str], auth: TokenSource) -> list[Any]:
        where = self.connection.where(endpoint)

        def page(token: str | None) -> tuple[list[Any], str | None]:
            query = params if token is None else {**params, "next_token": token}
            body = self.connection.api.json("GET", endpoint, auth=auth, params=query)
            if not isinstance(body, dict):
                raise payload.bad_field(where, "(body)", body, "a JSON object")
            token = body.get("next_token")
            if token is not None and not isinstance(token, str):
                raise payload.bad_field(where, "next_token", token, "a string or null")
            return payload.items(body, "data", where), token

        return list(paginate(NAME, endpoint, page))

    def fetch(
        self,
        user: HealthSyncConfig,
        data_types: Iterable[HealthDataType],
        window: DateRange,
        *,
        batch_size: int = 1000,
    ) -> pd.DataFrame:
        readers: dict[HealthDataType, Callable[..., pd.DataFrame]] = {
            HealthDataType.HEART_RATE: self._heart_rate,
            HealthDataType.STEPS: self._steps,
            HealthDataType.SPO2: self._spo2,
        }
        auth = self.connection.auth(user)
        kinds = sorted({HealthDataType(t) for t in data_types} & set(readers))
        return concat(readers[kind](user, window, auth) for kind in kinds)

    def _heart_rate(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        params = {
            "start_datetime": window.start.isoformat(),
            "end_datetime": window.end.isoformat(),
        }
        where = self.connection.where(HEARTRATE)
        samples = []
        for index, row in enumerate(self._documents(HEARTRATE, params, auth)):
            at = f"{where} data[{index}]"
            moment = payload.instant(row, "timestamp", at)
            if window.contains(moment):
                bpm = payload.number(row, "bpm", at)
                samples.append(Sample(moment, bpm, None, device_id=DEVICE))
        return samples_batch(NAME, user.user_id, HealthDataType.HEART_RATE, "bpm", samples)

    def _daily(self, endpoint: str, window: DateRange, auth: TokenSource) -> list[tuple[str, Any]]:
        """(where, document) of a daily collection around the window."""
        params = {
            "start_date": (window.start - timedelta(days=1)).date().isoformat(),
            "end_date": (window.end + timedelta(days=1)).date().isoformat(),
        }
        where = self.connection.where(endpoint)
        documents = self._documents(endpoint, params, auth)
        return [(f"{where} data[{index}]", row) for index, row in enumerate(documents)]

    def _steps(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(DAILY_ACTIVITY, window, auth):
            moment = payload.instant(row, "timestamp", at)
            if window.contains(moment):
                steps = payload.number(row, "steps", at)
                samples.append(Sample(moment, steps, offset_min(moment), DAY_S, DEVICE))
        return samples_batch(NAME, user.user_id, HealthDataType.STEPS, "steps", samples)

    def _spo2(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(DAILY_SPO2, window, auth):
            day_text = payload.get(row, "day", at, "a date YYYY-MM-DD")
            try:
                day = date.fromisoformat(str(day_text))
            except ValueError:
                raise payload.bad_field(at, "day", day_text, "a date YYYY-MM-DD") from None
            if row.get("spo2_percentage") is None:
                continue  # documented as nullable: no reading that night
            moment = datetime.combine(day, time(0), tzinfo=user.zone)
            if window.contains(moment):
                average = payload.number(row, "spo2_percentage.average", at)
                samples.append(Sample(moment, average, offset_min(moment), DAY_S, DEVICE))
        return samples_batch(NAME, user.user_id, HealthDataType.SPO2, "%", samples)
