"""The wire format between workers and the allocator, shared by both sides.

A frame is a 4-byte big-endian payload length followed by one msgpack-encoded message. Every
request carries an ``id`` that its response repeats, so one connection can carry many requests
at once (see ``allocator.client``).
"""

from __future__ import annotations

import asyncio
import bisect
import struct
from typing import Annotated

import msgspec

from allocator.counter import COUNTER_LIMIT, KNOWN_SCHEMES, SCHEME_FEISTEL4
from allocator.errors import ProtocolError
from allocator.series import DEFAULT_SERIES, Order, SeriesName

# Far above the largest legal message (a Welcome is under 100 bytes), far below anything that
# could hurt: a peer that announces more is cut off before we read it.
MAX_FRAME = 64 * 1024
# The largest block one lease may ask for; the allocator grants at most this many values.
MAX_LEASE = 10_000_000
# A response may be larger: the status lists every series in use (about 250 bytes each, and
# there are at most a few tens of thousands of indicator and country pairs). The allocator is
# the workers' own process, so a worker reads what it sends up to this cap.
MAX_RESPONSE_FRAME = 16 * 1024 * 1024
# The longest idempotency key, in characters (ASCII from our workers: as many bytes).
MAX_KEY_LENGTH = 255

# Histogram bucket bounds in seconds (upper bounds; +Inf is implied): both sides must agree.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RESERVATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

_HEADER = struct.Struct(">I")

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=COUNTER_LIMIT)]
LeaseCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_LEASE)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
Scheme = Annotated[int, msgspec.Meta(ge=KNOWN_SCHEMES[0], le=KNOWN_SCHEMES[-1])]


