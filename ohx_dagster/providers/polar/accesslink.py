"""Polar AccessLink v3 (https://www.polaraccesslink.com/v3), the Polar cloud API, per connected
person: the heart rate and RR intervals of their exercises (training sessions), realtime through
the application's webhook (accesslink_webhook.py). Shapes and rules: SOURCE.md, AccessLink.

- Exercises: GET /v3/exercises lists the person's exercises (an array of exerciseHashId: `id`,
  `start_time` local without an offset, `start_time_utc_offset` in minutes, `duration` ISO 8601,
  `device`, `device_id`, `sport`, ...). Those overlapping a window are read whole with their
  samples, GET /v3/exercises/{id}?samples=true: `samples` [{"recording-rate", "sample-type",
  "data"}], `data` a comma-separated string of values.
- heart_rate <- sample type "0" (bpm), one value every `recording-rate` seconds from the start.
  A 0 is no reading (the strap or wrist lost contact: inference, as Polar's Sensor Logger files
  write 0 then) and is skipped, as is a documented null.
- rr_intervals <- sample type "11" (ms, recording-rate null): consecutive intervals from the
  start, each stamped at the beat that ends it (start + the intervals so far), as the Polar file
  source stamps them. A null ("sensor offline") breaks the chain: how long the sensor was
  offline is unknown, so the intervals after it cannot be placed in time and are not stored.
- Records: the exercise's local offset, device `polar-<device>-<device_id>` (e.g.
  polar-m400-1111AAAA, as the Polar file source names a sensor), context "workout". A value
  outside the type's hard limits fails the type with the exercise, sample and index named.

Polar lists only exercises uploaded in the last 30 days (and after the person registered with
our client). An answer is authoritative only where it is complete, so coverage is claimed only
from REACH (29 days, a day's margin) before now: an exercise recorded there was uploaded after
it, so it is listed; older stored data is never deleted for not being listed any more. The list
and the exercises read are kept for CACHE_S, so the heart rate read around RR intervals (the
sync's link) and a notification's exercise cost no second request.

Notifications (`event_windows`): an EXERCISE notification names the exercise (`entity_id`); it is
read and its [start, start + duration) is the window for heart rate and RR intervals. An exercise
that is not there (404: deleted, or past the 30 days) makes the whole reach the window.

Tokens: Polar's access tokens are long-lived and come without a refresh token; the token
endpoint wants HTTP Basic client authentication; the person's Polar id is the token answer's
`x_user_id`. After connecting, the person is registered with our client (POST /v3/users,
accesslink_subscriptions.py).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import quote

import pandas as pd

from ohx_dagster.core.coverage import Interval
from ohx_dagster.core.models import HARD_LIMITS, DateRange, HealthDataType, HealthSyncConfig
from ohx_dagster.core.models import HealthDataType as T
from ohx_dagster.core.times import to_us
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import AuthorizeSpec, ProviderApp
from ohx_dagster.providers.api.http import HttpStatusError, TokenSource
from ohx_dagster.providers.api.source import ApiSettings, ApiSource, Sample, samples_batch
from ohx_dagster.providers.base import Event, FetchResult, Windows
from ohx_dagster.providers.polar import accesslink_subscriptions as subscriptions
from ohx_dagster.providers.polar.accesslink_webhook import EXERCISE, NAME
from ohx_dagster.storage.store import RecordStore

EXERCISES: Final = "/v3/exercises"
HR, RR = HealthDataType.HEART_RATE, HealthDataType.RR_INTERVALS
SAMPLE_TYPES: Final = {HR: "0", RR: "11"}
UNITS: Final = {HR: "bpm", RR: "ms"}
CONTEXT: Final = "workout"
# Exercises uploaded in the last 30 days are listed: a day's margin.
REACH: Final = timedelta(days=29)
CACHE_S: Final = 60.0
_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)
_SLUG = re.compile(r"[^a-z0-9]+")
_NULLS: Final = frozenset({"null", ""})


def find_user_id(api: Any, token_answer: Any, access_token: str) -> str:
    """The token answer's `x_user_id` ("Polar Ecosystem user identifier"): the user_id of
    Polar's webhook notifications."""
    user_id = token_answer.get("x_user_id") if isinstance(token_answer, dict) else None
    if isinstance(user_id, bool) or not isinstance(user_id, int | str) or user_id == "":
        raise payload.bad_field(f"{NAME} token exchange", "x_user_id", user_id, "the user's id")
    return str(user_id)


