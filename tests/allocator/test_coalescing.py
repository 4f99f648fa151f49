"""A cold S10 request is one lease, a round trip to the allocator: what one turn of a worker's
event loop asks for travels in one write, the allocator answers what it read at once in one
write, and a lease that the reservation in hand covers is answered without a task or a slot.

Real allocator, real Unix socket, real SQLite; only the writes are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from allocator import protocol
from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.errors import AllocatorUnavailable
from allocator.protocol import Granted, Hello, Lease, Welcome, WorkerCounters
from allocator.reservations import RATE_WINDOW
from allocator.series import Series
from allocator.server import MAX_INFLIGHT_PER_CONNECTION
from config.settings import Config
from tests.conftest import Allocators

LEASES = 50


def count_writes(writer: asyncio.StreamWriter, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every chunk written to ``writer`` from now on, one entry per write."""
    chunks: list[bytes] = []
    write: Callable[[bytes], None] = writer.write

    def counting(data: bytes) -> None:
        chunks.append(bytes(data))
        write(data)

    monkeypatch.setattr(writer, "write", counting)
    return chunks


async def read_response(reader: asyncio.StreamReader) -> protocol.Response:
    payload = await protocol.read_frame(reader, protocol.MAX_RESPONSE_FRAME)
    assert payload is not None
    return protocol.decode_response(payload)


