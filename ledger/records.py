"""A record: what the ledger keeps of one issued number."""

from __future__ import annotations

import hashlib

import msgspec

# A key's records are told apart from another key's by this digest of the key, never the key
# itself: the ledger must not be able to make numbers.
_DIGEST_LABEL = b"tracking-ledger-key\0"


class Record(msgspec.Struct, array_like=True, frozen=True):
    """One issued number and everything its request declared.

    Field order is the column order of the ledger's table (``ledger/sqlite.py``): a batch is
    inserted as the records' tuples, with no conversion per field.
    """

    counter: int
    number: str
    issued_at_ns: int  # server time, nanoseconds since the Unix epoch
    origin: str
    destination: str
    weight: str  # kg, as the client wrote it (validated decimal notation)
    created_at: str  # the client's RFC 3339 timestamp, with its offset, as given
    customer_id: str
    customer_name: str
    customer_slug: str
    correlation_id: str
    host: str
    # SHA-256 of the request's Idempotency-Key when there was one.
    idempotency_key_digest: bytes | None = None


FIELDS = tuple(field.name for field in msgspec.structs.fields(Record))


def key_digest(key: bytes) -> bytes:
    """What the ledger keeps to tell one permutation key's records from another's."""
    return hashlib.sha256(_DIGEST_LABEL + key).digest()[:16]
