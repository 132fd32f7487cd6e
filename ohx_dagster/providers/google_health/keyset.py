"""Google Health notification signatures: verified against Google's public Tink keyset, with
`cryptography` alone (no Tink dependency). Sources: SOURCE.md ("Signatures").

- The keyset is Tink's JSON serialization of a `Keyset` proto: {"primaryKeyId", "key": [{"keyData":
  {"typeUrl", "value", "keyMaterialType"}, "status", "keyId", "outputPrefixType"}]}; `value` is
  the base64 of a binary `EcdsaPublicKey` proto {1: version, 2: EcdsaParams {1: hash_type,
  2: curve, 3: encoding}, 3: x, 4: y} (tink.proto, ecdsa.proto, common.proto). Only ENABLED keys
  of type `type.googleapis.com/google.crypto.tink.EcdsaPublicKey` are used.
- A signature is base64(prefix || ECDSA signature) over the raw request body. Prefix (Tink wire
  format): TINK = 0x01 || key id (4 bytes, big-endian); LEGACY and CRUNCHY = 0x00 || key id, and
  LEGACY signs body || 0x00; RAW = none. The ECDSA signature is DER or IEEE P1363 (r || s) as the
  key's params say.
- `KeysetCache` fetches the keyset (an https URL, or a file) and keeps it for a short TTL; a
  signature naming a key id it does not hold fetches it again at once (Google rotates keys), at
  most once per REFETCH_EVERY_S, so forged key ids cannot make it hammer the keyset's host. When a
  fetch fails, a copy younger than MAX_STALE_S is still used; without one, KeysetUnavailable.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ohx_dagster.providers.webhook.signatures import SignatureRejected

TYPE_URL: Final = "type.googleapis.com/google.crypto.tink.EcdsaPublicKey"
TTL_S: Final = 600.0
REFETCH_EVERY_S: Final = 30.0
MAX_STALE_S: Final = 24 * 3600.0
TIMEOUT_S: Final = 10.0

# Tink enums (proto3 JSON gives their names; numbers are accepted too).
_STATUS = {1: "ENABLED", 2: "DISABLED", 3: "DESTROYED"}
_PREFIX = {1: "TINK", 2: "LEGACY", 3: "RAW", 4: "CRUNCHY"}
_CURVES: Final[dict[int, Callable[[], ec.EllipticCurve]]] = {
    2: ec.SECP256R1,
    3: ec.SECP384R1,
    4: ec.SECP521R1,
}
_HASHES: Final = {3: hashes.SHA256, 2: hashes.SHA384, 4: hashes.SHA512}
IEEE_P1363, DER = 1, 2

log = logging.getLogger("ohx_dagster.providers.google_health")


class KeysetUnavailable(Exception):
    """Google's keyset could not be had (and no recent copy is held): answered with 503, so the
    notification is delivered again later."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: int
    prefix: str  # TINK, LEGACY, CRUNCHY or RAW
    key: ec.EllipticCurvePublicKey
    hash: type[hashes.HashAlgorithm]
    encoding: int  # IEEE_P1363 or DER

    def verifies(self, signature: bytes, data: bytes) -> bool:
        if self.encoding == IEEE_P1363:
            half = len(signature) // 2
            if len(signature) % 2 or not half:
                return False
            r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            signature = encode_dss_signature(r, s)
        try:
            self.key.verify(signature, data, ec.ECDSA(self.hash()))
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Keyset:
    keys: tuple[PublicKey, ...]

    def key_ids(self) -> set[int]:
        return {k.key_id for k in self.keys}

    def verify(self, body: bytes, signature: bytes) -> bool | None:
        """True/False; None when no key of the keyset could have made the signature (its key id
        is unknown and the keyset holds no RAW key)."""
        tried = False
        if len(signature) > 5 and signature[0] in (0, 1):
            key_id = int.from_bytes(signature[1:5], "big")
            payload = signature[5:]
            for key in self.keys:
                if key.key_id != key_id:
                    continue
                if signature[0] == 1 and key.prefix == "TINK":
                    tried = True
                    if key.verifies(payload, body):
                        return True
                elif signature[0] == 0 and key.prefix in ("LEGACY", "CRUNCHY"):
                    tried = True
                    data = body + b"\x00" if key.prefix == "LEGACY" else body
                    if key.verifies(payload, data):
                        return True
        for key in self.keys:
            if key.prefix == "RAW":
                tried = True
                if key.verifies(signature, body):
                    return True
        return False if tried else None


def _varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError(f"{where}: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def proto_fields(data: bytes, where: str) -> dict[int, Any]:
    """The fields of a binary protobuf message (last one wins): varints as int, length-delimited
    as bytes; fixed 32/64-bit fields are skipped. ValueError names what is wrong."""
    fields: dict[int, Any] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos, where)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            fields[number], pos = _varint(data, pos, where)
        elif wire == 2:
            size, pos = _varint(data, pos, where)
            if pos + size > len(data):
                raise ValueError(f"{where}: field {number} is truncated")
            fields[number], pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise ValueError(f"{where}: field {number} is truncated")
        else:
            raise ValueError(f"{where}: field {number} has wire type {wire}")
    return fields


