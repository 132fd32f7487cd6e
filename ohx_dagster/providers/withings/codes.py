"""What the source, the subscriptions and the webhook share of the Withings API: the answer's
status check, the notification categories (`appli`) with the data types each one announces, and
how a measure group's or workout's `attrib` becomes a record's method. Sources: SOURCE.md.

Every Withings answer is HTTP 200 with {"status", "body", "error"?}; the status says what went
wrong:

| status | meaning (documented family) | raised |
|---|---|---|
| 0 | success | nothing |
| 401 | authentication failed (an expired or revoked access token) | Unauthorized: refreshed once |
| 403 | insufficient scope (observed: a scope not granted) | Refused: the types refused |
| 214, 277, 2553, 2555 | "Unauthorized: you are not allowed to call this service" | Refused |
| 601 | too many requests | RateLimited (and the shared budget blocked) |
| any other | invalid params, an error occurred, timeout, ... | ProviderError naming it |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ohx_dagster.core.errors import ProviderError, RateLimited
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.providers.api import payload
from ohx_dagster.providers.api.http import Budget, Refused, Unauthorized, excerpt

NAME: Final = "withings"
INVALID_TOKEN: Final = 401
INSUFFICIENT_SCOPE: Final = 403
NOT_ALLOWED: Final = frozenset({214, 277, 2553, 2555})
TOO_MANY_REQUESTS: Final = 601

HR, STEPS, ECG = HealthDataType.HEART_RATE, HealthDataType.STEPS, HealthDataType.ECG
WEIGHT, TEMPERATURE = HealthDataType.WEIGHT, HealthDataType.TEMPERATURE
BLOOD_PRESSURE, SPO2 = HealthDataType.BLOOD_PRESSURE, HealthDataType.SPO2
SLEEP, WORKOUT = HealthDataType.SLEEP, HealthDataType.WORKOUT

# The data types a notification of each appli announces (one inbox event per type).
APPLI: Final[dict[int, tuple[HealthDataType, ...]]] = {
    1: (WEIGHT, TEMPERATURE),  # weight & body composition; the doc lists meastype 71 here too
    2: (TEMPERATURE,),
    4: (BLOOD_PRESSURE, HR, SPO2),  # cuffs: systolic, diastolic, heart pulse; SpO2
    16: (STEPS, HR, WORKOUT),  # activity: intraday steps and heart rate, workouts
    44: (HR, SLEEP),  # sleep: the night's summary and its intraday heart rate
    54: (ECG,),
}
# Applis acknowledged and kept as ignored: nothing this product syncs comes with them.
IGNORED: Final[dict[int, str]] = {
    46: "withings appli 46: user profile event",
    50: "withings appli 50: bed in",
    51: "withings appli 51: bed out",
    52: "withings appli 52: sleep sensor inflate done",
    53: "withings appli 53: device without an associated account",
    55: "withings appli 55: ECG measurement failed",
    58: "withings appli 58: glucose is not a health data type this product syncs",
}
USER_EVENTS: Final = 46
# appli 46 `action` values that end the person's link: they unlinked our app, or deleted their
# Withings account. Either way nothing more can be read for them.
UNLINKED: Final[dict[str, str]] = {
    "unlink": "withings: the person unlinked the app (appli 46, action unlink)",
    "delete": "withings: the person's Withings account was deleted (appli 46, action delete)",
}


# measuregrp `attrib` -> the record's method (ohx_dagster.core.records.METHODS); SOURCE.md quotes
# the documented meaning of each value.
ATTRIB_METHOD: Final[dict[int, str]] = {
    0: "device",
    1: "ambiguous",
    2: "manual",
    4: "manual",
    5: "device",
    7: "device",
    8: "device",
    15: "device",
}


def attrib_method(group: Any, where: str) -> str:
    """The method of a measure group or workout by its `attrib`; an undocumented attrib is a
    device's when the item names one."""
    attrib = group.get("attrib")
    if isinstance(attrib, bool) or not isinstance(attrib, int | float | str | None):
        raise payload.bad_field(where, "attrib", attrib, "an integer")
    try:
        code = None if attrib is None else int(attrib)
    except ValueError:
        raise payload.bad_field(where, "attrib", attrib, "an integer") from None
    if code in ATTRIB_METHOD:
        return ATTRIB_METHOD[code]
    return "device" if group.get("deviceid") or group.get("hash_deviceid") else "manual"


def status_check(endpoint: str, action: str, budget: Budget | None = None) -> Callable[[Any], None]:
    """The check `ApiClient.json` runs on every Withings answer of `endpoint` `action` (see the
    module doc). A 601 also blocks the shared request budget (Withings sends no Retry-After: the
    budget's default wait), so that no other run calls Withings meanwhile."""
    where = f"{NAME} {endpoint} {action}"

    def check(body: Any) -> None:
        if not isinstance(body, dict):
            raise payload.bad_field(where, "(body)", body, "a JSON object")
        status = payload.get(body, "status", where, "a status code")
        if status == 0:
            return
        message = excerpt(str(body.get("error", "")))
        detail = f"status {status} {message}".rstrip()
        if status == INVALID_TOKEN:
            raise Unauthorized(NAME, endpoint, 401, detail)
        if status == INSUFFICIENT_SCOPE or status in NOT_ALLOWED:
            raise Refused(NAME, f"{endpoint} {action}", 403, detail)
        if status == TOO_MANY_REQUESTS:
            if budget is not None:
                budget.block(None)
            raise RateLimited(NAME, None)
        failure = f"{where}: status {status!r}, expected 0"
        raise ProviderError(f"{failure}: {message}" if message else failure)

    return check
