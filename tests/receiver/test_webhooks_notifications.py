"""Provider notifications -> inbox events: type mapping, time, and event keys (retry vs new)."""

from datetime import UTC, datetime

import orjson
import pytest

from ohx_dagster.core.errors import ValidationError
from ohx_dagster.providers.oura.webhook import parse_notification as parse_oura
from ohx_dagster.receiver.notifications import parse_simulated

# Oura's own example body (OpenAPI, "Receiving and Processing Events"), for a workout document.
OURA = {
    "event_type": "create",
    "data_type": "workout",
    "object_id": "8f9a",
    "user_id": "oura-u1",
    "event_time": "2026-03-01T08:59:30+00:00",
}


def test_oura_types_times_and_keys():
    [created] = parse_oura(orjson.dumps(OURA), delivery_timestamp="1772355600")
    assert (created.user_id, created.data_type) == ("oura-u1", "heart_rate")
    assert created.occurred_at == datetime(2026, 3, 1, 8, 59, 30, tzinfo=UTC)
    [retry] = parse_oura(orjson.dumps(OURA), delivery_timestamp="1772355660")
    [updated] = parse_oura(
        orjson.dumps({**OURA, "event_type": "update", "event_time": "2026-03-01T10:00:00Z"}),
        delivery_timestamp="1772359200",
    )
    assert retry.event_key == created.event_key
    assert updated.event_key != created.event_key
    kinds = {
        k: parse_oura(orjson.dumps({**OURA, "data_type": k}), delivery_timestamp="1")[0]
        for k in ("daily_activity", "daily_spo2", "sleep", "daily_readiness")
    }
    assert kinds["daily_activity"].data_type == "steps"
    assert kinds["daily_spo2"].data_type == "spo2"
    assert kinds["sleep"].data_type is None and kinds["sleep"].ignored_reason is None
    assert kinds["daily_readiness"].ignored_reason is not None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"data_type": "meal"}, "oura meal"),
        ({"data_type": "daily_cycle_phases"}, "data_type 'daily_cycle_phases'"),
        ({"data_type": "brainwaves", "event_type": "upsert"}, "data_type 'brainwaves'"),
        ({"event_type": "upsert", "data_type": "sleep"}, "event_type 'upsert'"),
        ({"data_type": "new_" + "z" * 200}, "data_type 'new_zzz"),
    ],
)
def test_oura_unknown_data_and_event_types_are_kept_as_ignored_with_the_reason(change, words):
    """Oura adds collections (meal, daily_cycle_phases, ...): refusing them would make Oura
    retry and risk the subscription, so they are stored, ignored, never dispatched."""
    body = orjson.dumps({**OURA, **change})
    [event] = parse_oura(body, delivery_timestamp="1")
    assert event.ignored_reason is not None and words in event.ignored_reason
    assert len(event.ignored_reason) < 200  # a provider's long string is cut, and escaped
    assert event.data_type is None  # never reaches a sync
    assert (event.user_id, event.payload) == ("oura-u1", {**OURA, **change})
    # A retry of the same notification is the same event; another object is another.
    [retry] = parse_oura(body, delivery_timestamp="2")
    [other] = parse_oura(orjson.dumps({**OURA, **change, "object_id": "x"}), delivery_timestamp="1")
    assert retry.event_key == event.event_key != other.event_key


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"user_id": None}, "user_id"),
        ({"user_id": "u" * 129}, "user_id"),
        ({"data_type": None}, "data_type"),
        ({"event_type": ""}, "event_type"),
        ({"object_id": ""}, "object_id"),
        ({"event_time": "2026-03-01T08:59:30"}, "event_time"),  # no offset
    ],
)
def test_oura_malformed(change, field):
    with pytest.raises(ValidationError) as error:
        parse_oura(orjson.dumps({**OURA, **change}), delivery_timestamp="1")
    assert error.value.field == field


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'"heartrate"'])
def test_oura_body_that_is_not_a_json_object(body):
    with pytest.raises(ValidationError) as error:
        parse_oura(body, delivery_timestamp="1")
    assert error.value.field == "body"


def test_simulated_event_key_is_the_event_id():
    body = {
        "event_id": "e-1",
        "user_id": "sim-001",
        "data_type": "blood_pressure",
        "occurred_at": "2026-03-01T10:00:00+01:00",
    }
    [new] = parse_simulated(orjson.dumps(body))
    assert (new.provider, new.event_key, new.data_type) == ("simulated", "e-1", "blood_pressure")
    assert new.occurred_at == datetime(2026, 3, 1, 9, tzinfo=UTC)
    with pytest.raises(ValidationError, match="data_type='pulse'"):
        parse_simulated(orjson.dumps({**body, "data_type": "pulse"}))
    with pytest.raises(ValidationError, match="occurred_at"):
        parse_simulated(orjson.dumps({**body, "occurred_at": None}))
