"""Oura: the ring's heart rate, daily steps, nightly SpO2, HRV, sleep and workouts (API v2),
realtime through Oura's webhooks (documents named by a notification are read by id). Sources of
every shape and rule: SOURCE.md."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ohx_dagster.core.models import HealthDataType as T
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import AuthorizeSpec, ProviderApp
from ohx_dagster.providers.api.budget import RequestLimit
from ohx_dagster.providers.api.http import IssuedToken
from ohx_dagster.providers.oura import subscriptions
from ohx_dagster.providers.oura.source import NAME, OuraSource

PERSONAL_INFO = "/v2/usercollection/personal_info"


def find_user_id(api: Any, token_answer: Any, access_token: str) -> str:
    """The person's id: personal_info `id`, which any token may read (no scope needed)."""
    answer = api.json("GET", PERSONAL_INFO, auth=IssuedToken(access_token))
    user_id = payload.get(answer, "id", f"oura {PERSONAL_INFO}", "the user's id")
    if not isinstance(user_id, str) or not user_id:
        raise payload.bad_field(f"oura {PERSONAL_INFO}", "id", user_id, "a non-empty string")
    return user_id


APP = ProviderApp(
    name=NAME,
    env_prefix="OHX_OURA",
    api_url="https://api.ouraring.com",
    token_url="https://api.ouraring.com/oauth/token",
    # heartrate -> heartrate, daily -> daily_activity steps, spo2Daily -> daily_spo2, personal ->
    # the personal_info id; the scope names of Oura's current authorization documentation.
    authorize=AuthorizeSpec(
        "https://cloud.ouraring.com/oauth/authorize",
        ("personal", "daily", "heartrate", "workout", "session", "spo2Daily"),
    ),
    supported_types=frozenset({T.HEART_RATE, T.STEPS, T.SPO2, T.HRV_RMSSD, T.SLEEP, T.WORKOUT}),
    # The ring uploads when the app opens, often the next morning.
    resync_horizon=timedelta(hours=48),
    request_limit=RequestLimit(5_000, 300.0),
    source=OuraSource,
    find_user_id=find_user_id,
    after_connect=subscriptions.after_connect,
    webhook="ohx_dagster.providers.oura.webhook",
)
OuraSource.app = APP

__all__ = ["APP", "NAME", "OuraSource"]
