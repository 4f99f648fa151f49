"""The allocator socket under hostile clients, beyond tests/allocator/test_server.py: requests
out of bounds, many bad clients at once, and the per-connection cap on requests in flight.

None of it crashes the allocator, grants a number, or keeps the good clients waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time

import msgspec
import pytest

from allocator import protocol
from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.protocol import Granted, Hello, Lease, StatusQuery
from allocator.server import HELLO_TIMEOUT, MAX_INFLIGHT_PER_CONNECTION
from config.settings import Config
from tests.allocator.test_server import assert_dropped_without_a_grant


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


HELLO = protocol.encode(Hello(id=1, pid=1))
OUT_OF_BOUNDS = {
    "lease of 0": HELLO + frame(msgspec.msgpack.encode(["Lease", 2, 0])),
    "lease past the cap": HELLO
    + frame(msgspec.msgpack.encode(["Lease", 2, protocol.MAX_LEASE + 1])),
    "negative lease": HELLO + frame(msgspec.msgpack.encode(["Lease", 2, -5])),
    "negative id": HELLO + frame(msgspec.msgpack.encode(["Lease", -1, 5])),
    "id past 2**63": HELLO + frame(msgspec.msgpack.encode(["Lease", 2**64 - 1, 5])),
    "lease count as text": HELLO + frame(msgspec.msgpack.encode(["Lease", 2, "5"])),
    "a response sent as a request": HELLO + frame(msgspec.msgpack.encode(["Granted", 2, 0, 10**9])),
    "status before hello": protocol.encode(StatusQuery(id=1)),
    "a report of garbage": HELLO + frame(msgspec.msgpack.encode(["Report", 2, ["x"]])),
    "an empty frame": HELLO + frame(b""),
    "a map, not an array": HELLO + frame(msgspec.msgpack.encode({"type": "Lease", "id": 2})),
}


@pytest.mark.parametrize("data", OUT_OF_BOUNDS.values(), ids=OUT_OF_BOUNDS.keys())
async def test_requests_out_of_bounds_are_dropped_without_a_grant(
    allocator: Allocator, config: Config, data: bytes
) -> None:
    await assert_dropped_without_a_grant(allocator, config, data)


async def test_many_bad_clients_at_once_do_not_hold_up_a_worker(
    allocator: Allocator, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Silent and trickling clients stay connected for the whole test: the workers' leases
    # must all be granted while they are, not once they are dropped.
    monkeypatch.setattr("allocator.server.HELLO_TIMEOUT", 60.0)
    path = config.allocator_socket
    bad: list[asyncio.StreamWriter] = []
    pending: list[asyncio.StreamReader] = []  # the bad clients that are never dropped here

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_unix_connection(path)
        bad.append(writer)
        return reader, writer

    async def hung_up(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.read()
        except OSError:  # reset while our bytes were still arriving: hung up all the same
            return b""

    async def garbage() -> bytes:
        reader, writer = await connect()
        writer.write(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
        return await hung_up(reader)

    async def oversized() -> bytes:
        reader, writer = await connect()
        writer.write(struct.pack(">I", 2**32 - 1) + b"x" * 1000)
        return await hung_up(reader)

    async def trickle() -> None:
        reader, writer = await connect()
        pending.append(reader)
        for byte in HELLO[:-1]:  # never a whole frame
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    async def silent() -> None:
        reader, _ = await connect()
        pending.append(reader)

    async def worker() -> list[tuple[int, int]]:
        # A lease that waited for a bad client to be dropped (60 s) would time out.
        client = AllocatorClient(path, timeout=10)
        grants = []
        for _ in range(100):
            grants.append(await client.lease(10))
            await asyncio.sleep(0.005)
        await client.close()
        return grants

    leased_before = allocator.stats.leased_numbers_total
    attackers = [
        *(garbage() for _ in range(50)),
        *(oversized() for _ in range(50)),
        *(trickle() for _ in range(50)),
        *(silent() for _ in range(100)),
    ]
    results = await asyncio.gather(worker(), worker(), *attackers)
    grants: list[tuple[int, int]] = results[0] + results[1]
    dropped = [answer for answer in results[2:102] if answer == b""]
    # Every grant came while all 150 silent and trickling clients were still connected.
    assert len(pending) == 150
    assert not any(reader.at_eof() for reader in pending)
    for writer in bad:
        writer.close()

    assert len(dropped) == 100  # every garbage and oversized client was dropped
    blocks = sorted(grants)
    assert all(a_stop <= b_start for (_, a_stop), (b_start, _) in itertools.pairwise(blocks))
    # Nothing was granted to anyone but the two workers.
    granted = sum(stop - start for start, stop in blocks)
    assert allocator.stats.leased_numbers_total - leased_before == granted == 2 * 100 * 10


async def test_a_silent_client_is_dropped_after_the_hello_timeout(
    allocator: Allocator, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("allocator.server.HELLO_TIMEOUT", 0.3)
    began = time.monotonic()  # the allocator's timer cannot start before we connect
    reader, writer = await asyncio.open_unix_connection(config.allocator_socket)
    # Dropped long before the real timeout (10 s)...
    assert await asyncio.wait_for(reader.read(), HELLO_TIMEOUT / 2) == b""
    # ...and not before the patched one (less a timer's granularity).
    assert time.monotonic() - began >= 0.3 - 0.01
    assert HELLO_TIMEOUT == 10.0  # the real value, documented in docs/reliability.md
    writer.close()


async def test_requests_in_flight_are_capped_per_connection_and_others_go_on(
    allocator: Allocator, config: Config
) -> None:
    gated_count = 7  # leases of this size wait at the gate; others pass
    gate = asyncio.Event()
    waiting = 0
    original = allocator.lease

    async def gated_lease(count: int) -> tuple[int, int]:
        nonlocal waiting
        if count == gated_count:
            waiting += 1
            try:
                await gate.wait()
            finally:
                waiting -= 1
        return await original(count)

    allocator.lease = gated_lease  # type: ignore[method-assign]
    reader, writer = await asyncio.open_unix_connection(config.allocator_socket)
    requests = 5 * MAX_INFLIGHT_PER_CONNECTION
    writer.write(HELLO)
    for request_id in range(2, 2 + requests):
        writer.write(protocol.encode(Lease(id=request_id, count=gated_count)))
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            while waiting < MAX_INFLIGHT_PER_CONNECTION:  # noqa: ASYNC110 - the gate is ours
                await asyncio.sleep(0.01)

        # Another worker's connection is not held up by it.
        other = AllocatorClient(config.allocator_socket, timeout=2)
        start, stop = await other.lease(3)
        assert stop - start == 3
        await other.close()
        # The cap holds: while the other connection got its answer (its hello, its lease, and many
        # turns of the event loop), the allocator read no more of this one's waiting requests.
        assert waiting == MAX_INFLIGHT_PER_CONNECTION
    finally:
        gate.set()  # a failure above must not leave leases waiting: the allocator could not stop

    answered = set()
    async with asyncio.timeout(5):
        first = await protocol.read_frame(reader)
        assert first is not None
        assert isinstance(protocol.decode_response(first), protocol.Welcome)
        while len(answered) < requests:
            payload = await protocol.read_frame(reader)
            assert payload is not None
            response = protocol.decode_response(payload)
            assert isinstance(response, Granted)
            assert response.stop - response.start == gated_count
            answered.add(response.id)
    assert answered == set(range(2, 2 + requests))
    writer.close()
