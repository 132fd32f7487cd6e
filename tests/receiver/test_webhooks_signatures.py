"""Each provider's signature scheme: fixed vectors (computed with `openssl dgst`), right, wrong,
stale, future and replayed requests."""

import pytest

from ohx_dagster.providers.oura import webhook as oura
from ohx_dagster.providers.webhook import signatures as sig
from ohx_dagster.providers.webhook.signatures import SignatureRejected

# printf '%s' "$TS$BODY" | openssl dgst -sha256 -hmac 'oura-client-secret'  (upper-cased)
OURA_TS = "1767225600"
OURA_BODY = (
    b'{"event_type":"create","data_type":"heartrate","object_id":"abc-1","user_id":"oura-u1",'
    b'"event_time":"2026-01-01T00:00:00+00:00"}'
)
OURA_VECTOR = "C084E74DEB926376FA40DA2C5EACD5CEA02B6DC07D8FFD5FD5B074172861D9C6"

# printf '%s' "$TS.$BODY" | openssl dgst -sha256 -hmac 'ohx-dev-simulated-secret'
SIM_BODY = (
    b'{"event_id":"e-1","user_id":"sim-001","data_type":"heart_rate",'
    b'"occurred_at":"2026-01-01T00:00:00+00:00"}'
)
SIM_VECTOR = "v1=139b10d11ca920f7e32fc4517ad73aa769ddbe7e7ffca4e8e21e506794d7413b"
NOW = float(OURA_TS) + 12.0


def test_oura_vector_and_verification():
    assert oura.signature("oura-client-secret", OURA_TS, OURA_BODY) == OURA_VECTOR
    stamp = _oura_verify("oura-client-secret", OURA_BODY, OURA_VECTOR, OURA_TS, now=NOW)
    assert stamp == float(OURA_TS)
    # Lower-case hex from a client library is the same signature.
    _oura_verify("oura-client-secret", OURA_BODY, OURA_VECTOR.lower(), OURA_TS, now=NOW)
    # A replay inside the window verifies (the inbox dedups it); milliseconds are understood.
    _oura_verify(
        "oura-client-secret",
        OURA_BODY,
        oura.signature("oura-client-secret", OURA_TS + "000", OURA_BODY),
        OURA_TS + "000",
        now=NOW,
    )


@pytest.mark.parametrize(
    ("secret", "body", "header", "stamp", "now", "why"),
    [
        ("wrong-secret", OURA_BODY, OURA_VECTOR, OURA_TS, NOW, "does not match"),
        ("oura-client-secret", OURA_BODY[:-1], OURA_VECTOR, OURA_TS, NOW, "does not match"),
        # The timestamp is signed: changing it to look fresh breaks the signature.
        ("oura-client-secret", OURA_BODY, OURA_VECTOR, "1767225601", NOW, "does not match"),
        ("oura-client-secret", OURA_BODY, OURA_VECTOR, OURA_TS, NOW + 301, "replay window"),
        ("oura-client-secret", OURA_BODY, OURA_VECTOR, OURA_TS, NOW - 400, "replay window"),
        ("oura-client-secret", OURA_BODY, None, OURA_TS, NOW, "required"),
        ("oura-client-secret", OURA_BODY, OURA_VECTOR, None, NOW, "required"),
    ],
)
def test_oura_rejects(secret, body, header, stamp, now, why):
    with pytest.raises(SignatureRejected, match=why):
        _oura_verify(secret, body, header, stamp, now=now)


def test_oura_rejects_a_timestamp_that_is_not_a_number():
    header = oura.signature("oura-client-secret", "yesterday", OURA_BODY)
    with pytest.raises(SignatureRejected, match="not a Unix timestamp"):
        _oura_verify("oura-client-secret", OURA_BODY, header, "yesterday", now=NOW)


def test_simulated_vector_and_verification():
    secret = "ohx-dev-simulated-secret"
    assert sig.simulated_signature(secret, OURA_TS, SIM_BODY) == SIM_VECTOR
    assert sig.verify_simulated(secret, SIM_BODY, SIM_VECTOR, OURA_TS, now=NOW) == float(OURA_TS)


@pytest.mark.parametrize(
    ("header", "stamp", "now", "why"),
    [
        ("v1=" + "0" * 64, OURA_TS, NOW, "does not match"),
        (SIM_VECTOR.removeprefix("v1="), OURA_TS, NOW, "does not match"),  # version missing
        (SIM_VECTOR, "1767225599", NOW, "does not match"),  # timestamp swapped
        (SIM_VECTOR, OURA_TS, NOW + 3600, "replay window"),  # stale
        (SIM_VECTOR, OURA_TS, NOW - 3600, "replay window"),  # from the future
        ("", OURA_TS, NOW, "required"),
    ],
)
def test_simulated_rejects(header, stamp, now, why):
    with pytest.raises(SignatureRejected, match=why):
        sig.verify_simulated("ohx-dev-simulated-secret", SIM_BODY, header, stamp, now=now)


def test_replay_window_is_configurable():
    secret = "ohx-dev-simulated-secret"
    sig.verify_simulated(secret, SIM_BODY, SIM_VECTOR, OURA_TS, now=NOW + 900, window_s=1000)
    with pytest.raises(SignatureRejected):
        sig.verify_simulated(secret, SIM_BODY, SIM_VECTOR, OURA_TS, now=NOW + 900, window_s=60)


@pytest.mark.parametrize(
    ("expected", "given", "same"),
    [("token-123", "token-123", True), ("token-123", "token-124", False), ("t", None, False)],
)
def test_same_secret(expected, given, same):
    assert sig.same_secret(expected, given) is same


def _oura_verify(secret, body, given, timestamp, *, now, window_s=sig.REPLAY_WINDOW_S):
    return oura.verify(secret, body, given, timestamp, now=now, window_s=window_s)
