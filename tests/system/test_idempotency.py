"""Idempotent retries on the real run.py: the first answer survives killed processes."""

import asyncio
import json
import os
import signal
import time

import aiohttp

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Service


async def until_answered(url: str, key: str, deadline: float = 20.0) -> tuple[dict, dict]:
    """The first non-503 answer to an idempotent request (503s while a process restarts)."""
    give_up = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(
                url + "/next-tracking-number",
                params=CANONICAL_QUERY,
                headers={"Idempotency-Key": key},
            ) as response:
                if response.status != 503 or time.monotonic() > give_up:
                    assert response.status == 200, await response.text()
                    return json.loads(await response.read()), dict(response.headers)
            await asyncio.sleep(0.1)


def wait_for_restart(service: Service, child: str, pids_before: int) -> None:
    deadline = time.monotonic() + 20
    while len(service.child_pids(child)) <= pids_before:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)


def test_an_idempotent_retry_after_a_sigkilled_allocator_gets_the_first_answer(
    service: Service,
) -> None:
    service.start()
    first, headers = asyncio.run(until_answered(service.url, "order-1"))
    assert "Idempotent-Replayed" not in headers

    (allocator,) = service.child_pids("allocator")
    os.kill(allocator, signal.SIGKILL)
    wait_for_restart(service, "allocator", 1)
    again, headers = asyncio.run(until_answered(service.url, "order-1"))
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"

    # A killed worker (every worker, one after the other) changes nothing either.
    for name in ("worker-1", "worker-2"):
        os.kill(service.child_pids(name)[-1], signal.SIGKILL)
        wait_for_restart(service, name, 1)
    again, _ = asyncio.run(until_answered(service.url, "order-1"))
    assert again == first
    assert service.stop() == 0

    service.start()  # and a clean restart of the whole service
    again, _ = asyncio.run(until_answered(service.url, "order-1"))
    assert again == first
    assert service.stop() == 0
