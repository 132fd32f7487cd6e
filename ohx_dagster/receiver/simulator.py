"""The simulated provider's webhooks: signed notifications for the simulated users, over HTTP.

    python -m ohx_dagster.receiver.simulator --url http://127.0.0.1:8787 --every 60

Every `--every` seconds, for each simulated user (OHX_SIMULATED_USERS / OHX_SIMULATED_SEED, the
same profiles as ohx_dagster/providers/simulated.py), it posts "new heart rate", "new steps" and
one more type in rotation to <url>/webhooks/simulated, signed with `--secret` or else
OHX_SIMULATED_WEBHOOK_SECRET, the receiver's (there is no default: scripts/dev generates one per
start and gives it to both). The receiver may start after it: failed posts are logged and the
next round goes on. `send_event` is the same request, for tests and benchmarks.

Wire format (what /webhooks/simulated checks):
    POST /webhooks/simulated
    X-OHX-Timestamp: <Unix seconds>
    X-OHX-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    {"event_id": ..., "user_id": ..., "data_type": ..., "occurred_at": "<ISO 8601 with offset>"}
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import httpx
import orjson

from ohx_dagster.config.receiver import SIMULATED_SECRET, simulated_secret
from ohx_dagster.config.settings import Settings
from ohx_dagster.core.models import HealthDataType
from ohx_dagster.providers.registry import CATALOG
from ohx_dagster.providers.simulated import profiles
from ohx_dagster.providers.webhook.signatures import simulated_signature

ROUTE: Final = "/webhooks/simulated"
EVERY_ROUND: Final = (HealthDataType.HEART_RATE, HealthDataType.STEPS)
ROTATION: Final = tuple(t for t in HealthDataType if t not in EVERY_ROUND)

log = logging.getLogger("ohx_dagster.receiver.simulator")


def endpoint(url: str) -> str:
    """The receiver's base URL or the full route -> the full route."""
    url = url.rstrip("/")
    return url if url.endswith(ROUTE) else url + ROUTE


def signed_request(
    secret: str,
    user_id: str,
    data_type: HealthDataType | str,
    occurred_at: datetime,
    *,
    event_id: str | None = None,
    timestamp: float | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one simulated notification, signed now (or at `timestamp`)."""
    body = orjson.dumps(
        {
            "event_id": event_id or uuid.uuid4().hex,
            "user_id": user_id,
            "data_type": HealthDataType(data_type).value,
            "occurred_at": occurred_at.astimezone(UTC).isoformat(),
        }
    )
    stamp = str(int(time.time() if timestamp is None else timestamp))
    headers = {
        "content-type": "application/json",
        "x-ohx-timestamp": stamp,
        "x-ohx-signature": simulated_signature(secret, stamp, body),
    }
    return body, headers


def send_event(
    url: str,
    secret: str,
    user_id: str,
    data_type: HealthDataType | str,
    occurred_at: datetime,
    *,
    event_id: str | None = None,
    client: httpx.Client | None = None,
    timeout_s: float = 10.0,
) -> httpx.Response:
    """POST one signed notification to the receiver at `url` and return its answer."""
    body, headers = signed_request(secret, user_id, data_type, occurred_at, event_id=event_id)
    if client is not None:
        return client.post(endpoint(url), content=body, headers=headers, timeout=timeout_s)
    return httpx.post(endpoint(url), content=body, headers=headers, timeout=timeout_s)


def send_round(
    url: str, secret: str, user_ids: list[str], round_no: int, client: httpx.Client
) -> tuple[int, int]:
    """One round of notifications for every user; returns (acknowledged, failed)."""
    now = datetime.now(UTC).replace(microsecond=0)
    kinds = [*EVERY_ROUND, ROTATION[round_no % len(ROTATION)]]
    acknowledged = failed = 0
    for user_id in user_ids:
        for kind in kinds:
            # Stable per (user, type, second): a restarted sender re-sending it dedups.
            event_id = f"sim|{user_id}|{kind.value}|{int(now.timestamp())}"
            try:
                response = send_event(
                    url, secret, user_id, kind, now, event_id=event_id, client=client
                )
            except httpx.HTTPError as exc:
                failed += 1
                log.warning("POST %s failed: %s", endpoint(url), exc)
                continue
            if response.is_success:
                acknowledged += 1
            else:
                failed += 1
                log.warning("POST %s -> %s %s", endpoint(url), response.status_code, response.text)
    return acknowledged, failed


def run(
    url: str,
    secret: str,
    user_ids: list[str],
    *,
    every_s: float,
    rounds: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Send a round every `every_s` seconds; `rounds` = 0 runs until interrupted."""
    with httpx.Client() as client:
        round_no = 0
        while rounds == 0 or round_no < rounds:
            started = time.monotonic()
            ok, failed = send_round(url, secret, user_ids, round_no, client)
            log.info("round %d: %d acknowledged, %d failed", round_no, ok, failed)
            round_no += 1
            if rounds == 0 or round_no < rounds:
                sleep(max(0.0, every_s - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ohx_dagster.receiver.simulator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8787", help="receiver base URL")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between rounds")
    parser.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0 = never)")
    parser.add_argument(
        "--secret",
        help=f"the receiver's simulated-webhook secret (default: ${SIMULATED_SECRET}; "
        "prefer the variable: arguments are visible to other users of the machine)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per round is enough
    secret = args.secret or simulated_secret()
    if not secret:
        print(
            f"simulator: no secret: set {SIMULATED_SECRET} (the receiver's) or pass --secret",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env(catalog=CATALOG)
    user_ids = [p.user_id for p in profiles(settings.simulated_users, settings.simulated_seed)]
    if not user_ids:
        log.warning("no simulated users (OHX_SIMULATED_USERS=0): nothing to send")
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        run(args.url, secret, user_ids, every_s=args.every, rounds=args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
