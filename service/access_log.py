"""The access log: one ecs-logging JSON line per request, on stdout.

Application logs go through python-json-logger (config/logs.py); the access log does not,
because it is on the hot path: a LogRecord and python-json-logger's formatter cost about 20 to
35 µs a line on our machines, a large share of a request. Here a line is one msgspec
encode of a Struct whose field names are the same ECS names, in the order ecs-logging asks
(the order of the Struct's fields), into a buffer that is written out once per turn of the
event loop, in whole lines. See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import os
import select
import time

import msgspec

from config.logs import ACCESS_DATASET, ECS_VERSION, SERVICE_NAME, ecs_timestamp

FLUSH_SIZE = 64 * 1024  # bytes that trigger a flush at once
# Writes to a pipe up to PIPE_BUF bytes are atomic: lines of several workers never interleave.
CHUNK = select.PIPE_BUF


class AccessLine(
    msgspec.Struct,
    omit_defaults=True,
    rename={
        "timestamp": "@timestamp",
        "level": "log.level",
        "ecs": "ecs.version",
        "dataset": "event.dataset",
        "logger": "log.logger",
        "service": "service.name",
        "pid": "process.pid",
        "request_id": "http.request.id",
        "method": "http.request.method",
        "path": "url.path",
        "status": "http.response.status_code",
        "duration_ns": "event.duration",
        # ECS has no fields for these: ours, under tracking.* (docs/operations.md).
        "number": "tracking.number",
        "origin": "tracking.origin",
        "destination": "tracking.destination",
        "weight": "tracking.weight_kg",
        "created_at": "tracking.created_at",
        "customer_id": "tracking.customer.id",
        "customer_slug": "tracking.customer.slug",
        "numbers": "tracking.numbers",
    },
):
    # ecs-logging: @timestamp, log.level and message first, in this order; then ecs.version.
    timestamp: str
    level: str
    message: str
    ecs: str
    dataset: str
    logger: str
    service: str
    pid: int
    request_id: str
    method: str
    path: str
    status: int
    duration_ns: int
    # Only on lines of requests that issued a number: the audit trail, every request field but
    # the customer's name, which is never logged.
    number: str | None = None
    origin: str | None = None
    destination: str | None = None
    weight: str | None = None
    created_at: str | None = None  # the request's, as the client sent it
    customer_id: str | None = None
    customer_slug: str | None = None
    # Every number of a request with a count (``number`` is the first).
    numbers: list[str] | None = None


class _Clock:
    """ECS timestamps (UTC, milliseconds). Many requests share a millisecond, and all of them
    share the formatted string: one format per millisecond, not one per request."""

    def __init__(self) -> None:
        self._millisecond = -1
        self._text = ""

    def now(self) -> str:
        millisecond = int(time.time() * 1000)
        if millisecond != self._millisecond:
            self._millisecond = millisecond
            self._text = ecs_timestamp(millisecond)
        return self._text


class AccessLog:
    """Buffers access lines and writes them to a file descriptor in whole lines."""

    def __init__(self, enabled: bool = True, fd: int = 1) -> None:
        self.enabled = enabled
        self._fd = fd
        self._pid = os.getpid()
        self._clock = _Clock()
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()
        self._flush_handle: asyncio.Handle | None = None

    def write(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        duration_ns: int,
        number: str | None = None,
        origin: str | None = None,
        destination: str | None = None,
        weight: str | None = None,
        created_at: str | None = None,
        customer_id: str | None = None,
        customer_slug: str | None = None,
        numbers: list[str] | None = None,
    ) -> None:
        if not self.enabled:
            return
        line = AccessLine(
            self._clock.now(),
            "info",
            f"{method} {path} {status}",
            ECS_VERSION,
            ACCESS_DATASET,
            "access",
            SERVICE_NAME,
            self._pid,
            request_id,
            method,
            path,
            status,
            duration_ns,
            number,
            origin,
            destination,
            weight,
            created_at,
            customer_id,
            customer_slug,
            numbers,
        )
        self._encoder.encode_into(line, self._buffer, -1)
        self._buffer.extend(b"\n")
        if len(self._buffer) >= FLUSH_SIZE:
            self.flush()
        elif self._flush_handle is None:
            # At the end of this turn of the loop: the lines of every request answered in it
            # go out in one write, microseconds after their answers. A worker killed in
            # between loses only those (the audit trail of docs/reliability.md).
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write out every buffered line, in chunks that end at line ends."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        data, self._buffer = self._buffer, bytearray()
        view = memoryview(data)
        start = 0
        while start < len(data):
            end = len(data)
            if end - start > CHUNK:
                cut = data.rfind(b"\n", start, start + CHUNK)
                end = cut + 1 if cut >= start else end  # a longer line goes out whole
            start += os.write(self._fd, view[start:end])
