"""Hostile requests to the webhook receiver (issue 19) over real HTTP (uvicorn on 127.0.0.1):
a flood of forged deliveries costs the log one full line and one summary line per interval, not
a line each; a header given twice or a 10,000-character value is refused with 400 before any
route reads the request, and nothing is stored. Bodies are Oura's documented notification (the
same as tests/receiver/test_webhooks_app.py), signed as Oura signs them."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from ohx_dagster.config.receiver import OuraSecrets, ReceiverLimits, WebhookSecrets
from ohx_dagster.providers.oura.webhook import signature as oura_signature
from ohx_dagster.receiver.app import MAX_HEADER_CHARS, create_app
from ohx_dagster.receiver.refusals import RefusalLog
from ohx_dagster.receiver.serve import serve_in_thread
from ohx_dagster.storage.store import RecordStore
from ohx_dagster.sync.inbox import Inbox

SECRETS = WebhookSecrets(oura=OuraSecrets("oura-client-secret", "oura-verification-token"))
LIMITS = ReceiverLimits(rate_per_minute=0)  # the flood is the point: no 429s here
OURA = {
    "event_type": "create",
    "data_type": "workout",
    "object_id": "8f9a",
    "user_id": "oura-u1",
    "event_time": "2026-03-01T08:59:30+00:00",
}
ROUTE = "/webhooks/oura"


class Clock:
    """The refusal log's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Receiver:
    url: str
    http: httpx.Client
    inbox: Inbox
    clock: Clock

    def post(self, body: bytes, headers: list[tuple[str, str]]) -> httpx.Response:
        return self.http.post(f"{self.url}{ROUTE}", content=body, headers=headers)

    def stored(self) -> int:
        return sum(self.inbox.counts().values())


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    clock = Clock()
    app = create_app(store, SECRETS, limits=LIMITS, refusals=RefusalLog(60.0, clock=clock))
    with serve_in_thread(app, limits=LIMITS) as url, httpx.Client(timeout=10) as http:
        yield Receiver(url, http, app.state.inbox, clock)
    store.dispose()


def signed(body: dict) -> tuple[bytes, list[tuple[str, str]]]:
    raw = orjson.dumps(body)
    stamp = str(int(time.time()))
    return raw, [
        ("x-oura-timestamp", stamp),
        ("x-oura-signature", oura_signature("oura-client-secret", stamp, raw)),
    ]


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ohx_dagster.receiver"]


