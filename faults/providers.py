"""Providers that hold known data, for the fault scenarios.

- `SimulatedTruth`: what the simulated provider holds (it is deterministic: the same call on the
  scenario's clock).
- `OuraModel`: Oura's API v2 on a local HTTP server (tests/support/provider_api_server.py),
  answering the documented shapes (ohx_dagster/providers/oura/fixtures) from samples it holds per
  person: heart rate (5-minute rows with their `source`), daily activity (steps at the Oura day's 4
  a.m. local `timestamp`), daily SpO2 (stored at local midnight of `day`), sleep documents; samples
  can arrive late (`visible_at`) and be deleted. OAuth: access tokens expire, refresh tokens rotate
  and are spent once (a reused one answers 400 invalid_grant).
- `WithingsModel`: Withings' /measure getmeas and the token endpoint, with weighings that carry
  `date` and `modified` (what `lastupdate` selects on), wrapped answers {"status", "body"}.

Faults are scripted per endpoint (`fail(endpoint, *answers)`: the next calls get these answers,
in order, before the provider answers normally again) or held (`refuse`: 403 until lifted).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from provider_api_server import Answer, Call, FakeApi, answer, documented

from faults.harness import Clock, Key, batch_keys
from ohx_dagster.core.models import DateRange, HealthSyncConfig
from ohx_dagster.core.times import from_us, to_us
from ohx_dagster.providers.api.source import ApiSettings
from ohx_dagster.providers.api.tokens import OAuthClient, OAuthTokens, connect_user
from ohx_dagster.providers.oura import OuraSource
from ohx_dagster.providers.oura.source import DAILY_ACTIVITY, DAILY_SPO2, DEVICE, HEARTRATE
from ohx_dagster.providers.simulated import SimulatedSource
from ohx_dagster.providers.withings import WithingsSource
from ohx_dagster.storage.store import RecordStore

HR, STEPS, SPO2 = "heart_rate", "steps", "spo2"
WEIGHT = "weight"


class SimulatedTruth:
    """The simulated provider's history, as of a moment (nothing after it)."""

    def __init__(self, people: int, seed: int, hr_hz: float | None, user_ids: Iterable[str]):
        self.people, self.seed, self.hr_hz = people, seed, hr_hz
        self.user_ids = set(user_ids)

    def held(self, start_us: int, end_us: int, at: datetime) -> dict[Key, Any]:
        source = SimulatedSource(self.people, seed=self.seed, clock=lambda: at, hr_hz=self.hr_hz)
        window = DateRange(from_us(start_us), from_us(end_us))
        found: dict[Key, Any] = {}
        for config in source.discover_users():
            if config.user_id in self.user_ids:
                batch = source.fetch(config, config.enabled_types, window, batch_size=0)
                found |= batch_keys(batch)[0]
        return found


class MutableSimulated(SimulatedSource):
    """The simulated provider, whose history can arrive late and be deleted: samples of a late
    window are not there before their upload time; deleted ones are gone from then on. It
    discovers only `chosen` people (the store's configs decide their settings)."""

    def __init__(self, people: int, *, seed: int, clock: Clock, hr_hz: float | None) -> None:
        super().__init__(people, seed=seed, clock=clock, hr_hz=hr_hz)
        self.chosen: list[HealthSyncConfig] = SimulatedSource.discover_users(self)
        self.late: list[tuple[str, int, int, datetime]] = []  # person, start, end, uploaded
        self.deleted: list[tuple[str, str, int, int]] = []  # person, type, start, end

    def discover_users(self) -> list[HealthSyncConfig]:
        return list(self.chosen)

    def fetch(self, user, data_types, window, *, batch_size: int = 1000):
        batch = super().fetch(user, data_types, window, batch_size=batch_size)
        return self.present(batch, self.clock())

    def present(self, batch, at: datetime):
        """The rows of a batch the provider holds at `at`."""
        if batch.empty or not (self.late or self.deleted):
            return batch
        ts = batch["ts"].dt.as_unit("us").astype("int64").to_numpy()
        keep = np.ones(len(batch), dtype=bool)
        users = batch["user_id"].to_numpy()
        kinds = batch["data_type"].astype(str).to_numpy()
        for person, start, end, uploaded in self.late:
            if uploaded > at:
                keep &= ~((users == person) & (ts >= start) & (ts < end))
        for person, kind, start, end in self.deleted:
            keep &= ~((users == person) & (kinds == kind) & (ts >= start) & (ts < end))
        return batch[keep].reset_index(drop=True)

    def held(self, start_us: int, end_us: int, at: datetime) -> dict[Key, Any]:
        source = SimulatedSource(len(self.profiles), seed=self.seed, clock=lambda: at,
                                 hr_hz=None if self.hr_period_us is None
                                 else 1_000_000 / self.hr_period_us)  # fmt: skip
        window = DateRange(from_us(start_us), from_us(end_us))
        found: dict[Key, Any] = {}
        for config in self.chosen:
            batch = source.fetch(config, config.enabled_types, window, batch_size=0)
            found |= batch_keys(self.present(batch, at))[0]
        return found


