"""The access log: one ecs-logging JSON line per request, on stdout.

Application logs go through python-json-logger (process/logs.py); the access log does not,
because it is on the hot path, where a LogRecord and that formatter cost a large share of a
request (docs/performance.md). Here a line is a msgspec encode of Structs whose field names
are the same ECS names, in the order ecs-logging asks (the order of the Structs' fields), into
a buffer that is written out once per turn of the event loop, in whole lines.
"""

from __future__ import annotations

import asyncio
import os
import select
import time

import msgspec

from process.logs import ACCESS_DATASET, ECS_VERSION, SERVICE_NAME, ecs_timestamp

FLUSH_SIZE = 64 * 1024  # bytes that trigger a flush at once
# Writes to a pipe up to PIPE_BUF bytes are atomic: lines of several workers never interleave.
CHUNK = select.PIPE_BUF
_COMMA = ord(",")


class AccessLine(
    msgspec.Struct,
    kw_only=True,
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
    },
):
    """What every access line carries. Keyword-only, so the constants can be defaults between
    the fields that change (the defaults are encoded too)."""

    # ecs-logging: @timestamp, log.level and message first, in this order; then ecs.version.
    timestamp: str
    level: str = "info"
    message: str
    ecs: str = ECS_VERSION
    dataset: str = ACCESS_DATASET
    logger: str = "access"
    service: str = SERVICE_NAME
    pid: int
    request_id: str
    method: str
    path: str
    status: int
    duration_ns: int


class Audit(
    msgspec.Struct,
    frozen=True,
    gc=False,  # only strings: no cycle for the collector to find
    omit_defaults=True,
    rename={
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
    """The audit trail of issued numbers, at the end of their access line: who got which
    numbers. Every request field but the customer's name, which is never logged."""

    number: str  # the first, or only, number
    origin: str
    destination: str
    weight: str
    created_at: str  # the request's, as the client sent it
    customer_id: str
    customer_slug: str
    numbers: list[str] | None = None  # every number of a request with a count


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
        *,
        request_id: str,
        method: str,
        path: str,
        status: int,
        duration_ns: int,
        audit: Audit | None = None,
    ) -> None:
        if not self.enabled:
            return
        line = AccessLine(
            timestamp=self._clock.now(),
            message=f"{method} {path} {status}",
            pid=self._pid,
            request_id=request_id,
            method=method,
            path=path,
            status=status,
            duration_ns=duration_ns,
        )
        buffer, encode_into = self._buffer, self._encoder.encode_into
        encode_into(line, buffer, -1)
        if audit is not None:
            # The audit continues the line's object: it is encoded over the line's closing
            # brace, and its own opening brace becomes a comma. One flat object, as before the
            # audit had a Struct of its own, without copying its fields into the line.
            end = len(buffer) - 1
            encode_into(audit, buffer, end)
            buffer[end] = _COMMA
        buffer.extend(b"\n")
        if len(buffer) >= FLUSH_SIZE:
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