async def test_the_leases_of_one_turn_reach_the_allocator_in_one_write(
    allocator: Allocator, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = AllocatorClient(config.allocator_socket, timeout=5)
    await client.connect()
    assert client._writer is not None
    chunks = count_writes(client._writer, monkeypatch)

    grants = await asyncio.gather(*(client.lease(1) for _ in range(LEASES)))

    # Without the outbox, one write (and one wakeup of the allocator) per lease.
    assert len(chunks) == 1
    assert len(b"".join(chunks)) == sum(
        len(protocol.encode(Lease(id=i, count=1))) for i in range(2, 2 + LEASES)
    )
    values = [v for start, stop in grants for v in range(start, stop)]
    assert len(set(values)) == LEASES
    await client.close()


async def test_the_answers_to_what_the_allocator_read_at_once_leave_in_one_write(
    allocators: Allocators, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocator = await allocators.start()
    await allocator.lease(1)  # values reserved: every lease below is answered from them
    server = allocators.server(allocator)
    reader, writer = await asyncio.open_unix_connection(config.allocator_socket)
    writer.write(protocol.encode(Hello(id=1, pid=1)))
    assert isinstance(await read_response(reader), Welcome)
    (answering,) = server._connections.values()
    chunks = count_writes(answering.writer, monkeypatch)

    writer.write(b"".join(protocol.encode(Lease(id=i, count=2)) for i in range(2, 2 + LEASES)))
    granted = [await read_response(reader) for _ in range(LEASES)]

    # Without the outbox, one write per answer.
    assert len(chunks) == 1
    assert all(isinstance(g, Granted) and g.stop - g.start == 2 for g in granted)
    assert sorted(g.id for g in granted) == list(range(2, 2 + LEASES))
    writer.close()


async def test_a_lease_the_reservation_covers_is_answered_while_the_slots_wait_for_the_store(
    allocator: Allocator, config: Config
) -> None:
    # Leases of a series not made yet wait for the store (here at a gate of ours) and hold
    # every slot of the connection; a lease of a counter with values in hand needs neither.
    gate = asyncio.Event()
    waiting = 0
    open_series = allocator.store.open_series

    async def gated_open_series(name: str, order: str, size: int) -> Series:
        nonlocal waiting
        waiting += 1
        await gate.wait()
        return await open_series(name, order, size)

    allocator.store.open_series = gated_open_series  # type: ignore[method-assign]
    await allocator.lease(1)
    reader, writer = await asyncio.open_unix_connection(config.allocator_socket)
    writer.write(protocol.encode(Hello(id=1, pid=1)))
    assert isinstance(await read_response(reader), Welcome)
    slow = range(2, 2 + MAX_INFLIGHT_PER_CONNECTION)
    for request_id in slow:
        writer.write(protocol.encode(Lease(id=request_id, count=1, series="s10:RR:GB")))
    writer.write(protocol.encode(Lease(id=100, count=3)))
    try:
        async with asyncio.timeout(5):
            # Without the answer from the reservation in hand, the server reads nothing past
            # the slots' waiting leases, and this times out.
            quick = await read_response(reader)
        assert isinstance(quick, Granted)
        assert (quick.id, quick.stop - quick.start) == (100, 3)
        assert waiting == MAX_INFLIGHT_PER_CONNECTION  # the others did wait for the store
    finally:
        gate.set()
    async with asyncio.timeout(5):
        answers = [await read_response(reader) for _ in slow]
    assert sorted(a.id for a in answers) == list(slow)
    assert all(isinstance(a, Granted) for a in answers)
    writer.close()


async def test_calls_in_flight_share_one_timer_and_each_keeps_its_deadline(
    allocator: Allocator, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leases of series not made yet wait for the store for ever (a gate of ours); leases of
    # the default counter are answered at once.
    gate = asyncio.Event()
    open_series = allocator.store.open_series

    async def gated_open_series(name: str, order: str, size: int) -> Series:
        await gate.wait()
        return await open_series(name, order, size)

    allocator.store.open_series = gated_open_series  # type: ignore[method-assign]
    client = AllocatorClient(config.allocator_socket, timeout=0.5)
    await client.connect()
    loop = asyncio.get_running_loop()
    timers = 0
    call_at = loop.call_at

    def counting_call_at(*args: object) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    countries = ["GB", "FR", "DE", "NL", "IT", "ES", "PT", "BE", "AT", "CH"]
    try:
        async with asyncio.timeout(10):  # a bound for a hang only
            results = await asyncio.gather(
                *(client.lease_series(f"s10:RR:{c}", "permuted", 1) for c in countries),
                *(client.lease(1) for _ in countries),
                return_exceptions=True,
            )
            waited, answered = results[: len(countries)], results[len(countries) :]
            assert all(isinstance(r, tuple) for r in answered)
            for failure in waited:
                assert isinstance(failure, AllocatorUnavailable)
                assert "did not answer" in str(failure)
            # One timer, and one more for each call still waiting when the one before it
            # expired; a timer per call was 20 here.
            assert 1 <= timers <= len(countries) + 1

            # Later calls get a deadline of their own too, the timer gone in between.
            with pytest.raises(AllocatorUnavailable, match="did not answer"):
                await client.lease_series("s10:EE:GB", "permuted", 1)
            start, stop = await client.lease(2)
            assert stop - start == 2
    finally:
        gate.set()
        await client.close()


async def test_a_report_sent_just_before_the_client_closes_reaches_the_allocator(
    allocators: Allocators, config: Config
) -> None:
    # A worker's last report (and an Abandon) go out as it stops: close() in the same turn.
    allocator = await allocators.start()
    server = allocators.server(allocator)
    client = AllocatorClient(config.allocator_socket, timeout=5)
    await client.connect()
    assert client.report(WorkerCounters(issued=7))
    await client.close()
    async with asyncio.timeout(5):
        while server.worker_totals.issued != 7:  # noqa: ASYNC110 - the allocator's own state
            await asyncio.sleep(0.01)


async def test_answers_to_the_frames_read_before_a_bad_one_leave_before_the_hang_up(
    allocator: Allocator, config: Config
) -> None:
    await allocator.lease(1)  # values reserved: the lease below is answered as it is read
    reader, writer = await asyncio.open_unix_connection(config.allocator_socket)
    hello, lease = protocol.encode(Hello(id=1, pid=1)), protocol.encode(Lease(id=2, count=5))
    writer.write(hello + lease + b"\x00\x00\x00\x02\xc1\xc1")  # then a frame of garbage
    async with asyncio.timeout(5):
        assert isinstance(await read_response(reader), Welcome)
        granted = await read_response(reader)
        assert await reader.read() == b""  # hung up
    assert isinstance(granted, Granted)
    assert (granted.id, granted.stop - granted.start) == (2, 5)
    writer.close()


async def test_a_series_rate_kept_as_a_running_sum_forgets_what_left_its_window(
    allocator: Allocator,
) -> None:
    # The rate is read at every lease, so its sum is kept as leases come and go.
    for count in (3, 4, 5):
        await allocator.lease_series("s10:RR:GB", "permuted", count)
    reservations = allocator.series["s10:RR:GB"]
    assert reservations._leased_in_window == 12 == sum(n for _, n in reservations._leased)
    assert reservations.lease_rate() > 0
    reservations._forget_old_leases(time.monotonic() + RATE_WINDOW + 2)
    assert reservations._leased_in_window == 0
    assert reservations.lease_rate() == 0
    await allocator.lease_series("s10:RR:GB", "permuted", 2)
    assert reservations._leased_in_window == 2
