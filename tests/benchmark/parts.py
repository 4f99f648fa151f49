"""What each part of the hot handler costs a worker: ``python -m tests.benchmark.parts``.

``timeit`` loops keep a part's code and data in the caches, which a worker answering requests
does not. This driver feeds the canonical request, from memory, to the real app's real aiohttp
protocol (a real allocator and SQLite file behind it) and times the worker's CPU per request
with one part replaced by a stub returning its usual result. Rounds with and without the stub
alternate in one process, so the machine's noise falls on both alike; it prints the median
difference. No socket, no wrk: what a part costs beyond the ceiling's work, not a throughput.

``python -m tests.benchmark.parts s10`` times, the same way, the request of ``make bench``'s
S10 scenario (one series) against the canonical one: what an S10 number costs a worker
beyond ours (issue 20 asks for the same ratio).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import msgspec
import uvloop
from aiohttp import web
from yarl import URL

from allocator.actor import Allocator
from allocator.server import AllocatorServer
from allocator.store import open_store
from config import settings
from service import numbers, params, views
from service.access_log import AccessLog
from service.app import app_runner, create_app
from service.keys import ACCESS_LOG
from tests.benchmark.bench import PATH, QUERY, S10_PATH

REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
S10_REQUEST = f"GET {S10_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
REQUESTS = int(os.environ.get("PARTS_REQUESTS", "20000"))
ROUNDS = int(os.environ.get("PARTS_ROUNDS", "12"))


class MemoryTransport(asyncio.Transport):
    """Hands each answer to whoever waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: asyncio.Future[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def stubs(access_log: AccessLog) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Each part: (put the stub in, put the real part back)."""
    parsed = URL(PATH).query
    query = params.validate(QUERY, parsed)
    assert isinstance(query, params.TrackingRequest)
    fields, _ = params.split_query(QUERY, parsed)
    fake_msgspec = types.SimpleNamespace(
        convert=lambda values, type: query, ValidationError=msgspec.ValidationError
    )
    real_format, real_serials, real_split, real_validate = (
        numbers.NumberFormatter.format_serial,
        numbers.FF1Permutation.serials,
        params.split_query,
        views.validate,
    )

    def swap(owner: object, name: str, stub: object, real: object) -> tuple[Callable, Callable]:
        return lambda: setattr(owner, name, stub), lambda: setattr(owner, name, real)

    def validated(raw: str, parsed: object) -> params.TrackingRequest:
        return query

    def picked(raw: str, parsed: object) -> tuple[dict[str, str], params.Errors]:
        return dict(fields), {}

    def formatted(self: numbers.NumberFormatter, origin: str, destination: str, n: int) -> str:
        return "MYID000000000000"

    def serials(self: numbers.FF1Permutation, start: int, stop: int) -> list[int]:
        return [0] * (stop - start)

    # The number: the serials (a chunk at a time; the bench's store is new, so FF1), then base
    # 36 and the check character.
    number_stubs = [
        swap(numbers.NumberFormatter, "format_serial", formatted, real_format),
        swap(numbers.FF1Permutation, "serials", serials, real_serials),
    ]

    return {
        "validation (after yarl parsed the query)": swap(
            views, "validate", validated, real_validate
        ),
        "… msgspec's conversion": swap(params, "msgspec", fake_msgspec, msgspec),
        "… picking our fields from the query": swap(params, "split_query", picked, real_split),
        "the number (permutation, base 36, check character)": (
            lambda: [stub() for stub, _ in number_stubs],
            lambda: [real() for _, real in number_stubs],
        ),
        "the access line (encoding and writing it)": swap(access_log, "enabled", False, True),
    }


async def answer_requests(runner: web.AppRunner, count: int, request: bytes = REQUEST) -> None:
    protocol = runner.server()  # type: ignore[misc]
    transport = MemoryTransport()
    protocol.connection_made(transport)
    loop = asyncio.get_running_loop()
    for _ in range(count):
        transport.answer = loop.create_future()
        protocol.data_received(request)
        head = await transport.answer
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    protocol.connection_lost(None)


async def cpu_per_request(runner: web.AppRunner, request: bytes) -> float:
    """The worker's CPU, in µs, for each of REQUESTS requests."""
    started = time.process_time()
    await answer_requests(runner, REQUESTS, request)
    return (time.process_time() - started) / REQUESTS * 1e6


async def time_parts(runner: web.AppRunner, access_log: AccessLog) -> None:
    """Each part's cost: rounds with and without its stub, alternating."""
    for name, (stub, real) in stubs(access_log).items():
        saved = []
        for turn in range(ROUNDS):
            costs = {}
            for stubbed in (False, True) if turn % 2 else (True, False):
                (stub if stubbed else real)()
                costs[stubbed] = await cpu_per_request(runner, REQUEST)
            real()
            saved.append(costs[False] - costs[True])
        print(
            f"{name}: {statistics.median(saved):.1f} µs a request "
            f"(rounds: {' '.join(f'{s:.1f}' for s in saved)})",
            flush=True,
        )


async def time_s10(runner: web.AppRunner) -> None:
    """An S10 request of one series against ours: rounds of each, alternating."""
    ours, s10 = [], []
    for turn in range(ROUNDS):
        for request in (REQUEST, S10_REQUEST) if turn % 2 else (S10_REQUEST, REQUEST):
            cost = await cpu_per_request(runner, request)
            (ours if request is REQUEST else s10).append(cost)
    extra = [s - o for s, o in zip(s10, ours, strict=True)]
    print(
        f"ours {statistics.median(ours):.1f} µs a request, S10 {statistics.median(s10):.1f}: "
        f"S10 costs {statistics.median(extra):.1f} µs more "
        f"(rounds: {' '.join(f'{e:.1f}' for e in extra)})",
        flush=True,
    )


async def main(what: str) -> None:
    with tempfile.TemporaryDirectory(prefix="tn-parts-") as state:
        config = settings.load(["--config", "/dev/null", "--state-dir", state], env={})
        allocator = Allocator(open_store(config.store), 0)
        await allocator.start()
        allocator_server = AllocatorServer(
            allocator, config.allocator_socket, config.idempotency_ttl
        )
        await allocator_server.start()
        app = create_app(config)
        access_log = (Path(state) / "access.log").open("wb")
        app[ACCESS_LOG] = AccessLog(fd=access_log.fileno())  # as in make bench: to a file
        runner = app_runner(app, access_log=None)
        await runner.setup()
        try:
            # Warm up: the first blocks are leased, and the S10 series turns hot.
            await answer_requests(runner, 1000)
            await answer_requests(runner, 1000, S10_REQUEST)
            if what == "s10":
                await time_s10(runner)
            else:
                await time_parts(runner, app[ACCESS_LOG])
        finally:
            await runner.cleanup()
            access_log.close()
            await allocator_server.close()
            await allocator.stop()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else "parts"))
