#!/usr/bin/env python3
"""The keep-alive load that .ci/systemd.sh runs from the host while it restarts and reloads the
service: what a client sees. Standard library only, so the host's python3 runs it.

Each of ``--connections`` clients keeps one HTTP/1.1 connection open and sends one request
after another on it. A request counts as failed when its connection is refused, reset or times
out, or its answer is not a 200 with a number, with one exception, the one HTTP clients make
themselves (RFC 9112, 9.3.1): a request sent on a *reused* keep-alive connection that the
server closed before any byte of an answer came back is sent once more, on a new connection.
That retry is counted, never hidden. Every number is kept, to count duplicates.

Runs until SIGTERM, or for ``--requests`` requests; writes its figures as JSON to ``--out``,
the numbers to ``--numbers`` and, every 0.2 s, the count of answers to ``--progress``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

QUERY = urllib.parse.urlencode(
    {
        "origin_country_id": "MY",
        "destination_country_id": "ID",
        "weight": "1.234",
        "created_at": "2018-11-20T19:29:32+08:00",
        "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
        "customer_name": "RedBox Logistics",
        "customer_slug": "redbox-logistics",
    }
)
REQUEST_TIMEOUT = 30.0


class Closed(Exception):
    """The server closed the connection before any byte of the answer."""


class Figures:
    def __init__(self) -> None:
        self.numbers: list[str] = []
        self.failed: Counter[str] = Counter()
        self.retried = 0
        self.connections = 0
        self.latencies: list[float] = []
        self.longest_wait = 0.0  # the slowest answer, retries included: the pause a client saw

    def report(self) -> dict[str, Any]:
        latencies = sorted(self.latencies) or [0.0]
        return {
            "requests": len(self.latencies) + sum(self.failed.values()),
            "answered": len(self.numbers),
            "failed": sum(self.failed.values()),
            "failures": dict(self.failed),
            "duplicates": len(self.numbers) - len(set(self.numbers)),
            "retried_on_a_reused_connection": self.retried,
            "connections_opened": self.connections,
            "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "latency_max_ms": round(latencies[-1] * 1000, 2),
        }


class Connection:
    def __init__(self, host: str, port: int, figures: Figures) -> None:
        self.host, self.port, self.figures = host, port, figures
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0  # requests answered on this connection
        self.answering = False  # a byte of the current answer has arrived

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.used = 0
        self.figures.connections += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self) -> tuple[int, bytes]:
        """One request and its answer: (status, body). Raises Closed or an OSError."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        self.answering = False
        self.writer.write(
            f"GET /next-tracking-number?{QUERY} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        )
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise Closed
        self.answering = True
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.used += 1
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), body


async def client(connection: Connection, figures: Figures, keep_going: Any) -> None:
    while keep_going():
        began = time.monotonic()
        retried = False
        while True:
            reused = connection.used > 0
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, body = await connection.get()
            except (Closed, ConnectionResetError, BrokenPipeError) as exc:
                answering = connection.answering
                connection.close()
                if reused and not answering and not retried:
                    retried = True
                    figures.retried += 1
                    continue
                figures.failed[type(exc).__name__] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                connection.close()
                figures.failed[type(exc).__name__] += 1
                await asyncio.sleep(0.01)  # a refused connection: do not spin
            else:
                elapsed = time.monotonic() - began
                figures.latencies.append(elapsed)
                figures.longest_wait = max(figures.longest_wait, elapsed)
                if status == 200:
                    figures.numbers.append(json.loads(body)["tracking_number"])
                else:
                    figures.failed[f"HTTP {status}"] += 1
            break


def write_atomically(path: str, text: str) -> None:
    """Written aside and renamed into place: a reader never sees the file empty."""
    aside = Path(path + ".new")
    aside.write_text(text)
    aside.replace(path)


async def run(args: argparse.Namespace) -> Figures:
    figures = Figures()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    def keep_going() -> bool:
        done = len(figures.latencies) + sum(figures.failed.values())
        return not stop.is_set() and not (args.requests and done >= args.requests)

    async def progress() -> None:
        while not stop.is_set():
            if args.progress:
                write_atomically(args.progress, f"{len(figures.numbers)}\n")
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(progress())
    connections = [Connection(args.host, args.port, figures) for _ in range(args.connections)]
    await asyncio.gather(*(client(c, figures, keep_going) for c in connections))
    stop.set()
    await reporter
    for connection in connections:
        connection.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=0, help="stop after this many (0: SIGTERM)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--numbers", help="write every number issued here, one a line")
    parser.add_argument("--progress")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(figures.report()) + "\n")
    if args.numbers:
        Path(args.numbers).write_text("".join(f"{n}\n" for n in figures.numbers))


if __name__ == "__main__":
    main()
