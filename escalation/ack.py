"""Signed, expiring, single-use acknowledgement tokens for the links in pages.

A token is URL-safe base64 of a packed claim (incident, step, expiry, nonce,
contact) followed by a truncated HMAC-SHA256 over it. It is short enough for
an SMS. The signature and expiry are checked here; single use is enforced by
the store, which records each nonce the first time a POST spends it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

_HEADER = struct.Struct(">BIBI6s")  # version, incident, step, expiry, nonce
_VERSION = 1
_MAC_BYTES = 12


class AckTokenError(Exception):
    """The token is malformed, forged or expired; the message says which."""


@dataclass(frozen=True, slots=True)
class AckClaim:
    incident_id: int
    step: int
    contact: str
    expires_at: int
    nonce: str


class AckSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("an ack signing key needs at least 16 bytes")
        self._key = key

    def issue(
        self, incident_id: int, step: int, contact: str, expires_at: float
    ) -> str:
        nonce = os.urandom(6)
        body = _HEADER.pack(
            _VERSION, incident_id, min(step, 255), int(expires_at), nonce
        ) + contact.encode("utf-8")
        return _b64(body + self._mac(body))

    def verify(self, token: str, now: float) -> AckClaim:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise AckTokenError("the link is malformed") from None
        if len(raw) < _HEADER.size + _MAC_BYTES:
            raise AckTokenError("the link is malformed")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise AckTokenError("the link's signature is not valid")
        version, incident_id, step, expires_at, nonce = _HEADER.unpack_from(body)
        if version != _VERSION:
            raise AckTokenError("the link's version is not supported")
        if now >= expires_at:
            raise AckTokenError("the link has expired")
        try:
            contact = body[_HEADER.size :].decode("utf-8")
        except UnicodeDecodeError:
            raise AckTokenError("the link is malformed") from None
        return AckClaim(incident_id, step, contact, expires_at, nonce.hex())

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