def test_a_flood_of_forged_deliveries_logs_one_line_and_a_summary_per_interval(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ohx_dagster.receiver")
    raw, headers = signed(OURA)
    forged = [(name, "0" * 64 if name == "x-oura-signature" else value) for name, value in headers]
    for _ in range(300):
        assert receiver.post(raw, forged).status_code == 401
    for _ in range(50):
        assert receiver.post(b"{}", []).status_code == 401  # unsigned
    logged = lines(caplog)
    assert len(logged) == 1 and logged[0].startswith("401 POST /webhooks/oura: "), logged
    assert receiver.stored() == 0
    # The interval ends: the next refusal writes the summary of the 349 not logged, then its
    # own full line (the first of the new interval).
    receiver.clock.now += 61
    assert receiver.post(raw, forged).status_code == 401
    logged = lines(caplog)
    assert len(logged) == 3, logged
    assert logged[1].startswith("refused 349 more requests in the last 61 s")
    assert "401 POST /webhooks/oura: 349" in logged[1]
    assert logged[2].startswith("401 POST /webhooks/oura: ")
    # A quiet interval writes no summary; a signed delivery is still accepted and stored.
    receiver.clock.now += 61
    ok = receiver.post(*signed(OURA))
    assert ok.status_code == 200 and receiver.stored() == 1
    assert len(lines(caplog)) == 3


def test_a_malformed_flood_is_summarized_per_kind(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ohx_dagster.receiver")
    raw, headers = signed({**OURA, "event_time": "yesterday"})  # signed, not Oura's format
    for _ in range(20):
        assert receiver.post(raw, headers).status_code == 400
    for _ in range(10):
        assert receiver.post(b"{}", []).status_code == 401
    receiver.clock.now += 60
    receiver.post(b"{}", [])
    logged = lines(caplog)
    assert len(logged) == 4, logged  # 400 and 401 once each, the summary, the new 401
    assert "refused 28 more requests" in logged[2]
    assert "400 POST /webhooks/oura: 19" in logged[2] and "401 POST /webhooks/oura: 9" in logged[2]


@pytest.mark.parametrize("header", ["x-oura-signature", "x-oura-timestamp", "content-type"])
def test_a_header_given_twice_is_400_and_nothing_is_stored(receiver: Receiver, header: str) -> None:
    """(Two equal Content-Lengths are one by RFC 9112 6.3, merged by the HTTP server itself.)"""
    raw, headers = signed(OURA)
    first = [*headers, ("content-type", "application/json")]
    second = {"x-oura-signature": "0" * 64}.get(header, dict(first)[header])
    refused = receiver.post(raw, [*first, (header, second)])
    assert refused.status_code == 400, refused.text
    assert f"header '{header}' given more than once" in refused.json()["error"]
    assert receiver.stored() == 0
    assert receiver.post(raw, first).status_code == 200 and receiver.stored() == 1


def test_ten_thousand_characters_are_refused_in_a_header_a_query_and_a_body(
    receiver: Receiver,
) -> None:
    raw, headers = signed(OURA)
    long = "8" * 10_000
    padded = [*headers, ("x-request-id", long)]
    refused = receiver.post(raw, padded)
    assert refused.status_code == 400
    assert f"expected at most {MAX_HEADER_CHARS:,}" in refused.json()["error"]
    handshake = receiver.http.get(
        f"{receiver.url}{ROUTE}",
        params={"verification_token": "oura-verification-token", "challenge": long},
    )
    assert handshake.status_code == 400 and long not in handshake.text
    twice = receiver.http.get(
        f"{receiver.url}{ROUTE}?verification_token=oura-verification-token&challenge=a&challenge=b"
    )
    assert twice.status_code == 400 and "given more than once" in twice.text
    body, signed_headers = signed({**OURA, "user_id": long})
    assert receiver.post(body, signed_headers).status_code == 400
    assert receiver.stored() == 0
    ok = receiver.http.get(
        f"{receiver.url}{ROUTE}",
        params={"verification_token": "oura-verification-token", "challenge": "c-42"},
    )
    assert ok.status_code == 200 and ok.json() == {"challenge": "c-42"}


def test_a_flood_that_stops_is_still_summarized(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No refusal follows the flood: the receiver's ticking task writes the summary once the
    interval (0.2 s here, on the real clock) is over."""
    caplog.set_level(logging.DEBUG, logger="ohx_dagster.receiver")
    store = RecordStore(f"sqlite:///{tmp_path / 'ohx.db'}")
    app = create_app(store, SECRETS, limits=LIMITS, refusals=RefusalLog(0.2))
    with serve_in_thread(app, limits=LIMITS) as url, httpx.Client(timeout=10) as http:
        for _ in range(40):
            assert http.post(f"{url}{ROUTE}", content=b"{}").status_code == 401
        deadline = time.monotonic() + 30
        while len(lines(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    store.dispose()
    logged = lines(caplog)
    assert logged[0].startswith("401 POST /webhooks/oura: "), logged
    summaries = [line for line in logged if line.startswith("refused ")]
    assert summaries and sum(int(re.search(r"refused (\d+)", s)[1]) for s in summaries) >= 1
    # Every refusal is told: in full lines, or counted in a summary.
    full = [line for line in logged if line.startswith("401 ")]
    assert len(full) + sum(int(re.search(r"refused (\d+)", s)[1]) for s in summaries) == 40
