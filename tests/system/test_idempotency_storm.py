"""A storm of new Idempotency-Keys asking for 1000 numbers each, beside plain traffic.

The store stays under ``idempotency_max_bytes`` (the storm gets 503s with Retry-After once it is
reached) and no plain request fails, with the ledger on and off. With the ledger off, the plain
requests' p99 stays within twice their p99 without the storm: the storm's CPU and its store
traffic do not reach a plain request. The baseline is measured in the same run, in rounds that
alternate with the storm's, so that whatever else loads the machine weighs on both alike.

With the ledger on, a plain request also waits for the ledger's writer, so three processes
must get a core for it where one did: on 2 busy cores its p99 beside the storm was 20-35 ms
against 3-9 ms without it (2026-12-06; docs/performance.md). That figure is printed, not
asserted: it is the open problem of issue 19, not a property this change keeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Service

CAP = 2_000_000  # bytes: about a hundred answers of 1000 numbers
PLAIN_RATE = 200.0  # plain requests a second, in PLAIN_LOOPS paced loops
PLAIN_LOOPS = 4
STORM_RATE = 50.0  # new keys a second, each asking for 1000 numbers
STORM_LOOPS = 4
ROUND_SECONDS = 3.0
ROUNDS = 3


async def paced(
    rate: float, loops: int, seconds: float, call: Callable[[], Awaitable[None]]
) -> None:
    """``call()`` about ``rate`` times a second for ``seconds``, from ``loops`` loops."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def one(offset: float) -> None:
        interval = loops / rate
        next_at = loop.time() + offset * interval / loops
        while next_at < stop:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await call()
            next_at += interval

    await asyncio.gather(*(one(n) for n in range(loops)))


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.99 * (len(ordered) - 1))]


def storm(url: str, seconds: float) -> dict[int, int]:
    """New keys asking for 1000 numbers each, paced, for ``seconds``; the statuses it got.

    Run in a process of its own, so that reading its large answers never delays the plain
    requests' client.
    """
    statuses: dict[int, int] = {}

    async def run() -> None:
        async with aiohttp.ClientSession(url) as session:

            async def one() -> None:
                headers = {"Idempotency-Key": str(uuid.uuid4())}
                params = {**CANONICAL_QUERY, "count": "1000"}
                async with session.get(
                    "/next-tracking-number", params=params, headers=headers
                ) as response:
                    await response.read()
                    if response.status == 503:
                        assert response.headers["Retry-After"] == "60"
                statuses[response.status] = statuses.get(response.status, 0) + 1

            await paced(STORM_RATE, STORM_LOOPS, seconds, one)

    asyncio.run(run())
    return statuses


async def run_rounds(url: str) -> tuple[list[float], list[float], dict[int, int], list[int]]:
    """Plain latencies without and beside the storm, the storm's statuses, plain failures."""
    calm: list[float] = []
    stormy: list[float] = []
    storm_statuses: dict[int, int] = {}
    plain_failures: list[int] = []
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        await loop.run_in_executor(pool, storm, url, 0.0)  # started, and imported
        async with aiohttp.ClientSession(url) as plain:

            async def plain_request(into: list[float]) -> None:
                began = time.perf_counter()
                async with plain.get("/next-tracking-number", params=CANONICAL_QUERY) as response:
                    await response.read()
                into.append(time.perf_counter() - began)
                if response.status != 200:
                    plain_failures.append(response.status)

            # Warm up: connections open, workers' blocks sized.
            await paced(PLAIN_RATE, PLAIN_LOOPS, 1.0, lambda: plain_request([]))
            for _ in range(ROUNDS):
                await paced(PLAIN_RATE, PLAIN_LOOPS, ROUND_SECONDS, lambda: plain_request(calm))
                storming = loop.run_in_executor(pool, storm, url, ROUND_SECONDS)
                await paced(PLAIN_RATE, PLAIN_LOOPS, ROUND_SECONDS, lambda: plain_request(stormy))
                for status, count in (await storming).items():
                    storm_statuses[status] = storm_statuses.get(status, 0) + count
    return calm, stormy, storm_statuses, plain_failures


def kept_bytes(service: Service) -> int:
    with contextlib.closing(sqlite3.connect(service.state_dir / "tracking.sqlite3")) as db:
        (total,) = db.execute(
            "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(fingerprint)"
            " + length(response)), 0) FROM idempotency"
        ).fetchone()
    return total


@pytest.mark.parametrize("ledger", ["--no-ledger", "--ledger"])
def test_a_storm_of_new_keys_stays_under_the_cap_and_leaves_plain_traffic_alone(
    service: Service, ledger: str
) -> None:
    service.extra = ("--idempotency-max-bytes", str(CAP), ledger)
    service.start()
    calm, stormy, storm_statuses, plain_failures = asyncio.run(run_rounds(service.url))
    assert service.stop() == 0

    assert plain_failures == []
    assert storm_statuses.get(200, 0) > 0
    assert storm_statuses.get(503, 0) > 0  # the cap was reached
    assert set(storm_statuses) <= {200, 503}
    assert 0 < kept_bytes(service) <= CAP
    without, beside = p99(calm), p99(stormy)
    print(  # for the record (pytest -s): the figures behind the one latency check we allow
        f"plain p99 without the storm {without * 1000:.2f} ms, beside it {beside * 1000:.2f} ms"
        f" ({len(calm)} requests each, {ledger}); storm answers {storm_statuses}"
    )
    if ledger == "--no-ledger":
        assert beside <= 2 * without