class AccessLinkSource(ApiSource):
    def __init__(self, store: RecordStore, settings: ApiSettings | None = None, **kw: Any):
        settings = settings or ApiSettings.from_env(self.app)
        super().__init__(store, settings, **kw)
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------

    def _get(
        self, user: HealthSyncConfig, endpoint: str, auth: TokenSource, params: dict | None = None
    ) -> Any:
        """The decoded answer, from the cache when it was read less than CACHE_S ago."""
        key = (user.user_id, endpoint + ("?samples=true" if params else ""))
        with self._lock:
            kept = self._cache.get(key)
        if kept is not None and time.monotonic() - kept[0] < CACHE_S:
            return kept[1]
        body = self.connection.api.json(
            "GET", endpoint, auth=auth, params=params, budget=self.connection.budget(user)
        )
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, (at, _) in self._cache.items() if now - at >= CACHE_S]:
                del self._cache[stale]
            self._cache[key] = (now, body)
        return body

    def _exercise(self, user: HealthSyncConfig, exercise_id: str, auth: TokenSource) -> Any:
        endpoint = f"{EXERCISES}/{quote(exercise_id, safe='')}"
        body = self._get(user, endpoint, auth, {"samples": "true"})
        if not isinstance(body, dict):
            raise payload.bad_field(self.connection.where(endpoint), "(body)", body, "an object")
        return body

    def _exercises_in(
        self, user: HealthSyncConfig, window: DateRange, auth: TokenSource
    ) -> list[Any]:
        """The exercises overlapping the window, read with their samples."""
        where = self.connection.where(EXERCISES)
        listed = self._get(user, EXERCISES, auth)
        if not isinstance(listed, list):
            raise payload.bad_field(where, "(body)", listed, "a JSON array of exercises")
        found = []
        for index, item in enumerate(listed):
            at = f"{where} [{index}]"
            start, end = _span(item, at)
            if start < window.end and window.start < end:
                exercise_id = payload.get(item, "id", at, "the exercise's id")
                found.append(self._exercise(user, str(exercise_id), auth))
        return found

    def read(
        self, user: HealthSyncConfig, kind: HealthDataType, window: DateRange, auth: TokenSource
    ) -> pd.DataFrame:
        if kind not in SAMPLE_TYPES:
            return super().read(user, kind, window, auth)
        samples: list[Sample] = []
        for exercise in self._exercises_in(user, window, auth):
            where = self.connection.where(f"{EXERCISES}/{exercise.get('id')}")
            samples += [s for s in _samples(exercise, kind, where) if window.contains(s.at)]
        return samples_batch(NAME, user.user_id, kind, UNITS[kind], samples)

    def fetch_windows(self, user: HealthSyncConfig, windows: Windows) -> FetchResult:
        """As every API source, with coverage only where Polar's answer is complete (REACH)."""
        result = super().fetch_windows(user, windows)
        reach = to_us(self.connection.clock() - REACH)
        for kind in list(result.covered):
            kept = [(max(s, reach), e) for s, e in result.covered[kind] if e > reach]
            if kept:
                result.covered[kind] = kept
            else:
                del result.covered[kind]
        return result

    # -- notifications ---------------------------------------------------------------------------

    def event_windows(
        self, user: HealthSyncConfig, events: Sequence[Event], now: datetime
    ) -> dict[HealthDataType, list[Interval]]:
        kinds = [k for k in SAMPLE_TYPES if k in self.supported_types & user.enabled_types]
        found: dict[HealthDataType, list[Interval]] = {}
        if not kinds:
            return found
        auth = self.connection.auth(user)
        for event in events:
            if event.payload.get("event") != EXERCISE:
                continue
            exercise_id = str(event.payload.get("entity_id", ""))
            window = self._exercise_window(user, exercise_id, auth)
            if window is None:  # gone: whatever Polar still lists
                window = (to_us(now - REACH), to_us(now))
            for kind in kinds:
                found.setdefault(kind, []).append(window)
        return found

    def _exercise_window(
        self, user: HealthSyncConfig, exercise_id: str, auth: TokenSource
    ) -> Interval | None:
        """[start, start + duration) of the exercise; None when Polar has no such exercise."""
        try:
            exercise = self._exercise(user, exercise_id, auth)
        except HttpStatusError as failed:
            if failed.status == 404:
                return None
            raise
        where = self.connection.where(f"{EXERCISES}/{exercise_id}")
        start, end = _span(exercise, where)
        return to_us(start), to_us(end)


def _start(exercise: Any, where: str) -> datetime:
    """`start_time` (local, no offset) at `start_time_utc_offset` minutes from UTC."""
    text = payload.get(exercise, "start_time", where, "a local date-time")
    minutes = payload.get(exercise, "start_time_utc_offset", where, "minutes from UTC")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or abs(minutes) > 18 * 60:
        raise payload.bad_field(where, "start_time_utc_offset", minutes, "minutes from UTC")
    try:
        local = datetime.fromisoformat(str(text))
    except ValueError:
        raise payload.bad_field(where, "start_time", text, "a local date-time") from None
    if local.tzinfo is not None:
        return local
    return local.replace(tzinfo=timezone(timedelta(minutes=minutes)))


