"""Withings notifications (ohx_dagster/providers/withings/webhook.py): the documented form body ->
inbox events, event keys (a retry vs a new notification), what is kept as ignored, and the route
through the real receiver: HEAD check, callback token, unknown users, appli 46 unlink."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
import pytest
from provider_api_server import documented

from ohx_dagster.config.receiver import ReceiverLimits, WebhookSecrets
from ohx_dagster.core.errors import ValidationError
from ohx_dagster.core.models import HealthSyncConfig
from ohx_dagster.privacy.subjects import erasure_salt, subject_hash
from ohx_dagster.providers.withings.codes import UNLINKED
from ohx_dagster.providers.withings.webhook import parse_form, parse_notification
from ohx_dagster.receiver.app import create_app
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import ACTIVE, DISCONNECTED, RecordStore
from ohx_dagster.sync.inbox import Inbox

NOTIFICATION = documented("withings", "notification")  # Withings' example: appli 1, 34 h
UNLINK = documented("withings", "notification_unlink")
TOKEN = "withings-callback-token"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def kinds(form: dict[str, str]) -> list[str | None]:
    return [e.data_type for e in parse_notification(form)]


def test_each_appli_announces_its_types() -> None:
    events = parse_notification(NOTIFICATION)
    assert [e.data_type for e in events] == ["weight", "temperature"]
    assert all(e.payload == NOTIFICATION and e.ignored_reason is None for e in events)
    assert events[0].occurred_at == datetime.fromtimestamp(1530698753, UTC)  # the range's end
    assert len({e.event_key for e in events}) == 2
    assert kinds({**NOTIFICATION, "appli": "2"}) == ["temperature"]
    assert kinds({**NOTIFICATION, "appli": "4"}) == ["blood_pressure", "heart_rate", "spo2"]
    assert kinds({**NOTIFICATION, "appli": "16"}) == ["steps", "heart_rate", "workout"]
    assert kinds({**NOTIFICATION, "appli": "44"}) == ["heart_rate", "sleep"]
    assert kinds({**NOTIFICATION, "appli": "54"}) == ["ecg"]


def test_a_retry_dedups_and_a_new_range_or_a_deletion_does_not() -> None:
    first = [e.event_key for e in parse_notification(NOTIFICATION)]
    assert first == [e.event_key for e in parse_notification(dict(NOTIFICATION))]
    newer = {**NOTIFICATION, "startdate": "1530700000", "enddate": "1530701000"}
    assert set(first).isdisjoint(e.event_key for e in parse_notification(newer))
    deletion = {**NOTIFICATION, "action": "delete"}
    assert set(first).isdisjoint(e.event_key for e in parse_notification(deletion))
    night = parse_notification({"userid": "12345", "appli": "44", "date": "2018-07-03"})
    assert [e.data_type for e in night] == ["heart_rate", "sleep"]
    assert {e.occurred_at for e in night} == {datetime(2018, 7, 3, 12, tzinfo=UTC)}


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        (UNLINK, UNLINKED["unlink"]),
        ({**UNLINK, "action": "delete"}, UNLINKED["delete"]),
        ({**UNLINK, "action": "update"}, "withings appli 46: user profile event (action 'update')"),
        ({"userid": "12345", "appli": "50"}, "withings appli 50: bed in"),
        ({**NOTIFICATION, "appli": "58"}, "withings appli 58: glucose is not a health data type"),
        ({**NOTIFICATION, "appli": "62"}, "withings appli 62: not a notification category"),
        ({"userid": "12345", "appli": "999"}, "withings appli 999: not a notification category"),
    ],
)
def test_what_is_acknowledged_but_kept_as_ignored(form: dict[str, str], reason: str) -> None:
    [event] = parse_notification(form)
    assert event.data_type is None and event.ignored_reason is not None
    assert event.ignored_reason.startswith(reason)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({**NOTIFICATION, "appli": "x"}, "appli"),
        ({k: v for k, v in NOTIFICATION.items() if k != "userid"}, "userid"),
        ({k: v for k, v in NOTIFICATION.items() if k != "appli"}, "appli"),
        ({"userid": "12345", "appli": "1"}, "startdate"),  # data without a range or a date
        ({**NOTIFICATION, "enddate": "soon"}, "enddate"),
        ({**NOTIFICATION, "startdate": "-5"}, "startdate"),
        ({**NOTIFICATION, "userid": "1" * 200}, "user_id"),  # longer than the inbox holds
        ({"userid": "12345", "appli": "44", "date": "March"}, "date"),
    ],
)
def test_malformed_notifications_name_the_field(form: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_notification(form)
    assert error.value.field == field


def test_the_body_is_form_encoded() -> None:
    assert parse_form(urlencode(NOTIFICATION).encode()) == NOTIFICATION
    with pytest.raises(ValidationError) as error:
        parse_form(b"\xff\xfe")
    assert error.value.field == "body"


# -- the route -------------------------------------------------------------------------------------


@pytest.fixture
def receiver(store: RecordStore) -> Iterator[str]:
    store.add_users([HealthSyncConfig(user_id="12345", provider="withings")])
    secrets = WebhookSecrets(withings_token=TOKEN)
    app = create_app(store, secrets, limits=ReceiverLimits(rate_per_minute=0))
    with serve_in_thread(app) as url:
        yield url


def post(url: str, form: dict[str, str] | bytes, token: str | None = TOKEN) -> httpx.Response:
    body = form if isinstance(form, bytes) else urlencode(form).encode()
    query = "" if token is None else f"?token={token}"
    return httpx.post(f"{url}/webhooks/withings{query}", content=body, headers=FORM, timeout=10)


def test_the_route_checks_the_token_and_the_user(receiver: str, store: RecordStore) -> None:
    assert httpx.head(f"{receiver}/webhooks/withings", timeout=10).status_code == 200
    ok = post(receiver, NOTIFICATION)
    assert ok.status_code == 200 and ok.json() == {"accepted": 2, "duplicates": 0}
    assert post(receiver, NOTIFICATION).json() == {"accepted": 0, "duplicates": 2}
    assert post(receiver, NOTIFICATION, token=None).status_code == 401
    assert post(receiver, NOTIFICATION, token=TOKEN + "x").status_code == 401
    stranger = post(receiver, {**NOTIFICATION, "userid": "99999"})
    # Named by the account's salted subject (the receiver logs it), never by its id.
    assert stranger.status_code == 401 and "99999" not in stranger.json()["error"]
    assert subject_hash("withings", "99999", salt=erasure_salt())[:12] in stranger.json()["error"]
    malformed = post(receiver, {**NOTIFICATION, "appli": "x"})
    assert malformed.status_code == 400 and malformed.json()["field"] == "appli"
    assert post(receiver, b"\xff\xfe").status_code == 400
    assert Inbox(store).counts() == {"pending": 2, "dispatched": 0, "ignored": 0}


def test_an_unknown_appli_is_acknowledged_and_kept_as_ignored(
    receiver: str, store: RecordStore
) -> None:
    answered = post(receiver, {**NOTIFICATION, "appli": "62"})
    assert answered.status_code == 200 and answered.json() == {"accepted": 1, "duplicates": 0}
    assert Inbox(store).counts() == {"pending": 0, "dispatched": 0, "ignored": 1}


@pytest.mark.parametrize("action", ["unlink", "delete"])
def test_unlink_or_a_deleted_account_disconnects(
    receiver: str, store: RecordStore, action: str
) -> None:
    assert post(receiver, {**UNLINK, "action": action}).status_code == 200
    person = store.person("withings", "12345")
    assert person is not None and not person.connected
    assert (person.state, person.state_reason) == (DISCONNECTED, UNLINKED[action])
    assert Inbox(store).counts()["ignored"] == 1
    assert post(receiver, {**UNLINK, "action": action}).json() == {"accepted": 0, "duplicates": 1}


def test_a_profile_update_changes_nothing(receiver: str, store: RecordStore) -> None:
    assert post(receiver, {**UNLINK, "action": "update"}).status_code == 200
    person = store.person("withings", "12345")
    assert person is not None and person.connected and person.state == ACTIVE
    assert Inbox(store).counts() == {"pending": 0, "dispatched": 0, "ignored": 1}


def test_without_a_token_the_route_is_not_mounted(store: RecordStore) -> None:
    app = create_app(store, WebhookSecrets(), limits=ReceiverLimits(rate_per_minute=0))
    with serve_in_thread(app) as url:
        assert post(url, NOTIFICATION).status_code == 404