class Histogram(msgspec.Struct, array_like=True):
    """Counts per bucket (the last is +Inf) and the sum of what was observed."""

    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, buckets: tuple[float, ...]) -> Histogram:
        return cls([0] * (len(buckets) + 1))

    def observe(self, value: float, buckets: tuple[float, ...]) -> None:
        self.counts[bisect.bisect_left(buckets, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


class WorkerCounters(msgspec.Struct, array_like=True):
    """What workers count: sent as deltas in reports, summed by the allocator."""

    issued: int = 0
    lease_failures: int = 0
    # (route, method, status) -> requests
    requests: dict[tuple[str, str, int], int] = msgspec.field(default_factory=dict)
    # route -> request durations in seconds
    durations: dict[str, Histogram] = msgspec.field(default_factory=dict)

    def add(self, other: WorkerCounters) -> None:
        self.issued += other.issued
        self.lease_failures += other.lease_failures
        for key, count in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + count
        for route, histogram in other.durations.items():
            mine = self.durations.get(route)
            if mine is None:
                self.durations[route] = Histogram(list(histogram.counts), histogram.total)
            else:
                mine.add(histogram)


class AllocatorStats(msgspec.Struct, kw_only=True):
    """What the allocator counts for operators, as it happens: the actor and its server count
    in one of these, and every Status carries it whole."""

    last_checkpoint_at: float | None
    last_checkpoint_latency_seconds: float | None
    last_store_error: str | None
    last_store_error_at: float | None
    leases_total: int
    leased_numbers_total: int
    lease_refusals_total: int
    reservations_total: int
    reservation_errors_total: int
    reservation_seconds: Histogram
    # Idempotency keys: what the store keeps (as this allocator last measured and has added
    # since), and the new keys refused at the cap. Defaults: an older allocator sends neither.
    idempotency_bytes: int = 0
    idempotency_refusals_total: int = 0

    @classmethod
    def empty(cls) -> AllocatorStats:
        """Nothing counted yet. (No defaults above: the OpenAPI document says every field of
        the status is always there.)"""
        return cls(
            last_checkpoint_at=None,
            last_checkpoint_latency_seconds=None,
            last_store_error=None,
            last_store_error_at=None,
            leases_total=0,
            leased_numbers_total=0,
            lease_refusals_total=0,
            reservations_total=0,
            reservation_errors_total=0,
            reservation_seconds=Histogram.empty(RESERVATION_BUCKETS),
        )


class SeriesStatus(msgspec.Struct, kw_only=True):
    """One S10 series in /allocator/status: how much of it is used, and when it runs out."""

    name: str
    order: str
    size: int
    next: int  # the first value not yet leased: what is used (leased) so far
    reserved: int
    numbers_left: int
    used_ratio: float
    exhausted: bool
    lease_rate_per_second: float
    seconds_to_exhaustion: float | None
    reservations_total: int
    leased_numbers_total: int


# The stats' fields are keyword-only, so they come after these in the JSON.
class AllocatorStatus(AllocatorStats):
    """The allocator's state, as /allocator/status shows it."""

    store: str
    next: int
    reserved: int
    numbers_left: int
    issue_rate_per_second: float
    seconds_to_exhaustion: float | None
    connected_workers: int
    leases_by_worker: dict[str, int]
    started_at: float
    uptime_seconds: float
    store_up: bool
    idempotency_max_bytes: int = 0
    # The S10 series the store holds (an older allocator sends none).
    series: list[SeriesStatus] = msgspec.field(default_factory=list)


class Message(msgspec.Struct, tag=True, frozen=True, array_like=True):
    id: RequestId


# Worker -> allocator.
class Hello(Message):
    """First request of a connection: who is asking. Answered with the permutation key and
    its scheme."""

    pid: int


class Lease(Message):
    """Ask for a block of ``count`` consecutive counter values, of the default counter or of a
    named one (an S10 series, made at its first lease with ``order``)."""

    count: LeaseCount
    series: SeriesName = DEFAULT_SERIES
    order: Order = "permuted"


class Report(Message):
    """A worker's counters since its last report. One-way: it gets no response."""

    counters: WorkerCounters


class StatusQuery(Message):
    """Ask for the allocator's state and everyone's counters (for /metrics and the status)."""


class Recall(Message):
    """Ask for the answer kept under an idempotency key. Answered with Recalled.

    ``fingerprint``: the asking request's, so that only a request for the same answer takes
    over an abandoned one (see Abandon)."""

    key: IdempotencyKey
    fingerprint: bytes = b""


class Remember(Message):
    """Keep an answer under an idempotency key, durably. Answered with Recalled: the answer
    that stands, this one or one kept first under the same key."""

    key: IdempotencyKey
    fingerprint: bytes
    response: bytes


class Abandon(Message):
    """One-way: a Remember whose answer never reached its client (the worker gave up waiting,
    or lost the connection). If that answer stands, the next Recall with its fingerprint is
    told to count and audit it."""

    key: IdempotencyKey
    response: bytes


# Allocator -> worker.
class Welcome(Message):
    key: bytes
    # An allocator of an older release sends no scheme: its stores can only be of the first.
    scheme: Scheme = SCHEME_FEISTEL4


class Granted(Message):
    """The half-open block ``[start, stop)``, durably reserved and leased to nobody else."""

    start: Counter
    stop: Counter
    # A series' own order and size, as stored when it was made (empty for the default counter).
    order: str = ""
    size: int = 0


class Refused(Message):
    reason: str
    # The series asked for is used up: no lease of it will ever be granted.
    exhausted: bool = False


class Status(Message):
    allocator: AllocatorStatus
    workers: WorkerCounters


class Recalled(Message):
    """The answer kept under a key and its request's fingerprint; both None when there is none.

    ``unaudited``: see Remembered. ``full``: there is none, and no new key can be kept now.
    """

    fingerprint: bytes | None
    response: bytes | None
    unaudited: bool = False
    full: bool = False


Request = Hello | Lease | Report | StatusQuery | Recall | Remember | Abandon
Response = Welcome | Granted | Refused | Status | Recalled

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_response_decoder = msgspec.msgpack.Decoder(Response)


def encode(message: Message, limit: int = MAX_FRAME) -> bytes:
    """One complete frame: length prefix and payload."""
    return frame(_encoder.encode(message), limit)


def frame(payload: bytes, limit: int = MAX_FRAME) -> bytes:
    """``payload`` behind its length prefix (the ledger's protocol frames its own messages)."""
    if len(payload) > limit:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the frame cap")
    return _HEADER.pack(len(payload)) + payload


class Outbox:
    """The frames for one stream, written together once per turn of the event loop: one
    write (one system call, one wakeup of the peer) for every request or answer of the turn,
    in the order they were sent. A frame sent once the stream is closing is dropped, as a
    write to it would be; ``close`` writes what is waiting first."""

    __slots__ = ("_frames", "_loop", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._frames: list[bytes] = []
        # Taken once: each get_running_loop() asks the kernel for our pid.
        self._loop = asyncio.get_running_loop()

    def send(self, frame: bytes) -> None:
        if not self._frames:
            self._loop.call_soon(self.flush)
        self._frames.append(frame)

    def flush(self) -> None:
        frames, self._frames = self._frames, []
        if frames and not self.writer.is_closing():
            self.writer.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def close(self) -> None:
        """Write what is waiting, then close the stream (which sends what it buffered)."""
        self.flush()
        self.writer.close()


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream between frames; a frame
    announced longer than ``limit`` is a ProtocolError."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ProtocolError(f"frame of {size} bytes exceeds the cap of {limit}")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame payload") from None


def decode_request(payload: bytes) -> Request:
    try:
        return _request_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad request: {exc}") from None


def decode_response(payload: bytes) -> Response:
    try:
        return _response_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad response: {exc}") from None
