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
from tests.service.conftest import ClientFactory, shortcuts_only

# The deadline for a request head is the shortcuts' connection handler's (header_timeout.py).
pytestmark = shortcuts_only

HEADER_TIMEOUT = 0.5
# How long a test waits for a cut-off before it fails: far above HEADER_TIMEOUT, so that a
# loaded machine cannot fail it, and far below keepalive_timeout (75 s), the only other timer
# that would close these connections. The tests wait for the cut-off; they do not time it.
CUT_OFF_WITHIN = 30.0
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


async def cut_off(reader: asyncio.StreamReader) -> None:
    """Wait until the server closes the connection, without an answer."""
    try:
        data = await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN)
    except ConnectionError:  # our own write hit the closed socket first
        data = b""
    assert data == b""  # closed without an answer: there was no request to answer


async def test_a_client_that_connects_and_says_nothing_is_cut_off(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await limited_client(allocators, make_config, make_client)
    began = time.monotonic()  # the server's timer cannot start before we connect
    reader, writer = await connect(client)
    await cut_off(reader)
    # Not before the timeout (less a timer's granularity).
    assert time.monotonic() - began >= HEADER_TIMEOUT - 0.01
    writer.close()


async def test_a_client_that_sends_its_head_one_byte_at_a_time_is_cut_off(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await limited_client(allocators, make_config, make_client)
    reader, writer = await connect(client)
    closed = asyncio.create_task(cut_off(reader))
    # A head that never ends: one more byte of a header every 0.05 s, until the server hangs
    # up. A timer that each byte restarted would never fire, and cut_off would fail.
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
    with contextlib.suppress(ConnectionError):  # cut off while writing: what we expect
        while not closed.done():
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.05)
    await closed
    writer.close()


async def test_many_slow_clients_do_not_delay_a_normal_one(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    # A head timeout long enough that, even on a loaded machine, the normal requests below are
    # answered before it cuts the slow connections off.
    client = await limited_client(allocators, make_config, make_client, "--header-timeout", "3")
    slow = [await connect(client) for _ in range(200)]
    for _, writer in slow:
        writer.write(b"GET /health HTTP/1.1\r\nHo")
    for _ in range(20):
        response = await client.get("/next-tracking-number", params=CANONICAL_QUERY)
        assert response.status == 200
    # Every normal request was answered while all 200 slow heads were still pending: none of
    # them had to be cut off first.
    assert not any(reader.at_eof() for reader, _ in slow)
    # ...and every slow connection is cut off after the timeout.
    await asyncio.gather(*(cut_off(reader) for reader, _ in slow))
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
    # Idle between requests, longer than the head timeout, on purpose: idling is the keep-alive
    # timer's business, not the head's.
    await asyncio.sleep(3 * HEADER_TIMEOUT)
    writer.write(HEAD)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"}")
    # A next head that starts but never ends is cut off (long before keepalive_timeout).
    writer.write(b"GET /hea")
    await cut_off(reader)
    writer.close()


async def test_a_request_being_answered_is_never_cut_off(
    make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    # An allocator that accepts and never answers: the request waits the whole lease timeout,
    # longer than the head timeout, while the first bytes of a pipelined second request arm
    # the head timer.
    config = make_config("--header-timeout", str(HEADER_TIMEOUT), "--lease-timeout", "3")
    os.makedirs(config.runtime_dir, mode=0o700, exist_ok=True)
    accepted: list[asyncio.StreamWriter] = []
    over = False  # the worker connects again after each Hello that timed out, until it stops

    def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if over:
            writer.close()
        else:
            accepted.append(writer)

    mute = await asyncio.start_unix_server(accept, config.allocator_socket)
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
        # The head timer fired meanwhile: this lower bound only grows on a loaded machine, and
        # leaves 2 s for the pause above to overrun.
        assert time.monotonic() - began > 2 * HEADER_TIMEOUT
        await reader.readuntil(b"}")
        writer.write(b"Host: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 503")  # /health: nothing in hand, no answer
        writer.close()
    finally:
        over = True
        mute.close()
        for writer in accepted:
            writer.close()
