"""Listing cursors: a position in the ledger, bound to one query's filters, signed.

A cursor is base64url (no padding) of the position (the issue's id and the counter, 8 bytes
each) and a 16-byte keyed BLAKE2b of the position and the query's filters. The MAC key is
derived from the permutation key, which every worker of every host of a store has and nobody
else does: a cursor made by one worker is good on any other, and one that was altered, made for
other filters or by another deployment is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

import msgspec

from ledger.listing import Filters, Position

_POSITION = struct.Struct(">QQ")
_MAC_BYTES = 16
_PERSON = b"tn-list-cursor"  # the derived key is good for cursors only
# The encoded length: 32 bytes in base64url without padding.
LENGTH = 43
_encode_filters = msgspec.json.Encoder().encode


class Cursors:
    """Makes and opens the cursors of one deployment (one permutation key)."""

    def __init__(self, permutation_key: bytes) -> None:
        self._key = hashlib.blake2b(permutation_key, digest_size=32, person=_PERSON).digest()

    def _mac(self, position: bytes, filters: Filters) -> bytes:
        data = position + _encode_filters(filters)
        return hashlib.blake2b(data, digest_size=_MAC_BYTES, key=self._key).digest()

    def make(self, position: Position, filters: Filters) -> str:
        """The cursor of the records after ``position`` under ``filters``."""
        packed = _POSITION.pack(*position)
        raw = packed + self._mac(packed, filters)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def open(self, cursor: str, filters: Filters) -> Position | None:
        """The position of a cursor this deployment made for ``filters``; None for any other."""
        if len(cursor) != LENGTH or not cursor.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=")
        except (binascii.Error, ValueError):
            return None
        # The decoder ignores characters outside the alphabet: only the canonical form counts.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != cursor:
            return None
        packed, mac = raw[: _POSITION.size], raw[_POSITION.size :]
        if not hmac.compare_digest(mac, self._mac(packed, filters)):
            return None
        return Position(*_POSITION.unpack(packed))
