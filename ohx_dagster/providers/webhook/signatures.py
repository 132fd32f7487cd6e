"""Request authentication the providers share, computed on the raw body, compared in constant
time; a provider's own recipe lives in its folder (Oura: providers/oura/webhook.py).

| provider | header(s) | value |
|---|---|---|
| Withings | (none documented) | shared-secret `token` in the callback URL, known user ids only |
| simulated | X-OHX-Timestamp, X-OHX-Signature | "v1=" + hex(HMAC-SHA256(secret, ts + "." + body)) |

Where the provider sends a timestamp it is inside the signed bytes, and a request whose timestamp
is further than the replay window from our clock (stale, or from the future) is refused: a
captured request cannot be replayed later, and within the window a replay dedups in the inbox.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

REPLAY_WINDOW_S: Final = 300.0
SIMULATED_VERSION: Final = "v1"


class SignatureRejected(Exception):
    """The request is not provably from the provider (or too old); answered with 401."""


def simulated_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SIMULATED_VERSION}={mac.hexdigest()}"


def same_secret(expected: str, given: str | None) -> bool:
    """Constant-time equality of two secrets (tokens, verification codes)."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def verify_simulated(
    secret: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    window_s: float = REPLAY_WINDOW_S,
) -> float:
    """Check X-OHX-Signature and the timestamp's freshness; returns the timestamp (s)."""
    if not signature or not timestamp:
        raise SignatureRejected("X-OHX-Signature and X-OHX-Timestamp headers are required")
    if not same_secret(simulated_signature(secret, timestamp, body), signature.strip()):
        raise SignatureRejected("X-OHX-Signature does not match timestamp + '.' + body")
    return check_fresh("X-OHX-Timestamp", timestamp, now=now, window_s=window_s)


def check_fresh(header: str, timestamp: str, *, now: float, window_s: float) -> float:
    """Seconds since the epoch; milliseconds are accepted too (values above 10^11)."""
    try:
        seconds = float(timestamp)
    except ValueError:
        raise SignatureRejected(f"{header}={timestamp!r} is not a Unix timestamp") from None
    if seconds > 1e11:
        seconds /= 1000.0
    if not abs(now - seconds) <= window_s:
        raise SignatureRejected(
            f"{header} is {now - seconds:+.0f} s from the receiver's clock "
            f"(replay window ±{window_s:.0f} s)"
        )
    return seconds
