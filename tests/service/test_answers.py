"""JsonAnswer: the plain way (one formatted head) and aiohttp's way must send the same answer.

The requests are written byte for byte on a real socket, so that each path is taken for sure
(HTTP/1.0 and ``Connection: close`` take aiohttp's way), and the answers are read as bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.server.answers import JsonAnswer

CORRELATION_ID = "3f0e7a1c-0000-8000-8000-000000000001"
BODY = b'{"answer":42}'


async def _app(status: int = 200, headers: dict[str, str] | None = None) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        return JsonAnswer(BODY, CORRELATION_ID, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/", handler)
    return app


async def _exchange(client: TestClient, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` on a fresh connection: the status line, headers and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status_line, *lines = head.removesuffix("\r\n\r\n").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        length = int(headers.get("Content-Length", "0"))
        body = b"" if request.startswith(b"HEAD") else await reader.readexactly(length)
        return status_line, headers, body
    finally:
        writer.close()


PLAIN = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
REQUESTS = {
    "plain": PLAIN,
    "HTTP/1.0 keep-alive": b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n",
    "HTTP/1.1 close": b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    "HEAD": b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n",
}


def _set(name: str, value: str) -> Callable[[web.StreamResponse], None]:
    return lambda response: response.headers.__setitem__(name, value)


# What an on_response_prepare signal may do to an answer.
SIGNALS: dict[str, Callable[[web.StreamResponse], None] | None] = {
    "no signal": None,
    "adds a header": _set("X-Stamp", "stamped"),
    "sets Content-Type": _set("Content-Type", "application/problem+json"),
    "sets Content-Length": _set("Content-Length", str(len(BODY))),
    "sets X-Request-ID": _set("X-Request-ID", "from-a-signal"),
    "sets Date": _set("Date", "Thu, 01 Jan 1970 00:00:00 GMT"),
    "sets Server": _set("Server", "tracking"),
    "replaces an extra header": _set("Retry-After", "2"),
    "calls force_close()": lambda response: response.force_close(),
}


async def _compared_app(
    signal: Callable[[web.StreamResponse], None] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Application:
    """``/`` answers with JsonAnswer, ``/aiohttp`` with aiohttp's own ``web.Response``."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return JsonAnswer(BODY, CORRELATION_ID, status=503, headers=headers)

    async def reference(request: web.Request) -> web.StreamResponse:
        extra = {"Content-Type": "application/json", "X-Request-ID": CORRELATION_ID}
        return web.Response(body=BODY, status=503, headers={**extra, **(headers or {})})

    app = web.Application()
    app.router.add_route("*", "/", answer)
    app.router.add_route("*", "/aiohttp", reference)
    if signal is not None:

        async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
            signal(response)

        app.on_response_prepare.append(on_prepare)
    return app


async def _raw_exchange(client: TestClient, request: bytes) -> tuple[bytes, bool]:
    """Send ``request``, then a plain one on the same connection: the first answer, as bytes
    up to the end of its body, and whether the server closed the connection after it."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as closed:
            return closed.partial, True  # nothing, when the answer was refused
        length = int(re.search(rb"\r\nContent-Length: ([0-9]+)\r\n", head)[1])  # type: ignore[index]
        body = b"" if request.startswith(b"HEAD") else await reader.readexactly(length)
        writer.write(PLAIN)
        try:
            closed = await reader.read(1) == b""
        except ConnectionResetError:
            closed = True
        return head + body, closed
    finally:
        writer.close()


def _normalised(answer: bytes) -> tuple[str, list[str], bytes]:
    """The status line, the header lines in order of name (Date's time masked: the two answers
    are a moment apart), and the body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    lines = [re.sub(r"^Date: .* GMT$", "Date: <now>", line) for line in lines]
    return status, sorted(lines, key=lambda line: line.split(":")[0].lower()), body


@pytest.mark.parametrize("request_bytes", REQUESTS.values(), ids=REQUESTS.keys())
@pytest.mark.parametrize("signal", SIGNALS.values(), ids=SIGNALS.keys())
async def test_the_plain_way_sends_what_aiohttps_way_sends(
    aiohttp_client: type,
    signal: Callable[[web.StreamResponse], None] | None,
    request_bytes: bytes,
) -> None:
    # Header by header, and whether the connection stays open, against web.Response.
    client = await aiohttp_client(await _compared_app(signal, {"Retry-After": "1"}))
    answer, closed = await _raw_exchange(client, request_bytes)
    reference = request_bytes.replace(b" / ", b" /aiohttp ", 1)
    expected, expected_closed = await _raw_exchange(client, reference)
    assert _normalised(answer) == _normalised(expected)
    assert closed == expected_closed
    status, _, body = _normalised(answer)
    assert status.endswith(" 503 Service Unavailable")
    assert body == (b"" if request_bytes.startswith(b"HEAD") else BODY)


# Every control character, and one of each other kind, in a header's value and in its name.
CHARACTERS = [chr(code) for code in [*range(0x20), 0x7F]] + [" ", "é"]


@pytest.mark.parametrize("character", CHARACTERS, ids=[f"U+{ord(c):04X}" for c in CHARACTERS])
@pytest.mark.parametrize("where", ["value", "name"])
async def test_a_header_is_refused_exactly_where_aiohttp_refuses_it(
    aiohttp_client: type, character: str, where: str
) -> None:
    if where == "name" and character in " é":
        return  # not a token character: aiohttp's multidict would send it as it is, as we do
    headers = {"X-Bad": f"a{character}b"} if where == "value" else {f"X-B{character}d": "1"}
    client = await aiohttp_client(await _compared_app(headers=headers))
    for request in (PLAIN, REQUESTS["HTTP/1.1 close"]):
        answer, _ = await _raw_exchange(client, request)
        expected, _ = await _raw_exchange(client, request.replace(b" / ", b" /aiohttp ", 1))
        assert _normalised(answer) == _normalised(expected), request
        sent = character == "\t" or (character >= " " and character != "\x7f")
        assert (answer != b"") == sent


async def test_a_head_request_gets_the_headers_and_no_body(aiohttp_client: type) -> None:
    client = await aiohttp_client(await _app())
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n" + PLAIN)
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d\r\n" % len(BODY) in head
        # The next bytes are the second answer's head: the first one had no body.
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
        assert await reader.readexactly(len(BODY)) == BODY
    finally:
        writer.close()


async def test_keep_alive_serves_many_answers_on_one_connection(aiohttp_client: type) -> None:
    client = await aiohttp_client(await _app(status=503))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        for _ in range(3):
            writer.write(PLAIN)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert await reader.readexactly(len(BODY)) == BODY
    finally:
        writer.close()


async def test_cookies_and_compression_take_aiohttps_way(aiohttp_client: type) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        answer = JsonAnswer(BODY, CORRELATION_ID)
        answer.set_cookie("session", "s1")
        answer.enable_compression(web.ContentCoding.gzip)
        return answer

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    response = await client.get("/", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.cookies["session"].value == "s1"
    assert await response.read() == BODY  # the client decompresses
