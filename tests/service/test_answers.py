"""JsonAnswer: the plain way (one formatted head) and aiohttp's way must send the same answer.

The requests are written byte for byte on a real socket, so that each path is taken for sure
(HTTP/1.0 and ``Connection: close`` take aiohttp's way), and the answers are read as bytes.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from service.answers import JsonAnswer

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
AIOHTTPS_WAY = {
    "HTTP/1.0 keep-alive": b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n",
    "HTTP/1.1 close": b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", AIOHTTPS_WAY.values(), ids=AIOHTTPS_WAY.keys())
async def test_the_plain_way_sends_what_aiohttps_way_sends(
    aiohttp_client: type, request_bytes: bytes
) -> None:
    client = await aiohttp_client(await _app(headers={"Retry-After": "1"}))
    plain_status, plain_headers, plain_body = await _exchange(client, PLAIN)
    status, headers, body = await _exchange(client, request_bytes)
    assert plain_status == "HTTP/1.1 200 OK"
    assert status.endswith(" 200 OK")
    assert plain_body == body == BODY
    for name in ("Content-Type", "Content-Length", "X-Request-ID", "Retry-After", "Server"):
        assert plain_headers[name] == headers[name], name
    assert plain_headers["Content-Type"] == "application/json"
    assert plain_headers["Content-Length"] == str(len(BODY))
    assert plain_headers["X-Request-ID"] == CORRELATION_ID
    assert "Date" in plain_headers
    assert "Connection" not in plain_headers
    assert headers.get("Connection") in ("keep-alive", "close")


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


async def test_response_signals_run_and_their_headers_are_sent(aiohttp_client: type) -> None:
    app = await _app()

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Stamp"] = "stamped"

    app.on_response_prepare.append(stamp)
    client = await aiohttp_client(app)
    _, headers, _ = await _exchange(client, PLAIN)
    assert headers["X-Stamp"] == "stamped"


@pytest.mark.parametrize("request_bytes", [PLAIN, *AIOHTTPS_WAY.values()])
async def test_a_line_break_in_a_header_is_refused(
    aiohttp_client: type, request_bytes: bytes
) -> None:
    # Neither way sends anything: aiohttp's serialiser refuses too, and the connection closes.
    client = await aiohttp_client(await _app(headers={"X-Bad": "a\r\nb: c"}))
    with pytest.raises(asyncio.IncompleteReadError):
        await _exchange(client, request_bytes)


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


def test_aiohttp_keeps_the_private_attributes_the_plain_way_uses() -> None:
    # If a new aiohttp renames them, the plain way would break: this says where.
    answer = JsonAnswer(BODY, CORRELATION_ID)
    private = ("_payload_writer", "_req", "_eof_sent", "_keep_alive", "_must_be_empty_body")
    for name in (*private, "_body_length", "_headers", "_cookies", "_compression", "_chunked"):
        assert hasattr(answer, name), name
    request = make_mocked_request("GET", "/")
    assert hasattr(request, "_payload_writer")
    assert hasattr(request, "_prepare_hook")
