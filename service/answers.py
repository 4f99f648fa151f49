"""``JsonAnswer``: every JSON answer of the service, the hot path's included.

aiohttp's ``web.Response`` builds its head through several layers on every request: a header
multidict, content type and length bookkeeping, the response signals, then serialisation. On a
minimal app that is about a third of what aiohttp spends on a request besides the socket
(docs/performance.md), and our answers need none of it: the body is bytes already and the
headers are known. So a plain request (GET over HTTP/1.1, keep-alive) gets its head from one
format string, written with the body in one write. Every other request (HEAD, HTTP/1.0, a
connection to close), and an answer given cookies, compression or chunking, goes through
aiohttp's own ``prepare``, with the same headers.

The response signals (``on_response_prepare``, which aiohttp-cors uses) run on both paths, and
any headers they add are sent. The plain path sets the private attributes that
``StreamResponse`` sets itself, and reads the request's ``_payload_writer`` and
``_prepare_hook``; tests/service/test_answers.py fails if a new aiohttp changes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_request import BaseRequest

JSON = "application/json"
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus
}


def _header_lines(headers: Mapping[str, str]) -> str:
    """``Name: value`` lines; refuses a line break inside one, as aiohttp's serialiser does
    (it would let a value forge headers or a whole response)."""
    lines = []
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"a line break in response header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


class JsonAnswer(web.StreamResponse):
    """A complete JSON answer: ``body``, and ``correlation_id`` in ``X-Request-ID``.

    ``headers`` holds only the extra headers until the answer is prepared: the others are
    known, and cheaper to format than to keep in a multidict.
    """

    def __init__(
        self,
        body: bytes,
        correlation_id: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._json = body
        self._correlation_id = correlation_id
        self._answer: bytes | None = None  # head and body, when prepared the plain way

    @property
    def content_type(self) -> str:
        return JSON

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._payload_writer is not None or self._eof_sent:
            return await super().prepare(request)  # already prepared: aiohttp's answer
        if (
            self._keep_alive is None  # force_close() was not called
            and not (self._cookies or self._compression or self._chunked)  # aiohttp's work
            and request.keep_alive
            and request.method == "GET"
            and request.version == HttpVersion11
        ):
            self._keep_alive = True
            self._req = request
            await request._prepare_hook(self)  # the response signals
            extra = _header_lines(self._headers) if self._headers else ""
            body = self._json
            head = (
                f"{_STATUS_LINES[self.status]}Content-Type: {JSON}\r\n"
                f"Content-Length: {len(body)}\r\nX-Request-ID: {self._correlation_id}\r\n"
                f"{extra}Date: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n"
            )
            self._answer = head.encode() + body
            writer = self._payload_writer = request._payload_writer
            return writer
        headers = self._headers
        headers["Content-Type"] = JSON
        headers["Content-Length"] = str(len(self._json))
        headers["X-Request-ID"] = self._correlation_id
        return await super().prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        answer = self._answer
        if answer is None:  # aiohttp's way: no body after a HEAD
            await super().write_eof(b"" if self._must_be_empty_body else self._json)
            return
        writer = self._payload_writer
        assert writer is not None, "the answer was not prepared"
        await writer.write_eof(answer)
        self._eof_sent = True
        self._req = None
        self._body_length = len(self._json)
        self._payload_writer = None
