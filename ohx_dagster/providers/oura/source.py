"""Oura API v2 (https://api.ouraring.com/v2/usercollection/...), per connected person.

- heart_rate <- heartrate (start_datetime, end_datetime): `bpm` at `timestamp`, about every
  5 minutes, with the sample's `source` (awake, rest, sleep, workout, live, session) kept as the
  record's context, so resting heart rate can be told from workout heart rate. Timestamps are
  UTC: Oura gives no local offset here, so none is stored.
- steps <- daily_activity (start_date, end_date): `steps` of the Oura day, a 24-hour period
  starting 4 a.m. local at `timestamp` (its offset kept), duration 86400 s.
- spo2 <- daily_spo2 (start_date, end_date): `spo2_percentage.average` of the night, stamped at
  local midnight of `day` in the person's zone, duration 86400 s; a null aggregate (documented
  as nullable: no reading that night) is skipped.
- hrv_rmssd <- sleep (start_date, end_date): each 5-minute sample of a sleep period's `hrv`
  (`SampleModel`: `timestamp` of the first, `interval` seconds, `items`, null where no reading),
  at timestamp + i x interval with its offset. Oura computes HRV as rMSSD (its support article
  "Heart Rate Variability": "Oura calculates your nighttime HRV using rMSSD ... five-minute
  samples"), so it is stored as RMSSD, never as SDNN. A deleted sleep, or one without `hrv`, has
  none.
- sleep <- sleep (start_date, end_date): each sleep period but a deleted one, stamped at
  `bedtime_end` with its offset (ohx_dagster/core/sessions.py), lasting until then from
  `bedtime_start`, `total_sleep_duration` seconds asleep, its stages from `sleep_phase_30_sec`
  (or `sleep_phase_5_min`: 1 deep, 2 light, 3 REM, 4 awake) laid from `bedtime_start`, the last
  step cut at the period's end; `type` (long_sleep, sleep, late_nap, rest) kept as its context.
  A period without `total_sleep_duration` counts its asleep stages; with neither, it is skipped.
- workout <- workout (start_date, end_date): each workout stamped at `end_datetime` with its
  offset, lasting from `start_datetime`, its `activity` as the activity, `calories` (kcal) and
  `distance` (meters) as its measures (both nullable); `source` "manual" (entered by the person)
  marks it manual.

Oura has no per-interval steps (daily_activity's `class_5_min` is an activity class, not a
count), no weight, blood pressure or body temperature. Every collection pages with `next_token`;
daily collections are asked for a day more on each side and cut to the window, so a day whose
4 a.m. start falls inside the window is never missed.

Notifications (`event_windows`) name a document: it is fetched by its id and its own times say
what to read again -- a night's heart rate from bedtime_start to bedtime_end, a workout's from
start to end, a day's steps or SpO2. A document that is gone (deleted: 404, or a sleep of type
"deleted"), and every `delete` event, re-read its types over DELETE_REACH back from the event:
the answer for those windows is authoritative, so what the provider no longer holds goes.

Shapes: Oura's OpenAPI (SOURCE.md beside this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd

from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.errors import ProviderError
from ohx_dagster.core.models import DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.records import CONTEXT_CHARS
from ohx_dagster.core.sessions import from_hypnogram, stage_intervals, stage_totals, workout_parts
from ohx_dagster.core.times import to_us
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.http import HttpStatusError, TokenSource, paginate
from ohx_dagster.providers.api.source import ApiSource, Sample, offset_min, samples_batch
from ohx_dagster.providers.base import Event

NAME: Final = "oura"
DEVICE: Final = "oura-ring"
COLLECTION: Final = "/v2/usercollection"
HEARTRATE: Final = f"{COLLECTION}/heartrate"
DAILY_ACTIVITY: Final = f"{COLLECTION}/daily_activity"
DAILY_SPO2: Final = f"{COLLECTION}/daily_spo2"
SLEEP: Final = f"{COLLECTION}/sleep"
WORKOUT: Final = f"{COLLECTION}/workout"
DAY_S: Final = 86_400.0
# How far back a deletion (or a document that is gone) is looked for.
DELETE_REACH: Final = timedelta(days=7)

HR, STEPS, SPO2 = HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.SPO2
HRV, NIGHT, EXERCISE = HealthDataType.HRV_RMSSD, HealthDataType.SLEEP, HealthDataType.WORKOUT
# Oura's hypnograms: the field and the seconds a character stands for, finest first.
HYPNOGRAMS: Final = (("sleep_phase_30_sec", 30.0), ("sleep_phase_5_min", 300.0))
# The data types a notification's document bears on.
DOCUMENT_TYPES: Final[dict[str, tuple[HealthDataType, ...]]] = {
    "sleep": (HR, SPO2, HRV, NIGHT),
    "daily_activity": (STEPS,),
    "daily_spo2": (SPO2,),
    "workout": (HR, EXERCISE),
    "session": (HR,),
}


class OuraSource(ApiSource):
    def _documents(self, endpoint: str, params: dict[str, str], user, auth) -> list[Any]:
        where = self.connection.where(endpoint)
        budget = self.connection.budget(user)

        def page(token: str | None) -> tuple[list[Any], str | None]:
            query = params if token is None else {**params, "next_token": token}
            body = self.connection.api.json("GET", endpoint, auth=auth, params=query, budget=budget)
            if not isinstance(body, dict):
                raise payload.bad_field(where, "(body)", body, "a JSON object")
            token = body.get("next_token")
            if token is not None and not isinstance(token, str):
                raise payload.bad_field(where, "next_token", token, "a string or null")
            return payload.items(body, "data", where), token

        return list(paginate(NAME, endpoint, page))

    def read(
        self, user: HealthSyncConfig, kind: HealthDataType, window: DateRange, auth: TokenSource
    ) -> pd.DataFrame:
        if kind is HR:
            return self._heart_rate(user, window, auth)
        if kind is STEPS:
            return self._steps(user, window, auth)
        if kind is SPO2:
            return self._spo2(user, window, auth)
        if kind is HRV:
            return self._hrv(user, window, auth)
        if kind is NIGHT:
            return self._sleep(user, window, auth)
        if kind is EXERCISE:
            return self._workouts(user, window, auth)
        return super().read(user, kind, window, auth)

    def _heart_rate(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        params = {
            "start_datetime": window.start.isoformat(),
            "end_datetime": window.end.isoformat(),
        }
        where = self.connection.where(HEARTRATE)
        samples = []
        for index, row in enumerate(self._documents(HEARTRATE, params, user, auth)):
            at = f"{where} data[{index}]"
            moment = payload.instant(row, "timestamp", at)
            if window.contains(moment):
                bpm = payload.number(row, "bpm", at)
                source = row.get("source")
                context = source if isinstance(source, str) else ""
                samples.append(Sample(moment, bpm, None, device_id=DEVICE, context=context))
        return samples_batch(NAME, user.user_id, HR, "bpm", samples)

    def _daily(self, endpoint: str, window: DateRange, user, auth) -> list[tuple[str, Any]]:
        """(where, document) of a daily collection around the window."""
        params = {
            "start_date": (window.start - timedelta(days=1)).date().isoformat(),
            "end_date": (window.end + timedelta(days=1)).date().isoformat(),
        }
        where = self.connection.where(endpoint)
        documents = self._documents(endpoint, params, user, auth)
        return [(f"{where} data[{index}]", row) for index, row in enumerate(documents)]

    def _steps(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(DAILY_ACTIVITY, window, user, auth):
            moment = payload.instant(row, "timestamp", at)
            if window.contains(moment):
                steps = payload.number(row, "steps", at)
                samples.append(Sample(moment, steps, offset_min(moment), DAY_S, DEVICE))
        return samples_batch(NAME, user.user_id, STEPS, "steps", samples)

    def _spo2(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(DAILY_SPO2, window, user, auth):
            day = _day(row, at)
            if row.get("spo2_percentage") is None:
                continue  # documented as nullable: no reading that night
            moment = datetime.combine(day, time(0), tzinfo=user.zone)
            if window.contains(moment):
                average = payload.number(row, "spo2_percentage.average", at)
                samples.append(Sample(moment, average, offset_min(moment), DAY_S, DEVICE))
        return samples_batch(NAME, user.user_id, SPO2, "%", samples)

    def _hrv(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(SLEEP, window, user, auth):
            series = row.get("hrv")
            if row.get("type") == "deleted" or series is None:
                continue
            where = f"{at} hrv"
            start = payload.instant(series, "timestamp", where)
            step = timedelta(seconds=payload.number(series, "interval", where))
            for index, item in enumerate(payload.items(series, "items", where)):
                if item is None:
                    continue  # no reading in that interval
                value = payload.number({"item": item}, "item", f"{where} items[{index}]")
                moment = start + index * step
                if window.contains(moment):
                    samples.append(Sample(moment, value, offset_min(moment), None, DEVICE))
        return samples_batch(NAME, user.user_id, HRV, "ms", samples)

    def _sleep(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(SLEEP, window, user, auth):
            if row.get("type") == "deleted":
                continue
            start = payload.instant(row, "bedtime_start", at)
            end = payload.instant(row, "bedtime_end", at)
            if not window.contains(end):
                continue
            length = (end - start).total_seconds()
            stages = _stages(row, length, at)
            asleep = row.get("total_sleep_duration")
            if asleep is not None:
                asleep = payload.number(row, "total_sleep_duration", at)
            elif stages is not None:
                asleep = stage_totals(stages).asleep
            else:
                continue  # neither a total nor stages: nothing to say of the night
            kind = row.get("type")
            samples.append(
                Sample(end, asleep, offset_min(end), length, DEVICE,
                       context=kind if isinstance(kind, str) else "",
                       parts=None if stages is None else stages.ravel().tolist())
            )  # fmt: skip
        return samples_batch(NAME, user.user_id, NIGHT, "s", samples)

    def _workouts(self, user: HealthSyncConfig, window: DateRange, auth: TokenSource):
        samples = []
        for at, row in self._daily(WORKOUT, window, user, auth):
            start = payload.instant(row, "start_datetime", at)
            end = payload.instant(row, "end_datetime", at)
            if not window.contains(end):
                continue
            activity = payload.get(row, "activity", at, "the activity's name")
            if not isinstance(activity, str) or not 0 < len(activity) <= CONTEXT_CHARS:
                raise payload.bad_field(at, "activity", activity, f"a name of 1..{CONTEXT_CHARS}")
            energy, distance = (
                np.nan if row.get(name) is None else payload.number(row, name, at)
                for name in ("calories", "distance")
            )
            length = (end - start).total_seconds()
            samples.append(
                Sample(end, length / 60.0, offset_min(end), length, DEVICE, context=activity,
                       method="manual" if row.get("source") == "manual" else "device",
                       parts=workout_parts(energy=energy, distance=distance))
            )  # fmt: skip
        return samples_batch(NAME, user.user_id, EXERCISE, "min", samples)

    # -- notifications ---------------------------------------------------------------------------

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        wanted = self.supported_types & user.enabled_types
        auth = self.connection.auth(user)
        found: dict[HealthDataType, list[Interval]] = {}
        for event in events:
            document_type = str(event.payload.get("data_type", ""))
            kinds = [k for k in DOCUMENT_TYPES.get(document_type, ()) if k in wanted]
            if not kinds:
                continue
            windows = None
            if event.payload.get("event_type") != "delete":
                windows = self._document_windows(user, document_type, event, auth)
            if windows is None:  # deleted, or gone already: look back for what went
                since = (event.occurred_at or event.received_at) - DELETE_REACH
                windows = {kind: (to_us(since), to_us(now)) for kind in kinds}
            for kind, window in windows.items():
                if kind in wanted:
                    found.setdefault(kind, []).append(window)
        return found

    def _document_windows(
        self, user: HealthSyncConfig, document_type: str, event: Event, auth: TokenSource
    ) -> dict[HealthDataType, Interval] | None:
        """The windows a notification's document covers; None when the document is gone."""
        object_id = str(event.payload.get("object_id", ""))
        endpoint = f"{COLLECTION}/{document_type}/{object_id}"
        where = self.connection.where(endpoint)
        try:
            document = self.connection.api.json(
                "GET", endpoint, auth=auth, budget=self.connection.budget(user)
            )
        except HttpStatusError as failed:
            if failed.status == 404:
                return None
            raise
        if not isinstance(document, dict):
            raise payload.bad_field(where, "(body)", document, "a JSON object")
        if document_type == "sleep":
            if document.get("type") == "deleted":
                return None
            start = payload.instant(document, "bedtime_start", where)
            end = payload.instant(document, "bedtime_end", where)
            return {
                HR: (to_us(start), to_us(end) + 1),
                SPO2: _local_day(_day(document, where), user),
                HRV: (to_us(start), to_us(end) + 1),
                NIGHT: (to_us(end), to_us(end) + 1),
            }
        if document_type in ("workout", "session"):
            start = payload.instant(document, "start_datetime", where)
            end = payload.instant(document, "end_datetime", where)
            if document_type == "workout":
                return {HR: (to_us(start), to_us(end) + 1), EXERCISE: (to_us(end), to_us(end) + 1)}
            return {HR: (to_us(start), to_us(end) + 1)}
        if document_type == "daily_activity":
            moment = payload.instant(document, "timestamp", where)
            return {STEPS: (to_us(moment), to_us(moment) + 1)}
        if document_type == "daily_spo2":
            return {SPO2: _local_day(_day(document, where), user)}
        raise ProviderError(f"{where}: no window for an Oura {document_type!r} document")


def _stages(row: Any, length_s: float, where: str) -> np.ndarray | None:
    """A period's stages from its finest hypnogram, laid from bedtime_start: the last step, which
    the period may end inside, is cut at its end (more than a step beyond it is an error)."""
    for field, step in HYPNOGRAMS:
        text = row.get(field)
        if not isinstance(text, str) or not text:
            continue
        if len(text) * step > length_s + step:
            raise payload.bad_field(
                where,
                field,
                f"{len(text)} steps",
                f"at most {length_s / step:g} steps of {step:g} s",
            )
        rows = from_hypnogram(text, step, f"{where} {field}").reshape(-1, 3)
        rows[:, 1] = np.minimum(rows[:, 1], length_s)
        return stage_intervals(rows[rows[:, 1] > rows[:, 0]].ravel(), length_s, where)
    return None


def _day(document: Any, where: str) -> date:
    text = payload.get(document, "day", where, "a date YYYY-MM-DD")
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise payload.bad_field(where, "day", text, "a date YYYY-MM-DD") from None


def _local_day(day: date, user: HealthSyncConfig) -> Interval:
    start = datetime.combine(day, time(0), tzinfo=user.zone)
    return to_us(start), to_us(start + timedelta(days=1))
