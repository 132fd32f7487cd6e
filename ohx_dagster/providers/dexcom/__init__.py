"""Dexcom: a continuous glucose monitor's estimated glucose values (every 5 minutes) through the
Dexcom API v3. Dexcom documents no webhooks: the schedules poll it. Sources of every shape and
rule: SOURCE.md."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ohx_dagster.core.models import HealthDataType as T
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.app import AuthorizeSpec, ProviderApp
from ohx_dagster.providers.api.budget import RequestLimit
from ohx_dagster.providers.api.http import IssuedToken
from ohx_dagster.providers.dexcom.source import DATA_RANGE, EGVS, MAX_SPAN, NAME, DexcomSource


def find_user_id(api: Any, token_answer: Any, access_token: str) -> str:
    """The person's `userId` from dataRange ("unique on a per-Dexcom account, per-client
    basis"): the token answer names nobody, and dataRange needs no query parameters."""
    where = f"{NAME} {DATA_RANGE}"
    answer = api.json("GET", DATA_RANGE, auth=IssuedToken(access_token))
    user_id = payload.get(answer, "userId", where, "the user's id")
    if not isinstance(user_id, str) or not user_id:
        raise payload.bad_field(where, "userId", user_id, "a non-empty string")
    return user_id


APP = ProviderApp(
    name=NAME,
    env_prefix="OHX_DEXCOM",
    # The US production host. The sandbox (https://sandbox-api.dexcom.com) and the EU and Japan
    # hosts (https://api.dexcom.eu, https://api.dexcom.jp) are chosen with OHX_DEXCOM_API_URL,
    # _TOKEN_URL and _AUTHORIZE_URL, as every provider's endpoints are.
    api_url="https://api.dexcom.com",
    token_url="https://api.dexcom.com/v2/oauth2/token",
    # offline_access: the one scope Dexcom's login URL names; it brings the refresh token.
    authorize=AuthorizeSpec("https://api.dexcom.com/v2/oauth2/login", ("offline_access",)),
    supported_types=frozenset({T.INTERSTITIAL_GLUCOSE}),
    # The apps upload as the sensor reads and the API serves the readings hours later (about
    # 1 h in the US, 3 h elsewhere); a phone out of reach uploads when it is back. Receivers are
    # uploaded by hand, whenever the person does: older uploads are not re-read.
    resync_horizon=timedelta(hours=48),
    # 60,000 calls per app per hour, 429 beyond.
    request_limit=RequestLimit(60_000, 3_600.0),
    source=DexcomSource,
    find_user_id=find_user_id,
)
DexcomSource.app = APP

__all__ = ["APP", "DATA_RANGE", "EGVS", "MAX_SPAN", "NAME", "DexcomSource"]
