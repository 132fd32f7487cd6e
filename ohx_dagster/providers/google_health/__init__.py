"""Google Health API v4 (the Fitbit Web API's successor): heart rate, steps, weight, oxygen
saturation and blood glucose, the daily heart rate variability (RMSSD) and respiratory rate, and
sleep (each night with its stages) and workouts (sessions.py), of a person's Fitbit and Pixel
devices and Health Connect apps, one reading or session per moment from the reconciled view,
realtime through Google's signed webhooks (webhook.py; the subscriber is the project's,
AUTOMATIC: nothing to subscribe per person). Sources: SOURCE.md."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ohx_dagster.core.models import HealthDataType as T
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import AuthorizeSpec, ProviderApp
from ohx_dagster.providers.api.budget import RequestLimit
from ohx_dagster.providers.api.http import IssuedToken
from ohx_dagster.providers.google_health.source import NAME, GoogleHealthSource

IDENTITY = "/v4/users/me/identity"
SCOPE = "https://www.googleapis.com/auth/googlehealth"


def find_user_id(api: Any, token_answer: Any, access_token: str) -> str:
    """The person's `healthUserId` (GET /v4/users/me/identity)."""
    answer = api.json("GET", IDENTITY, auth=IssuedToken(access_token))
    user_id = payload.get(answer, "healthUserId", f"google_health {IDENTITY}", "the user's id")
    if not isinstance(user_id, str) or not user_id:
        raise payload.bad_field(f"google_health {IDENTITY}", "healthUserId", user_id, "an id")
    return user_id


APP = ProviderApp(
    name=NAME,
    env_prefix="OHX_GOOGLE_HEALTH",
    api_url="https://health.googleapis.com",
    token_url="https://oauth2.googleapis.com/token",
    # steps and exercise: activity_and_fitness; heart rate, weight, oxygen saturation, blood
    # glucose, daily heart rate variability and daily respiratory rate: health metrics; sleep:
    # its own scope (S1 `auth.oauth2.scopes`: "See your Google Health sleep data"; the webhook
    # guide: "Sleep, which covers the sleep data type"). A person connected before sleep was
    # synced has not granted it: their sleep is refused (403) until they connect again. Google
    # sends a refresh token only with access_type=offline, and again on a reconnect only with
    # prompt=consent: both are asked for.
    authorize=AuthorizeSpec(
        "https://accounts.google.com/o/oauth2/v2/auth",
        (
            f"{SCOPE}.activity_and_fitness.readonly",
            f"{SCOPE}.health_metrics_and_measurements.readonly",
            f"{SCOPE}.sleep.readonly",
        ),
        pkce=True,
        extra_params={"access_type": "offline", "prompt": "consent"},
    ),
    supported_types=frozenset(
        {
            T.HEART_RATE,
            T.STEPS,
            T.WEIGHT,
            T.SPO2,
            T.BLOOD_GLUCOSE,
            T.HRV_RMSSD,
            T.RESPIRATORY_RATE,
            T.SLEEP,
            T.WORKOUT,
        }
    ),
    # Watches sync through the phone, sometimes days later.
    resync_horizon=timedelta(hours=72),
    request_limit=RequestLimit(300, 60.0, per_person=True),
    source=GoogleHealthSource,
    find_user_id=find_user_id,
    webhook="ohx_dagster.providers.google_health.webhook",
)
GoogleHealthSource.app = APP

__all__ = ["APP", "NAME", "GoogleHealthSource"]
