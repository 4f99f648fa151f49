import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest
from stdnum.iso7064 import mod_37_36

from tests.conftest import NUMBER_PATTERN
from tests.system.conftest import Service, load

VALID = re.compile(NUMBER_PATTERN)


def assert_valid(numbers: list[str]) -> None:
    for number in numbers:
        assert VALID.match(number), number
        assert len(number) == 16
        assert number.startswith("MYID")
        assert mod_37_36.is_valid(number), number


def test_numbers_stay_unique_under_load_and_across_a_restart(service: Service) -> None:
    service.start()
    first = asyncio.run(load(service.url, total=20_000, concurrency=64))
    assert first.other == []
    assert (first.unavailable, first.resets) == (0, 0)
    assert len(first.numbers) == 20_000
    assert len(set(first.numbers)) == 20_000
    assert_valid(first.numbers)

    began = time.monotonic()
    assert service.stop(timeout=5) == 0
    assert time.monotonic() - began < 5

    service.start()
    second = asyncio.run(load(service.url, total=5_000, concurrency=64))
    assert len(second.numbers) == 5_000
    assert len(set(second.numbers)) == 5_000
    assert_valid(second.numbers)
    assert set(first.numbers).isdisjoint(second.numbers)
    assert service.stop() == 0


def test_a_sigkilled_allocator_is_restarted_and_never_reissues_a_number(
    service: Service,
) -> None:
    service.start()

    async def run() -> tuple[list[str], int, int, list[tuple[int, str]]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(load(service.url, total=10**9, concurrency=32, stop=stop))
        await asyncio.sleep(1.0)
        (allocator_pid,) = service.child_pids("allocator")
        os.kill(allocator_pid, signal.SIGKILL)
        # Traffic flows on while the supervisor brings the allocator back.
        deadline = time.monotonic() + 20
        # Polling: the restart shows only in the log file.
        while len(service.child_pids("allocator")) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        stop.set()
        outcome = await traffic
        return outcome.numbers, outcome.unavailable, outcome.resets, outcome.other

    numbers, unavailable, resets, other = asyncio.run(run())
    assert len(service.child_pids("allocator")) == 2, service.log()
    assert other == []  # every non-200 is a JSON 503 with Retry-After
    assert resets == 0  # only the allocator died; workers kept their connections
    assert len(numbers) > 1000
    assert len(set(numbers)) == len(numbers)
    assert_valid(numbers)

    # And after the restart, numbers keep coming, still unique.
    more = asyncio.run(load(service.url, total=2_000))
    assert len(more.numbers) == 2_000
    assert set(more.numbers).isdisjoint(numbers)
    print(f"\nnumbers={len(numbers)} unavailable={unavailable} resets={resets}")
    assert service.stop() == 0


def test_the_service_refuses_to_start_twice_on_one_state_directory(
    service: Service, short_tmp: Path
) -> None:
    service.start()
    twin = Service(short_tmp)
    try:
        with pytest.raises(RuntimeError, match="another allocator"):
            twin.start(timeout=10)
    finally:
        twin.kill()
    assert service.stop() == 0
