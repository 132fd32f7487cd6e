"""Withings: scales, blood-pressure cuffs, thermometers and watches through the Withings public
API (measure getmeas, Heart v2 ECG recordings, intraday activity), realtime through Withings
notifications (webhook.py). Sources of every shape and rule: SOURCE.md."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ohx_dagster.core.models import HealthDataType as T
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import AuthorizeSpec, ProviderApp
from ohx_dagster.providers.api.budget import RequestLimit
from ohx_dagster.providers.withings import subscriptions
from ohx_dagster.providers.withings.source import (
    HEART,
    MEASURE,
    MEASURE_V2,
    NAME,
    WithingsSource,
    measure_value,
)


def find_user_id(api: Any, token_answer: Any, access_token: str) -> str:
    """The token answer's `userid`: the id Withings notifications carry."""
    userid = token_answer.get("userid")
    if isinstance(userid, bool) or not isinstance(userid, str | int) or userid == "":
        raise payload.bad_field("withings token exchange", "userid", userid, "an id")
    return str(userid)


APP = ProviderApp(
    name=NAME,
    env_prefix="OHX_WITHINGS",
    api_url="https://wbsapi.withings.net",
    token_url="https://wbsapi.withings.net/v2/oauth2",
    # user.metrics -> measure getmeas (weight, blood pressure, pulse, SpO2, temperature) and
    # Heart v2 list/get (ECG); user.activity -> measure v2 getintradayactivity (steps, heart
    # rate). Comma-separated, as Withings' authorize URL takes them.
    authorize=AuthorizeSpec(
        "https://account.withings.com/oauth2_user/authorize2",
        ("user.metrics", "user.activity"),
        ",",
    ),
    supported_types=frozenset(
        {T.HEART_RATE, T.STEPS, T.ECG, T.BLOOD_PRESSURE, T.WEIGHT, T.TEMPERATURE, T.SPO2}
        | {T.SLEEP, T.WORKOUT}
    ),
    # Scales and cuffs sync over Wi-Fi or the app; notifications name new data as well.
    resync_horizon=timedelta(hours=48),
    request_limit=RequestLimit(120, 60.0),
    source=WithingsSource,
    find_user_id=find_user_id,
    token_params={"action": "requesttoken"},
    token_wrapped=True,
    after_connect=subscriptions.after_connect,
    webhook="ohx_dagster.providers.withings.webhook",
)
WithingsSource.app = APP

__all__ = ["APP", "HEART", "MEASURE", "MEASURE_V2", "NAME", "WithingsSource", "measure_value"]