def _duration(exercise: Any, where: str) -> timedelta:
    text = payload.get(exercise, "duration", where, "an ISO 8601 duration")
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or not any(match.groupdict().values()) or text.endswith("T"):
        raise payload.bad_field(where, "duration", text, "an ISO 8601 duration like PT2H44M")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(
        days=parts.get("d", 0.0),
        hours=parts.get("h", 0.0),
        minutes=parts.get("m", 0.0),
        seconds=parts.get("s", 0.0),
    )


def _span(exercise: Any, where: str) -> tuple[datetime, datetime]:
    if not isinstance(exercise, dict):
        raise payload.bad_field(where, "(exercise)", exercise, "a JSON object")
    start = _start(exercise, where)
    return start, start + _duration(exercise, where)


def _device(exercise: dict[str, Any]) -> str:
    """polar-<device>-<device_id> (`device` "Polar M400" -> polar-m400-1111AAAA)."""
    name = exercise.get("device")
    slug = _SLUG.sub("-", name.lower()).strip("-") if isinstance(name, str) else ""
    if slug and not slug.startswith("polar"):
        slug = f"polar-{slug}"
    device_id = exercise.get("device_id")
    parts = [slug or "polar", device_id] if isinstance(device_id, str) and device_id else [slug]
    return "-".join(p for p in parts if p)


def _values(sample: dict[str, Any], where: str) -> list[float | None]:
    text = payload.get(sample, "data", where, "comma-separated values")
    if not isinstance(text, str):
        raise payload.bad_field(where, "data", text, "comma-separated values")
    values: list[float | None] = []
    for index, part in enumerate(text.split(",")):
        part = part.strip()
        if part.lower() in _NULLS:
            values.append(None)
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise payload.bad_field(where, f"data[{index}]", part, "a number or null") from None
    return values


def _samples(exercise: dict[str, Any], kind: HealthDataType, where: str) -> list[Sample]:
    """The exercise's samples of one type as Samples (all of them, not cut to a window)."""
    start = _start(exercise, where)
    offset = exercise["start_time_utc_offset"]
    device = _device(exercise)
    listed = exercise.get("samples") or []  # none recorded (a manual entry, no sensor)
    if not isinstance(listed, list):
        raise payload.bad_field(where, "samples", listed, "a JSON array")
    low, high = HARD_LIMITS[kind]
    found: list[Sample] = []
    for number, sample in enumerate(listed):
        at = f"{where} samples[{number}]"
        if not isinstance(sample, dict) or str(sample.get("sample-type")) != SAMPLE_TYPES[kind]:
            continue
        values = _values(sample, at)
        if kind is HR:
            rate = payload.number(sample, "recording-rate", at)
            if rate <= 0:
                raise payload.bad_field(at, "recording-rate", rate, "seconds > 0")
        moment = start
        for index, value in enumerate(values):
            if kind is HR:
                moment = start + timedelta(seconds=index * rate)
                if value is None or value == 0:
                    continue  # offline, or no contact
            else:
                if value is None:
                    break  # the sensor was offline for an unknown time: the chain ends
                moment = moment + timedelta(milliseconds=value)
            if not low <= value <= high:
                raise payload.bad_field(
                    at, f"data[{index}]", value, f"{low:g}..{high:g} {UNITS[kind]} ({kind.value})"
                )
            found.append(Sample(moment, value, offset, device_id=device, context=CONTEXT))
    return found


APP = ProviderApp(
    name=NAME,
    env_prefix="OHX_POLAR_ACCESSLINK",
    api_url="https://www.polaraccesslink.com",
    token_url="https://polarremote.com/v2/oauth2/token",
    # accesslink.read_all: "allows access to user's data", the one scope AccessLink has.
    authorize=AuthorizeSpec(
        "https://flow.polar.com/oauth2/authorization", ("accesslink.read_all",)
    ),
    supported_types=frozenset({T.HEART_RATE, T.RR_INTERVALS}),
    # A watch uploads when it syncs with the phone app or FlowSync, sometimes days later; the
    # exercise list costs one request whatever the window, so a long horizon is cheap.
    resync_horizon=timedelta(hours=72),
    request_limit=subscriptions.REQUEST_LIMIT,
    source=AccessLinkSource,
    find_user_id=find_user_id,
    after_connect=subscriptions.after_connect,
    token_auth="basic",
    refresh_tokens=False,
    webhook="ohx_dagster.providers.polar.accesslink_webhook",
)
AccessLinkSource.app = APP

__all__ = ["APP", "NAME", "AccessLinkSource"]
