"""``JsonAnswer``: every JSON answer of the service, the hot path's included.

aiohttp's ``web.Response`` builds its head through several layers on every request: a header
multidict, content type and length bookkeeping, the response signals, then serialisation. On a
minimal app that is about a third of what aiohttp spends on a request besides the socket
(docs/performance.md), and our answers need none of it: the body is bytes already and the
headers are known. So a plain request (GET over HTTP/1.1, keep-alive) gets its head from one
format string, written with the body in one write. Every other request (HEAD, HTTP/1.0, a
connection to close), and an answer given cookies, compression or chunking, goes through
aiohttp's own ``prepare``, with the same headers.

An answer with response signals to run (``on_response_prepare``; aiohttp-cors uses one) goes
aiohttp's way too: a signal may read, set or replace any header, Content-Type to Server
included, or call ``force_close()``, and aiohttp's way is the one place that gets all of that
right. So does every answer with the shortcuts off (plain.py): aiohttp's way reads no private
name of aiohttp. The plain way refuses what aiohttp's serialiser refuses in a header.
tests/service/test_answers.py compares the two header by header.

The plain way sets the private attributes that ``StreamResponse`` sets itself, and reads the
request's ``_payload_writer`` and ``_match_info``; tests/service/test_aiohttp_private_names.py
fails if a new aiohttp changes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_request import BaseRequest

JSON = "application/json"
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus
}


# What aiohttp's serialiser refuses in a header's name or value (a tab is allowed): a line
# break would let a value forge headers or a whole response, and the other controls have no
# place in a head either.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_lines(headers: Mapping[str, str]) -> str:
    """``Name: value`` lines; raises ValueError where aiohttp's serialiser does."""
    lines = []
    for name, value in headers.items():
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            raise ValueError(f"a control character in response header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def _signalled(request: BaseRequest) -> bool:
    """Whether an ``on_response_prepare`` signal is to run for ``request``'s answer."""
    match_info = getattr(request, "_match_info", None)  # a BaseRequest has none
    if match_info is None:
        return False
    # A loop: any() over a generator costs this hot path twice as much.
    for app in match_info.apps:  # noqa: SIM110
        if app.on_response_prepare:
            return True
    return False


class JsonAnswer(web.StreamResponse):
    """A complete JSON answer: ``body``, and ``correlation_id`` in ``X-Request-ID``.

    ``headers`` holds only the extra headers until the answer is prepared: the others are
    known, and cheaper to format than to keep in a multidict.
    """

    # True for every answer when the shortcuts are off (plain.py sets it): aiohttp's way.
    aiohttp_prepares = False
    _rest = b""  # what aiohttp's way sends after the head: the body, unless for a HEAD

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
        if (
            not self.aiohttp_prepares
            and self._payload_writer is None  # not prepared yet
            and not self._eof_sent
            and self._keep_alive is None  # force_close() was not called
            and not (self._cookies or self._compression or self._chunked)  # aiohttp's work
            and request.keep_alive
            and request.method == "GET"
            and request.version == HttpVersion11
            and not _signalled(request)
        ):
            self._keep_alive = True
            self._req = request
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
        # aiohttp's way, through its public API only: it is the whole way with the shortcuts
        # off, and must not depend on the private names above.
        if self.prepared:
            return await super().prepare(request)
        headers = self.headers
        headers["Content-Type"] = JSON
        headers["Content-Length"] = str(len(self._json))
        headers["X-Request-ID"] = self._correlation_id
        if request.method != hdrs.METH_HEAD:
            self._rest = self._json
        return await super().prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        answer = self._answer
        if answer is None:  # aiohttp's way (no body after a HEAD)
            await super().write_eof(self._rest)
            return
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None, "the answer was not prepared"
        await writer.write_eof(answer)
        self._eof_sent = True
        self._req = None
        self._body_length = len(self._json)
        self._payload_writer = None
