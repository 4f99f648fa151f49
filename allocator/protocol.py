"""The wire format between workers and the allocator, shared by both sides.

A frame is a 4-byte big-endian payload length followed by one msgpack-encoded message. Every
request carries an ``id`` that its response repeats, so one connection can carry many requests
at once (see ``allocator.client``).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Annotated

import msgspec

# Far above the largest legal message (a Welcome is under 100 bytes), far below anything that
# could hurt: a peer that announces more is cut off before we read it.
MAX_FRAME = 64 * 1024
# The largest block one lease may ask for; the allocator grants at most this many values.
MAX_LEASE = 10_000_000
# The counter space: numbers are a permutation of [0, 2**56).
COUNTER_LIMIT = 2**56
KEY_BYTES = 32

_HEADER = struct.Struct(">I")

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=COUNTER_LIMIT)]
LeaseCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_LEASE)]


class AllocatorError(Exception):
    """Base of every error on the way to, inside, or back from the allocator."""


class ProtocolError(AllocatorError):
    """A frame or message that breaks the wire format."""


class AllocatorUnavailable(AllocatorError):
    """The allocator cannot be reached, or did not answer in time."""


class LeaseRefused(AllocatorError):
    """The allocator answered but will not grant (for example, its store cannot be written)."""


class StoreError(AllocatorError):
    """The store cannot be read or written; the allocator grants only what is durable."""


class KeyMismatch(AllocatorError):
    """The permutation key changed under a running worker or disagrees with the configured one."""


class Message(msgspec.Struct, tag=True, frozen=True, array_like=True):
    id: RequestId


# Worker -> allocator.
class Hello(Message):
    """First request of a connection: who is asking. Answered with the permutation key."""

    pid: int


class Lease(Message):
    """Ask for a block of ``count`` consecutive counter values."""

    count: LeaseCount


# Allocator -> worker.
class Welcome(Message):
    key: bytes


class Granted(Message):
    """The half-open block ``[start, stop)``, durably reserved and leased to nobody else."""

    start: Counter
    stop: Counter


class Refused(Message):
    reason: str


Request = Hello | Lease
Response = Welcome | Granted | Refused

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_response_decoder = msgspec.msgpack.Decoder(Response)


def encode(message: Message) -> bytes:
    """One complete frame: length prefix and payload."""
    payload = _encoder.encode(message)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the frame cap")
    return _HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream between frames."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the cap of {MAX_FRAME}")
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