@dataclass
class Sample:
    value: float
    visible_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False


class ProviderModel:
    """Samples per person, OAuth state, and scripted faults; shared by the two API models."""

    def __init__(self, api: FakeApi, clock: Clock) -> None:
        self.api = api
        self.clock = clock
        self.lock = threading.RLock()
        self.samples: dict[Key, Sample] = {}
        self.zones: dict[str, ZoneInfo] = {}
        self.access: dict[str, tuple[str, datetime]] = {}  # token -> (person, expiry)
        self.refresh_tokens: dict[str, str] = {}  # person -> current refresh token
        self.issued = 0
        self.script: dict[str, list[Answer]] = {}
        self.refused: dict[str, str] = {}
        self.lose_next_token_answer = False
        # Revoke a person's access token after this many more data calls (expiry mid-run).
        self.revoke_after: dict[str, int] = {}
        self.data_calls = 0
        # endpoint -> (field, new name, calls): answers with a field renamed, that many times.
        self.renamed: dict[str, tuple[str, str, int]] = {}

    # -- what it holds ----------------------------------------------------------------------------

    def hold(self, key: Key, value: float, *, visible_at: datetime | None = None, **extra) -> None:
        with self.lock:
            self.samples[key] = Sample(value, visible_at or self.clock.now, extra)

    def delete(self, predicate: Callable[[Key], bool]) -> int:
        with self.lock:
            gone = [k for k, s in self.samples.items() if predicate(k) and not s.deleted]
            for key in gone:
                self.samples[key].deleted = True
        return len(gone)

    def visible(self, at: datetime | None = None) -> dict[Key, Sample]:
        at = at or self.clock.now
        with self.lock:
            return {k: s for k, s in self.samples.items() if not s.deleted and s.visible_at <= at}

    def held(self, start_us: int, end_us: int, at: datetime) -> dict[Key, Any]:
        return {
            k: round(float(s.value), 6)
            for k, s in self.visible(at).items()
            if start_us <= k[2] < end_us
        }

    # -- faults -----------------------------------------------------------------------------------

    def fail(self, endpoint: str, *answers: Answer) -> None:
        """The endpoint's next calls get these answers, then it answers normally again."""
        with self.lock:
            self.script.setdefault(endpoint, []).extend(answers)

    def scripted(self, endpoint: str) -> Answer | None:
        with self.lock:
            pending = self.script.get(endpoint)
            return pending.pop(0) if pending else None

    def rename(self, endpoint: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows with a field renamed, while the endpoint's renaming lasts."""
        with self.lock:
            if endpoint not in self.renamed:
                return rows
            old, new, times = self.renamed[endpoint]
            if times <= 1:
                del self.renamed[endpoint]
            else:
                self.renamed[endpoint] = (old, new, times - 1)
        return [{(new if k == old else k): v for k, v in row.items()} for row in rows]

    # -- OAuth ------------------------------------------------------------------------------------

    def issue(self, person: str, lifetime: timedelta = timedelta(hours=24)) -> OAuthTokens:
        with self.lock:
            self.issued += 1
            access, refresh = f"at-{person}-{self.issued}", f"rt-{person}-{self.issued}"
            self.access[access] = (person, self.clock.now + lifetime)
            self.refresh_tokens[person] = refresh
        return OAuthTokens(access, refresh, self.clock.now + lifetime)

    def person_of(self, call: Call) -> str | None:
        """The person the bearer token names, when it is valid now."""
        token = call.bearer or call.form.get("access_token")
        with self.lock:
            found = self.access.get(token or "")
            if found is None or found[1] <= self.clock.now:
                return None
            person = found[0]
            self.data_calls += 1
            if person in self.revoke_after:
                self.revoke_after[person] -= 1
                if self.revoke_after[person] < 0:
                    del self.revoke_after[person]
                    del self.access[token or ""]
                    return None
            return person

    def refresh_grant(self, refresh_token: str) -> OAuthTokens | None:
        """Rotate: the current refresh token buys a new pair once; None: invalid_grant."""
        person = next((p for p, t in self.refresh_tokens.items() if t == refresh_token), None)
        if person is None:
            return None
        return self.issue(person)


# -- Oura ------------------------------------------------------------------------------------------

PAGE = 100


class OuraModel(ProviderModel):
    def __init__(self, api: FakeApi, clock: Clock) -> None:
        super().__init__(api, clock)
        self.documents: dict[str, dict[str, Any]] = {}
        api.on(HEARTRATE, self._heart)
        api.on(DAILY_ACTIVITY, lambda call: self._daily(call, "daily_activity", STEPS))
        api.on(DAILY_SPO2, lambda call: self._daily(call, "daily_spo2", SPO2))
        api.on("/oauth/token", self._token)

    def settings(self) -> ApiSettings:
        return ApiSettings(
            "oura",
            self.api.base_url,
            OAuthClient("oura", f"{self.api.base_url}/oauth/token", "faults-client", "cs"),
        )

    def source(self, store: RecordStore) -> OuraSource:
        return OuraSource(store, self.settings(), backoff_s=0.0, clock=self.clock)

    def connect(self, store: RecordStore, config: HealthSyncConfig) -> None:
        self.zones[config.user_id] = config.zone
        connect_user(store, "oura", config.user_id, self.issue(config.user_id), config)

    # -- holding ------------------------------------------------------------------------------

    def heart_rate(
        self, person: str, start: datetime, end: datetime, *, step=timedelta(minutes=5),
        source: str = "awake", visible_at: datetime | None = None, bpm: int = 60,
    ) -> list[Key]:  # fmt: skip
        keys = []
        moment = start
        while moment < end:
            key = (person, HR, to_us(moment), DEVICE)
            self.hold(key, float(bpm + (to_us(moment) // 300_000_000) % 17), visible_at=visible_at,
                      source=source)  # fmt: skip
            keys.append(key)
            moment += step
        return keys

    def day_summary(
        self, person: str, day: date, *, steps: int = 8000, spo2: float = 96.0,
        visible_at: datetime | None = None,
    ) -> list[Key]:  # fmt: skip
        """Oura's daily activity (steps of the Oura day from 4 a.m. local) and the night's SpO2."""
        zone = self.zones[person]
        four = datetime.combine(day, time(4), tzinfo=zone)
        midnight = datetime.combine(day, time(0), tzinfo=zone)
        keys = [(person, STEPS, to_us(four), DEVICE), (person, SPO2, to_us(midnight), DEVICE)]
        self.hold(keys[0], float(steps + day.toordinal() % 500), visible_at=visible_at,
                  day=day.isoformat(), timestamp=four.isoformat())  # fmt: skip
        self.hold(keys[1], spo2, visible_at=visible_at, day=day.isoformat())
        return keys

    def sleep(self, person: str, object_id: str, start: datetime, end: datetime) -> None:
        """A sleep document (Oura's shape) named by a notification."""
        zone = self.zones[person]
        body = {
            **documented("oura", "sleep"),
            "id": object_id,
            "bedtime_start": start.astimezone(zone).isoformat(),
            "bedtime_end": end.astimezone(zone).isoformat(),
            "day": end.astimezone(zone).date().isoformat(),
        }
        path = f"/v2/usercollection/sleep/{object_id}"
        self.documents[path] = body
        self.api.on(path, lambda call, p=path: self._document(call, p))

    def forget(self, object_id: str) -> None:
        self.documents.pop(f"/v2/usercollection/sleep/{object_id}", None)

    # -- answering ------------------------------------------------------------------------------

    def _guard(self, call: Call, name: str) -> tuple[Answer | None, str | None]:
        scripted = self.scripted(name)
        if scripted is not None:
            return scripted, None
        person = self.person_of(call)
        if person is None:
            error = {**documented("oura", "error"), "status": 401, "title": "Unauthorized",
                     "detail": "token expired"}  # fmt: skip
            return answer(401, error), None
        if name in self.refused:
            return answer(403, {**documented("oura", "error"), "status": 403, "title": "Forbidden",
                                "detail": self.refused[name]}), None  # fmt: skip
        return None, person

    def _heart(self, call: Call) -> Answer:
        early, person = self._guard(call, "heartrate")
        if early is not None:
            return early
        start = datetime.fromisoformat(call.query["start_datetime"])
        end = datetime.fromisoformat(call.query["end_datetime"])
        template = documented("oura", "heartrate")["data"][0]
        rows = []
        for (who, kind, stamp, _), sample in sorted(self.visible().items()):
            moment = from_us(stamp)
            if who == person and kind == HR and start <= moment <= end:
                rows.append({**template, "timestamp": moment.isoformat(),
                             "timestamp_unix": stamp // 1000, "bpm": int(sample.value),
                             "source": sample.extra.get("source", "awake")})  # fmt: skip
        rows = self.rename("heartrate", rows)
        offset = int(call.query.get("next_token") or 0)
        page = rows[offset : offset + PAGE]
        more = offset + PAGE < len(rows)
        return answer(200, {"data": page, "next_token": str(offset + PAGE) if more else None})

    def _daily(self, call: Call, name: str, kind: str) -> Answer:
        early, person = self._guard(call, name)
        if early is not None:
            return early
        first = date.fromisoformat(call.query["start_date"])
        last = date.fromisoformat(call.query["end_date"])
        documents = []
        for (who, held_kind, _, _), sample in sorted(self.visible().items()):
            if who != person or held_kind != kind:
                continue
            day = date.fromisoformat(sample.extra["day"])
            if not first <= day <= last:
                continue
            if kind == STEPS:
                documents.append({**documented("oura", "daily_activity"), "id": f"act-{day}",
                                  "day": day.isoformat(), "steps": int(sample.value),
                                  "timestamp": sample.extra["timestamp"]})  # fmt: skip
            else:
                documents.append({**documented("oura", "daily_spo2"), "id": f"spo2-{day}",
                                  "day": day.isoformat(),
                                  "spo2_percentage": {"average": sample.value}})  # fmt: skip
        return answer(200, {"data": documents, "next_token": None})

    def _document(self, call: Call, path: str) -> Answer:
        early, _ = self._guard(call, "sleep")
        if early is not None:
            return early
        if path not in self.documents:
            return answer(404, {**documented("oura", "error"), "status": 404,
                                "title": "Not Found", "detail": "no such document"})  # fmt: skip
        return answer(200, self.documents[path])

    def _token(self, call: Call) -> Answer:
        with self.lock:
            granted = self.refresh_grant(call.form.get("refresh_token", ""))
            lost = self.lose_next_token_answer and granted is not None
            if lost:
                self.lose_next_token_answer = False
        if granted is None:
            return answer(
                400, {"error": "invalid_grant", "error_description": "refresh token spent"}
            )
        if lost:
            # The provider rotated the token; its answer never reaches us.
            return answer(502, b"<html>bad gateway</html>")
        body = {"access_token": granted.access_token, "refresh_token": granted.refresh_token,
                "expires_in": 86400, "token_type": "bearer"}  # fmt: skip
        return answer(200, body)


# -- Withings --------------------------------------------------------------------------------------

MEASURE = "/measure"
TOKEN = "/v2/oauth2"


class WithingsModel(ProviderModel):
    """Weighings (getmeas meastype 1) per person; the person id is Withings' `userid`."""

    def __init__(self, api: FakeApi, clock: Clock) -> None:
        super().__init__(api, clock)
        self.getmeas_calls: list[dict[str, str]] = []
        api.on(MEASURE, self._measure)
        api.on(TOKEN, self._token)

    def settings(self) -> ApiSettings:
        return ApiSettings(
            "withings",
            self.api.base_url,
            OAuthClient("withings", f"{self.api.base_url}{TOKEN}", "faults-client", "cs",
                        extra_params={"action": "requesttoken"}, wrapped=True),
        )  # fmt: skip

    def source(self, store: RecordStore) -> WithingsSource:
        return WithingsSource(store, self.settings(), backoff_s=0.0, clock=self.clock)

    def connect(self, store: RecordStore, config: HealthSyncConfig) -> None:
        self.zones[config.user_id] = config.zone
        connect_user(store, "withings", config.user_id, self.issue(config.user_id), config)

    def weighing(
        self, person: str, moment: datetime, kg: float, *, device: str = "scale-1",
        uploaded: datetime | None = None,
    ) -> Key:  # fmt: skip
        key = (person, WEIGHT, to_us(moment.replace(microsecond=0)), device)
        self.hold(key, kg, visible_at=uploaded or self.clock.now)
        return key

    def _measure(self, call: Call) -> Answer:
        scripted = self.scripted("getmeas")
        if scripted is not None:
            return scripted
        person = self.person_of(call)
        if person is None:
            return answer(200, documented("withings", "invalid_token"))
        form = call.form
        with self.lock:
            self.getmeas_calls.append(dict(form))
        now_s = int(self.clock.now.timestamp())
        template = documented("withings", "getmeas")["body"]
        group_template = template["measuregrps"][0]
        groups = []
        for (who, kind, stamp, device), sample in sorted(self.visible().items()):
            if who != person or kind != WEIGHT:
                continue
            at_s = stamp // 1_000_000
            modified = int(sample.visible_at.timestamp())
            if "lastupdate" in form:
                if modified < int(form["lastupdate"]):
                    continue
            elif not int(form["startdate"]) <= at_s <= int(form["enddate"]):
                continue
            grams = round(sample.value * 1000)
            groups.append({**group_template, "grpid": at_s, "attrib": 0, "date": at_s,
                           "created": modified, "modified": modified, "deviceid": device,
                           "hash_deviceid": device,
                           "measures": [{"value": grams, "type": 1, "unit": -3, "algo": 0,
                                         "position": 1}]})  # fmt: skip
        body = {**template, "updatetime": now_s, "timezone": str(self.zones[person]),
                "measuregrps": groups, "more": 0, "offset": 0}  # fmt: skip
        return answer(200, {"status": 0, "body": body})

    def _token(self, call: Call) -> Answer:
        with self.lock:
            granted = self.refresh_grant(call.form.get("refresh_token", ""))
        if granted is None:
            return answer(200, {"status": 503, "body": {},
                                "error": "Invalid Params: invalid refresh_token"})  # fmt: skip
        body = {**documented("withings", "token")["body"], "access_token": granted.access_token,
                "refresh_token": granted.refresh_token, "userid": 1}  # fmt: skip
        return answer(200, {"status": 0, "body": body})


def utc(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)
