"""What the ledger keeps: for each request that issued numbers, its fields once, and its
numbers; read back, one record per number."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import msgspec

# A key's records are told apart from another key's by this digest of the key, never the key
# itself: the ledger must not be able to make numbers.
_DIGEST_LABEL = b"tracking-ledger-key\0"


class Issued(NamedTuple):
    """A number, and the counter it was made from."""

    counter: int
    number: str


class Issue(msgspec.Struct, array_like=True, frozen=True):
    """One request's numbers and everything it declared, as a worker sends them.

    The fields before ``numbers`` are the columns of the ledger's ``issue`` table in order
    (``ledger/sqlite.py``): a batch is inserted as the structs' tuples, with no conversion per
    field. A request of 1,000 numbers keeps its fields once, not 1,000 times.
    """

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
    idempotency_key_digest: bytes | None
    numbers: list[Issued]


class Record(msgspec.Struct, frozen=True):
    """One issued number's record, as it is read back: the number and its request's fields."""

    counter: int
    number: str
    issued_at_ns: int
    origin: str
    destination: str
    weight: str
    created_at: str
    customer_id: str
    customer_name: str
    customer_slug: str
    correlation_id: str
    host: str
    idempotency_key_digest: bytes | None


ISSUE_COLUMNS = tuple(field.name for field in msgspec.structs.fields(Issue))[:-1]
RECORD_COLUMNS = tuple(field.name for field in msgspec.structs.fields(Record))


def key_digest(key: bytes, series: str = "") -> bytes:
    """What the ledger keeps to tell one counter's records from another's: the permutation
    key's, and with ``series`` (``s10:RR:GB``, allocator/series.py) an S10 series' of that key.
    Each series counts from 0, so its records need a line of their own against duplicates."""
    if not series:
        return hashlib.sha256(_DIGEST_LABEL + key).digest()[:16]
    return hashlib.sha256(_DIGEST_LABEL + key + b"\0" + series.encode("ascii")).digest()[:16]
