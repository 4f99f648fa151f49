"""A slow client cannot hold a worker: request heads must arrive within ``header_timeout``.

Without service/server/header_timeout.py, aiohttp keeps a connection that sends nothing, or its
head one byte at a time, until its keep-alive timer fires (an hour by default in the runner),
and thousands of them exhaust a worker's file descriptors (slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient

from config.settings import Config
from tests.conftest import CANONICAL_QUERY, Allocators
from tests.service.conftest import ClientFactory

HEADER_TIMEOUT = 0.5
HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def limited_client(
    allocators: Allocators,
    make_config: Callable[..., Config],
    make_client: ClientFactory,
    *flags: str,
) -> TestClient:
    await allocators.start()
    return await make_client(make_config("--header-timeout", str(HEADER_TIMEOUT), *flags))


async def connect(client: TestClient) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert client.port is not None
    return await asyncio.open_connection("127.0.0.1", client.port)


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection; fails after ``limit``."""
    began = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), limit)
    except ConnectionError:  # our own write hit the closed socket first
        data = b""
    assert data == b""  # closed without an answer: there was no request to answer
    return time.monotonic() - began


async def test_a_client_that_connects_and_says_nothing_is_cut_off(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await limited_client(allocators, make_config, make_client)
    reader, writer = await connect(client)
    elapsed = await closed_after(reader, 5 * HEADER_TIMEOUT)
    assert elapsed >= HEADER_TIMEOUT * 0.8
    writer.close()


async def test_a_client_that_sends_its_head_one_byte_at_a_time_is_cut_off(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await limited_client(allocators, make_config, make_client)
    reader, writer = await connect(client)
    began = time.monotonic()
    with contextlib.suppress(ConnectionError):  # cut off while writing: what we expect
        for byte in HEAD[:-2]:  # never the final CRLF: the head is never complete
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    # The bytes kept coming (len(HEAD) * 0.05 s is longer than the timeout), yet the head had
    # to be complete within the timeout.
    assert len(HEAD) * 0.05 > 2 * HEADER_TIMEOUT
    await closed_after(reader, 5 * HEADER_TIMEOUT)
    assert time.monotonic() - began < 2 * HEADER_TIMEOUT
    writer.close()


async def test_many_slow_clients_do_not_delay_a_normal_one(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await limited_client(allocators, make_config, make_client)
    slow = [await connect(client) for _ in range(200)]
    for _, writer in slow:
        writer.write(b"GET /health HTTP/1.1\r\nHo")
    latencies = []
    for _ in range(20):
        began = time.monotonic()
        response = await client.get("/next-tracking-number", params=CANONICAL_QUERY)
        assert response.status == 200
        latencies.append(time.monotonic() - began)
        await asyncio.sleep(0.02)
    assert max(latencies) < 0.25, latencies
    # ...and every slow connection is gone soon after the timeout.
    for reader, _ in slow:
        assert await asyncio.wait_for(reader.read(), 5 * HEADER_TIMEOUT) == b""
    for _, writer in slow:
        writer.close()


async def test_a_keep_alive_connection_may_idle_but_its_next_head_must_be_prompt(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await limited_client(allocators, make_config, make_client)
    reader, writer = await connect(client)
    writer.write(HEAD)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"}")  # the JSON body
    # Idle between requests is the keep-alive timer's business, not the head's.
    await asyncio.sleep(3 * HEADER_TIMEOUT)
    writer.write(HEAD)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"}")
    # A next head that starts but never ends is cut off.
    writer.write(b"GET /hea")
    elapsed = await closed_after(reader, 5 * HEADER_TIMEOUT)
    assert elapsed < 3 * HEADER_TIMEOUT
    writer.close()


async def test_a_request_being_answered_is_never_cut_off(
    make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    # An allocator that accepts and never answers: the request waits the whole lease timeout,
    # longer than the head timeout, while the first bytes of a pipelined second request arm
    # the head timer.
    config = make_config("--header-timeout", str(HEADER_TIMEOUT), "--lease-timeout", "1.5")
    os.makedirs(config.runtime_dir, mode=0o700, exist_ok=True)
    accepted: list[asyncio.StreamWriter] = []
    mute = await asyncio.start_unix_server(
        lambda _, writer: accepted.append(writer), config.allocator_socket
    )
    try:
        client = await make_client(config)
        reader, writer = await connect(client)
        query = urlencode(CANONICAL_QUERY)
        writer.write(f"GET /next-tracking-number?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(0.1)
        writer.write(b"GET /health HTTP/1.1\r\n")
        began = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 503")
        assert time.monotonic() - began > 2 * HEADER_TIMEOUT  # the timer fired meanwhile
        await reader.readuntil(b"}")
        writer.write(b"Host: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 503")  # /health: nothing in hand, no answer
        writer.close()
    finally:
        mute.close()
        for writer in accepted:
            writer.close()
