import asyncio
import contextlib
from pathlib import Path

import pytest

from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.counter import NEW_STORE_SCHEME, SCHEME_FEISTEL4
from allocator.errors import AllocatorUnavailable, KeyMismatch
from allocator.unix_socket import bind_unix_socket
from config.settings import Config
from tests.allocator.old_stores import make_a_store_from_before_schemes
from tests.conftest import Allocators


async def test_concurrent_leases_share_one_connection(allocator: Allocator, config: Config) -> None:
    client = AllocatorClient(config.allocator_socket, timeout=5)
    grants = await asyncio.gather(*(client.lease(n) for n in range(1, 101)))
    assert [stop - start for start, stop in grants] == list(range(1, 101))
    values = [v for start, stop in grants for v in range(start, stop)]
    assert len(values) == len(set(values))
    await client.close()


async def test_connect_returns_the_allocators_key_and_learns_its_scheme(
    allocator: Allocator, config: Config
) -> None:
    client = AllocatorClient(config.allocator_socket, timeout=5)
    assert await client.connect() == allocator.key
    assert client.scheme == allocator.scheme == NEW_STORE_SCHEME
    await client.close()


async def test_no_allocator_means_unavailable(short_tmp: Path) -> None:
    client = AllocatorClient(str(short_tmp / "nobody.sock"), timeout=1)
    with pytest.raises(AllocatorUnavailable):
        await client.lease(1)


async def test_an_allocator_that_never_answers_times_out(short_tmp: Path) -> None:
    path = str(short_tmp / "mute.sock")
    accepted: list[asyncio.StreamWriter] = []
    mute = await asyncio.start_unix_server(
        lambda _, writer: accepted.append(writer), sock=bind_unix_socket(path)
    )
    client = AllocatorClient(path, timeout=0.3)
    # Far above the client's 0.3 s, so that a loaded machine cannot fail it: a client that
    # waited for an answer without a timeout would fail here, with TimeoutError.
    async with asyncio.timeout(10):
        with pytest.raises(AllocatorUnavailable, match="did not answer"):
            await client.lease(1)
    await client.close()
    for writer in accepted:
        writer.close()
    mute.close()
    await mute.wait_closed()


async def test_a_welcome_that_comes_too_late_leaves_no_connection_without_a_key(
    allocator: Allocator, config: Config, short_tmp: Path
) -> None:
    # A worker that starts as the service is paused (SIGSTOP of the group) or its allocator
    # stalls: its Hello times out, and the Welcome comes after. Leases on that connection
    # used to succeed with no key, and every request of the worker failed (500) for ever.
    path = str(short_tmp / "late.sock")
    welcome_held = asyncio.Event()
    release = asyncio.Event()
    first = True
    streams: list[asyncio.StreamWriter] = []  # every end the proxy opened, closed at the end

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def late_on_first_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal first
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(
            config.allocator_socket
        )
        streams.extend((writer, upstream_writer))
        if first:
            first = False
            welcome_held.set()
            await release.wait()
        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))

    proxy = await asyncio.start_unix_server(late_on_first_connection, sock=bind_unix_socket(path))
    client = AllocatorClient(path, timeout=0.3)
    with pytest.raises(AllocatorUnavailable, match="did not answer"):
        await client.lease(1)
    assert welcome_held.is_set()
    release.set()  # the Welcome reaches the client now, after its timeout
    client.timeout = 10  # a bound for waiting only
    await client.lease(1)
    assert client.key == allocator.key
    await client.close()
    proxy.close()
    for stream in streams:
        stream.close()
    await asyncio.gather(*(stream.wait_closed() for stream in streams), return_exceptions=True)
    await proxy.wait_closed()


async def test_the_client_reconnects_after_the_allocator_restarts(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start()
    client = AllocatorClient(config.allocator_socket, timeout=5)
    _, first_stop = await client.lease(100)
    await allocators.stop(allocator)
    with pytest.raises(AllocatorUnavailable):
        await client.lease(1)

    await allocators.start()
    start, _ = await client.lease(100)
    assert start >= first_stop
    await client.close()


async def test_a_changed_key_stops_the_client(
    allocators: Allocators, config: Config, short_tmp: Path
) -> None:
    allocator = await allocators.start()
    client = AllocatorClient(config.allocator_socket, timeout=5)
    await client.lease(1)
    await allocators.stop(allocator)

    # Same socket, a different store: a different key.
    await allocators.start(store=f"sqlite:///{short_tmp}/other.sqlite3")
    with pytest.raises(KeyMismatch):
        await client.lease(1)
    await client.close()


async def test_a_changed_scheme_under_the_same_key_stops_the_client(
    allocators: Allocators, config: Config, short_tmp: Path
) -> None:
    allocator = await allocators.start()
    client = AllocatorClient(config.allocator_socket, timeout=5)
    await client.lease(1)
    await allocators.stop(allocator)

    # Same socket, same key, but a store that uses it with the old scheme: other numbers.
    old = f"sqlite:///{short_tmp}/old/tracking.sqlite3"
    await make_a_store_from_before_schemes(old, allocator.key, mark=0)
    assert (await allocators.start(store=old)).scheme == SCHEME_FEISTEL4
    with pytest.raises(KeyMismatch):
        await client.lease(1)
    await client.close()
