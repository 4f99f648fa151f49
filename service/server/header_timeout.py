"""Bounds on what one HTTP client can hold: how long a worker waits for a request head.

aiohttp limits the size of a request head (request line and each header 8190 bytes, at most
128 headers) but not the time it may take: a connection that sends nothing, or its head one
byte at a time, is only closed by the keep-alive timer, after ``keepalive_timeout``. That is
how slowloris works: thousands of such connections, each costing a file descriptor, until the
worker cannot accept any more. So a request head must be complete within ``header_timeout``,
counted from the connection's start or from the first byte of a later request on it; else the
connection is closed. See docs/reliability.md.

The check is aiohttp's own idle check (``RequestHandler._process_keepalive``): the connection
is closed only while its handler waits for a request, never while it answers one. It reads
three of RequestHandler's private attributes (``_request_count``, ``_waiter``, ``_loop``);
tests/service/test_aiohttp_private_names.py fails if a new aiohttp changes them.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("service.server.header_timeout")


class HeaderTimeoutRequestHandler(RequestHandler):
    """aiohttp's connection handler, with a deadline for each request head."""

    header_timeout: float  # set by the server that makes the handler, before it connects
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        # aiohttp counts every request head it has parsed, good or malformed.
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm_head_timer()
        elif data and self._head_timer is None:
            self._arm_head_timer()  # the first bytes of a head that is not complete yet

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # Waiting for a request (not answering one), as aiohttp's keep-alive check decides it.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Debug only: a slowloris attack would otherwise flood the log.
            log.debug("request head not received in time; closing the connection")
            self.force_close()
