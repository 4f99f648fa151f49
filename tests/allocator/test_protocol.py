import asyncio
import struct

import msgspec
import pytest

from allocator import protocol
from allocator.counter import KNOWN_SCHEMES, SCHEME_FF1
from allocator.errors import ProtocolError
from allocator.protocol import MAX_FRAME, Granted, Hello, Lease, Refused, Welcome

REQUESTS = [Hello(id=1, pid=4242), Lease(id=2, count=1000)]
RESPONSES = [
    Welcome(id=1, key=bytes(range(32)), scheme=SCHEME_FF1),
    Granted(id=2, start=2**56 - 10, stop=2**56),
    Refused(id=3, reason="store unavailable"),
]


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
async def test_every_request_survives_a_round_trip(message: protocol.Message) -> None:
    payload = await protocol.read_frame(reader_of(protocol.encode(message)))
    assert payload is not None
    assert protocol.decode_request(payload) == message


@pytest.mark.parametrize("message", RESPONSES, ids=lambda m: type(m).__name__)
async def test_every_response_survives_a_round_trip(message: protocol.Message) -> None:
    payload = await protocol.read_frame(reader_of(protocol.encode(message)))
    assert payload is not None
    assert protocol.decode_response(payload) == message


def test_a_welcome_without_a_scheme_is_from_an_older_allocator_so_the_old_scheme() -> None:
    older = msgspec.msgpack.encode(["Welcome", 1, bytes(range(32))])
    assert protocol.decode_response(older) == Welcome(
        id=1, key=bytes(range(32)), scheme=protocol.SCHEME_FEISTEL4
    )


def test_a_welcome_with_an_unknown_scheme_is_a_protocol_error() -> None:
    newer = msgspec.msgpack.encode(["Welcome", 1, bytes(range(32)), KNOWN_SCHEMES[-1] + 1])
    with pytest.raises(ProtocolError):
        protocol.decode_response(newer)


async def test_frames_follow_each_other_on_one_stream() -> None:
    reader = reader_of(b"".join(protocol.encode(m) for m in REQUESTS))
    decoded = [protocol.decode_request(await protocol.read_frame(reader)) for _ in REQUESTS]
    assert decoded == REQUESTS
    assert await protocol.read_frame(reader) is None


async def test_truncated_header_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="header"):
        await protocol.read_frame(reader_of(b"\x00\x00"))


async def test_truncated_payload_is_a_protocol_error() -> None:
    frame = protocol.encode(Lease(id=1, count=5))
    with pytest.raises(ProtocolError, match="payload"):
        await protocol.read_frame(reader_of(frame[:-1]))


async def test_oversized_frame_is_refused_before_it_is_read() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        await protocol.read_frame(reader_of(struct.pack(">I", MAX_FRAME + 1)))


def test_garbage_payload_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_request(b"\xc1\xff garbage")


def test_unknown_tag_is_a_protocol_error() -> None:
    payload = msgspec.msgpack.encode(["Format", 1, "/"])
    with pytest.raises(ProtocolError):
        protocol.decode_request(payload)


def test_a_response_is_not_accepted_as_a_request() -> None:
    payload = msgspec.msgpack.encode(Granted(id=1, start=0, stop=10))
    with pytest.raises(ProtocolError):
        protocol.decode_request(payload)


@pytest.mark.parametrize("count", [0, -1, protocol.MAX_LEASE + 1])
def test_lease_counts_out_of_bounds_are_protocol_errors(count: int) -> None:
    payload = msgspec.msgpack.encode(["Lease", 1, count])
    with pytest.raises(ProtocolError):
        protocol.decode_request(payload)