def ecdsa_public_key(value: bytes, where: str) -> tuple[ec.EllipticCurvePublicKey, Any, int]:
    """An EcdsaPublicKey proto -> (public key, hash class, encoding); ValueError if unusable."""
    key = proto_fields(value, where)
    if key.get(1, 0) != 0:
        raise ValueError(f"{where}: EcdsaPublicKey version {key[1]} (only 0 is specified)")
    params = proto_fields(key.get(2, b""), f"{where} params")
    curve, hash_type = _CURVES.get(params.get(2, 0)), _HASHES.get(params.get(1, 0))
    encoding = params.get(3, 0)
    if curve is None or hash_type is None or encoding not in (IEEE_P1363, DER):
        raise ValueError(
            f"{where}: params curve={params.get(2)} hash={params.get(1)} "
            f"encoding={params.get(3)}: expected NIST P-256/384/521, SHA-256/384/512, DER or P1363"
        )
    x, y = key.get(3), key.get(4)
    if not isinstance(x, bytes) or not isinstance(y, bytes):
        raise ValueError(f"{where}: the x and y coordinates are missing")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
    )
    return numbers.public_key(), hash_type, encoding  # raises ValueError off the curve


def _enum(value: Any, names: dict[int, str]) -> str:
    return names.get(value, "") if isinstance(value, int) else str(value)


def parse_keyset(text: bytes, where: str) -> Keyset:
    """Tink's JSON keyset -> its usable ECDSA public keys; KeysetUnavailable if there are none."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise KeysetUnavailable(f"{where}: not JSON ({exc})") from None
    entries = document.get("key") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeysetUnavailable(f"{where}: field 'key' is {entries!r:.60}: expected a JSON array")
    keys = []
    for index, entry in enumerate(entries):
        at = f"{where} key[{index}]"
        if not isinstance(entry, dict) or _enum(entry.get("status"), _STATUS) != "ENABLED":
            continue
        data = entry.get("keyData")
        if not isinstance(data, dict) or data.get("typeUrl") != TYPE_URL:
            continue
        prefix = _enum(entry.get("outputPrefixType"), _PREFIX)
        key_id = entry.get("keyId")
        if prefix not in ("TINK", "LEGACY", "CRUNCHY", "RAW") or not isinstance(key_id, int):
            log.warning("%s: keyId %r, outputPrefixType %r: skipped", at, key_id, prefix)
            continue
        try:
            value = base64.b64decode(str(data.get("value", "")), altchars=None, validate=False)
            public, hash_type, encoding = ecdsa_public_key(value, at)
        except (ValueError, binascii.Error) as exc:
            log.warning("google_health keyset: %s: skipped", exc)
            continue
        keys.append(PublicKey(key_id, prefix, public, hash_type, encoding))
    if not keys:
        raise KeysetUnavailable(f"{where}: no enabled ECDSA public key")
    return Keyset(tuple(keys))


def read_location(location: str, timeout_s: float = TIMEOUT_S) -> bytes:
    """The keyset's bytes from an http(s) URL or a file; KeysetUnavailable names what failed."""
    if location.startswith(("https://", "http://")):
        try:
            response = httpx.get(location, timeout=timeout_s, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise KeysetUnavailable(f"{location}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise KeysetUnavailable(f"{location}: HTTP {response.status_code}")
        return response.content
    try:
        return Path(location).read_bytes()
    except OSError as exc:
        raise KeysetUnavailable(f"{location}: {exc.strerror or exc}") from None


def decode_signature(header: str | None, name: str) -> bytes:
    if not header or not header.strip():
        raise SignatureRejected(f"{name} header is missing")
    text = header.strip()
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRejected(f"{name} is not base64") from None


class KeysetCache:
    """Google's keyset, fetched when needed and kept for `ttl_s` (see the module doc)."""

    def __init__(
        self,
        location: str,
        *,
        ttl_s: float = TTL_S,
        refetch_every_s: float = REFETCH_EVERY_S,
        max_stale_s: float = MAX_STALE_S,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[str], bytes] = read_location,
    ) -> None:
        self.location = location
        self.ttl_s = ttl_s
        self.refetch_every_s = refetch_every_s
        self.max_stale_s = max_stale_s
        self.clock = clock
        self.read = read
        self.fetches = 0
        self._keyset: Keyset | None = None
        self._fetched_at = 0.0
        self._forced_at: float | None = None
        self._lock = threading.Lock()

    def _fetch(self) -> Keyset:
        now = self.clock()
        self.fetches += 1
        try:
            keyset = parse_keyset(self.read(self.location), f"keyset {self.location}")
        except KeysetUnavailable as exc:
            if self._keyset is not None and now - self._fetched_at <= self.max_stale_s:
                log.warning("google_health keyset not refreshed (%s): the copy held is used", exc)
                return self._keyset
            raise
        self._keyset, self._fetched_at = keyset, now
        return keyset

    def current(self) -> Keyset:
        with self._lock:
            if self._keyset is not None and self.clock() - self._fetched_at < self.ttl_s:
                return self._keyset
            return self._fetch()

    def refetched(self) -> Keyset | None:
        """A fresh copy, for a key id the held one lacks; None when such a fetch was made less than
        `refetch_every_s` ago."""
        with self._lock:
            now = self.clock()
            if self._forced_at is not None and now - self._forced_at < self.refetch_every_s:
                return None
            self._forced_at = now
            return self._fetch()

    def verify(self, body: bytes, header: str | None, name: str) -> None:
        """Raise SignatureRejected unless `header` (named `name`) signs `body` with a key of
        Google's keyset; KeysetUnavailable when the keyset cannot be had."""
        signature = decode_signature(header, name)
        if len(signature) < 6:
            raise SignatureRejected(f"{name} is {len(signature)} bytes: too short for a signature")
        verdict = self.current().verify(body, signature)
        if verdict is None:
            fresh = self.refetched()
            verdict = None if fresh is None else fresh.verify(body, signature)
        if verdict is None:
            key_id = int.from_bytes(signature[1:5], "big")
            raise SignatureRejected(f"{name} names key id {key_id}, not in Google's keyset")
        if not verdict:
            raise SignatureRejected(f"{name} does not verify the body with Google's key")
