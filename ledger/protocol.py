"""The wire format between workers and the ledger's writer.

Frames as the allocator's (``allocator.protocol``: a length prefix, then msgpack), with a cap
of their own: one frame carries every record a worker made in one turn of its event loop.
"""

from __future__ import annotations

import msgspec

from allocator.errors import ProtocolError
from allocator.protocol import Histogram, RequestId, frame
from ledger.records import Issue

# A worker's turn may hold many batch requests of up to 1,000 numbers each (about 25 bytes a
# number, and 300 a request): room for some 500,000 numbers, far more than a turn makes.
MAX_FRAME = 16 * 1024 * 1024


# Bounds of the writer's histograms (upper bounds; +Inf is implied): commit seconds, records.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)


class LedgerStats(msgspec.Struct, kw_only=True):
    """The writer's counts since it started (/metrics renders them, /allocator/status shows
    them)."""

    records_written_total: int = 0
    commits_total: int = 0
    commit_failures_total: int = 0
    uniqueness_violations_total: int = 0
    # Records deleted because they were older than ledger_retention_days.
    records_expired_total: int = 0
    commit_seconds: Histogram = msgspec.field(
        default_factory=lambda: Histogram.empty(COMMIT_BUCKETS)
    )
    batch_records: Histogram = msgspec.field(default_factory=lambda: Histogram.empty(BATCH_BUCKETS))
    # Why the newest commit failed; None once one succeeds.
    last_error: str | None = None
    # With a PostgreSQL store (ledger/forwarder.py): records committed here and not yet in the
    # shared ledger, the age of the oldest of them, and why forwarding fails (None once the
    # spool is empty again). Always 0 and None with a SQLite store.
    spool_records: int = 0
    spool_oldest_seconds: float = 0.0
    spool_error: str | None = None


class Message(msgspec.Struct, tag=True, frozen=True, array_like=True):
    id: RequestId


class Append(Message):
    """Make these requests' records durable; answered once they are committed, or cannot be.

    ``key``: the digest of the permutation key their counters are permuted with
    (``ledger.records.key_digest``)."""

    key: bytes
    issues: list[Issue]


class StatsQuery(Message):
    pass


class Committed(Message):
    pass


class NotCommitted(Message):
    """None of the frame's records was committed. ``violation``: one of its counters has a
    record already (the second line against duplicates), which must never happen."""

    reason: str
    violation: bool = False


class Stats(Message):
    stats: LedgerStats


Request = Append | StatsQuery
Response = Committed | NotCommitted | Stats

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_response_decoder = msgspec.msgpack.Decoder(Response)


def encode(message: Message) -> bytes:
    return frame(_encoder.encode(message), MAX_FRAME)


def decode_request(payload: bytes) -> Request:
    try:
        return _request_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad ledger request: {exc}") from None


def decode_response(payload: bytes) -> Response:
    try:
        return _response_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad ledger response: {exc}") from None
