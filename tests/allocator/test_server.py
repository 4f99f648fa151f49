import asyncio
import contextlib
import itertools
import os
import socket
import sqlite3
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import pytest

from allocator import protocol
from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.counter import KNOWN_SCHEMES
from allocator.errors import AllocatorUnavailable, KeyMismatch, LeaseRefused, StoreError
from allocator.protocol import Granted, Hello, Lease
from allocator.server import HELLO_TIMEOUT, AllocatorServer
from allocator.store import open_store
from allocator.store.sqlite import SQLiteStore
from allocator.unix_socket import bind_unix_socket
from config.settings import Config
from tests.conftest import Allocators

T = TypeVar("T")


def sqlite_path(config: Config) -> str:
    store = open_store(config.store)
    assert isinstance(store, SQLiteStore)
    return store.path


def durable_mark(config: Config) -> int:
    """The mark as stored on disk, read through a connection of our own."""
    # closing(): sqlite3's own context manager commits but never closes (3.13 warns).
    with contextlib.closing(sqlite3.connect(sqlite_path(config))) as db:
        return db.execute("SELECT reserved FROM counter").fetchone()[0]


async def raw_exchange(path: str, data: bytes) -> bytes:
    """Send raw bytes to the allocator and return whatever it says before hanging up."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    writer.write_eof()  # so that a truncated frame is seen to be truncated
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_concurrent_leases_are_disjoint_and_within_the_durable_mark(
    allocator: Allocator, config: Config
) -> None:
    clients = [AllocatorClient(config.allocator_socket, timeout=5) for _ in range(4)]
    grants: list[tuple[int, int]] = []

    async def lease_many(client: AllocatorClient) -> None:
        for count in (1, 7, 1000, 50_000, 3):
            start, stop = await client.lease(count)
            assert 0 < stop - start <= count  # short only at the end of a reservation
            assert stop <= durable_mark(config)  # granted only after it was durable
            grants.append((start, stop))

    await asyncio.gather(*(lease_many(c) for c in clients))
    grants.sort()
    assert len(grants) == 20
    assert all(a_stop <= b_start for (_, a_stop), (b_start, _) in itertools.pairwise(grants))
    for client in clients:
        await client.close()


async def test_a_lease_never_spans_past_the_current_reservation(allocators: Allocators) -> None:
    allocator = await allocators.start(reserve_step=100, serve=False)
    assert await allocator.lease(60) == (0, 60)
    assert await allocator.lease(60) in ((60, 100), (60, 120))


async def test_after_a_crash_next_equals_the_durable_mark(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start(reserve_step=1000, serve=False)
    await allocator.lease(10)
    reserved = allocator.reserved
    # A crash: no final checkpoint, the store simply goes away.
    await allocator.store.close()

    restarted = await allocators.start(serve=False)
    assert restarted.next == restarted.reserved == reserved == durable_mark(config)
    start, _ = await restarted.lease(5)
    assert start >= reserved


async def test_a_clean_stop_gives_back_the_unused_reservation(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start(reserve_step=1000, serve=False)
    await allocator.lease(10)
    await allocators.stop(allocator)
    assert durable_mark(config) == 10

    restarted = await allocators.start(serve=False)
    assert restarted.next == 10
    assert await restarted.lease(5) == (10, 15)


async def test_the_key_is_the_same_after_a_restart(allocators: Allocators) -> None:
    first = await allocators.start(serve=False)
    await allocators.stop(first)
    second = await allocators.start(serve=False)
    assert second.key == first.key
    assert len(second.key) == 32


async def test_a_key_with_a_scheme_of_a_newer_release_is_refused(
    allocators: Allocators, config: Config
) -> None:
    await allocators.stop(await allocators.start(serve=False))
    with contextlib.closing(sqlite3.connect(sqlite_path(config))) as db, db:
        db.execute("UPDATE counter SET scheme = ?", (max(KNOWN_SCHEMES) + 1,))
    allocator = Allocator(open_store(config.store))
    try:
        with pytest.raises(StoreError, match=f"scheme {max(KNOWN_SCHEMES) + 1} is unknown"):
            await allocator.start()
    finally:
        await allocator.store.close()


async def test_a_start_that_fails_closes_the_store(
    allocators: Allocators, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await allocators.start(serve=False)
    await allocators.stop(stored)
    store = open_store(config.store)
    closed: list[bool] = []
    close = store.close

    async def counted_close() -> None:
        closed.append(True)
        await close()

    monkeypatch.setattr(store, "close", counted_close)
    other_key = bytes(b ^ 0xFF for b in stored.key)
    with pytest.raises(KeyMismatch):
        await Allocator(store, 0).start(other_key)
    assert closed == [True]  # no stop() follows a failed start: the connection must not leak


async def test_when_the_store_fails_it_grants_what_is_reserved_then_refuses(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start(reserve_step=100, serve=False)
    await allocator.lease(10)
    await asyncio.sleep(0)  # let any background reservation finish
    reserved = allocator.reserved
    # A real SQLite refusal to write, as on a read-only file.
    await allocator.store._connection().execute("PRAGMA query_only=ON")
    granted = 10
    while True:
        try:
            start, stop = await allocator.lease(30)
        except StoreError:
            break
        granted += stop - start
        assert stop <= reserved
    assert allocator.next == reserved == granted
    assert durable_mark(config) == reserved
    assert allocator.stats.last_store_error is not None
    assert allocator.stats.last_store_error_at is not None

    # Writable again: it recovers by itself, and never reissues.
    await allocator.store._connection().execute("PRAGMA query_only=OFF")
    await asyncio.sleep(1.1)  # the store retry delay
    start, _ = await allocator.lease(5)
    assert start >= reserved
    # The status's last store error and its time are cleared together (docs/operations.md).
    assert (allocator.stats.last_store_error, allocator.stats.last_store_error_at) == (None, None)


async def test_a_refused_lease_reaches_the_client(allocator: Allocator, config: Config) -> None:
    client = AllocatorClient(config.allocator_socket, timeout=5)
    await client.lease(1)
    await allocator.store._connection().execute("PRAGMA query_only=ON")
    with pytest.raises(LeaseRefused):  # noqa: PT012 - granted until the reservation is used up
        while True:
            await client.lease(100_000)
    await allocator.store._connection().execute("PRAGMA query_only=OFF")
    await client.close()


BAD_INPUT = {
    "garbage": b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",
    "truncated": protocol.encode(Hello(id=1, pid=1))[:-2],
    "oversized": struct.pack(">I", protocol.MAX_FRAME + 1) + b"x" * 100,
    "unknown tag": protocol.encode(Hello(id=1, pid=1))
    + struct.pack(">I", 9)
    + msgspec.msgpack.encode(["Reset", 1]),
    "lease before hello": protocol.encode(Lease(id=1, count=10)),
}


async def assert_dropped_without_a_grant(allocator: Allocator, config: Config, data: bytes) -> None:
    """Send ``data`` as a client would; no grant comes back, and others are still served."""
    before = allocator.stats.leased_numbers_total
    answer = await raw_exchange(config.allocator_socket, data)
    # At most the Welcome of a valid Hello comes back, never a grant.
    reader = asyncio.StreamReader()
    reader.feed_data(answer)
    reader.feed_eof()
    while (payload := await protocol.read_frame(reader)) is not None:
        assert not isinstance(protocol.decode_response(payload), Granted)
    assert allocator.stats.leased_numbers_total == before
    # ...and the allocator still serves everyone else.
    client = AllocatorClient(config.allocator_socket, timeout=5)
    start, stop = await client.lease(3)
    assert stop - start == 3
    await client.close()


@pytest.mark.parametrize("data", BAD_INPUT.values(), ids=BAD_INPUT.keys())
async def test_bad_input_is_dropped_without_a_grant(
    allocator: Allocator, config: Config, data: bytes
) -> None:
    await assert_dropped_without_a_grant(allocator, config, data)


async def test_a_silent_client_does_not_block_others(allocator: Allocator, config: Config) -> None:
    silent_reader, silent = await asyncio.open_unix_connection(config.allocator_socket)
    leased_before = allocator.stats.leased_numbers_total
    # Half the hello timeout: a lease that had to wait until the silent client is dropped
    # would time out.
    client = AllocatorClient(config.allocator_socket, timeout=HELLO_TIMEOUT / 2)
    start, stop = await client.lease(1)
    assert stop - start == 1
    assert allocator.stats.leased_numbers_total - leased_before == 1
    # Granted while the silent client was still connected, not after it was dropped.
    assert not silent_reader.at_eof()
    await client.close()
    silent.close()


async def test_the_socket_is_private(allocator: Allocator, config: Config) -> None:
    assert stat.S_IMODE(os.stat(config.allocator_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(config.runtime_dir).st_mode) == 0o700


async def test_a_live_allocator_socket_is_never_taken_over(
    allocator: Allocator, config: Config
) -> None:
    with pytest.raises(OSError, match="another allocator"):
        bind_unix_socket(config.allocator_socket)


def test_a_stale_socket_is_replaced_but_other_files_are_not(config: Config) -> None:
    os.makedirs(config.runtime_dir, mode=0o700, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(config.allocator_socket)
    stale.close()  # bound, never listening: what a killed allocator leaves behind
    bind_unix_socket(config.allocator_socket).close()

    os.unlink(config.allocator_socket)
    with open(config.allocator_socket, "w") as file:
        file.write("precious")
    with pytest.raises(OSError, match="not a socket"):
        bind_unix_socket(config.allocator_socket)


async def test_a_second_server_whose_bind_fails_leaves_the_first_ones_socket(
    allocator: Allocator, config: Config
) -> None:
    second = AllocatorServer(allocator, config.allocator_socket)
    with pytest.raises(OSError, match="another allocator"):
        await second.start()
    await second.close()  # as serve() does when start() fails
    assert stat.S_ISSOCK(os.lstat(config.allocator_socket).st_mode)
    client = AllocatorClient(config.allocator_socket, timeout=5)
    start, stop = await client.lease(1)  # a new connection: the first server still serves
    assert stop - start == 1
    await client.close()


async def test_a_removed_socket_file_is_bound_again(allocator: Allocator, config: Config) -> None:
    connected = AllocatorClient(config.allocator_socket, timeout=5)
    await connected.lease(1)
    os.unlink(config.allocator_socket)  # an operator's rm, a cleaner of the runtime directory
    latecomer = AllocatorClient(config.allocator_socket, timeout=5)
    start, stop = await until_it_works(lambda: latecomer.lease(1))
    assert stop - start == 1
    assert await connected.lease(1)  # the connection made before goes on
    await latecomer.close()
    await connected.close()


async def test_a_server_whose_socket_another_allocator_took_stops_with_an_error(
    allocators: Allocators, allocator: Allocator, config: Config
) -> None:
    os.unlink(config.allocator_socket)
    other = bind_unix_socket(config.allocator_socket)  # another allocator started meanwhile
    other.listen()
    try:
        with pytest.raises(OSError, match="another allocator"):
            await allocators.server(allocator).serve_until(asyncio.Event().wait())
        await allocators.stop(allocator)
        assert stat.S_ISSOCK(os.lstat(config.allocator_socket).st_mode)  # not ours to remove
    finally:
        other.close()


async def until_it_works(attempt: Callable[[], Awaitable[T]]) -> T:
    """The result of ``attempt`` once it stops raising AllocatorUnavailable (within 30 s)."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await attempt()
            except AllocatorUnavailable:
                await asyncio.sleep(0.05)
