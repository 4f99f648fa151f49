import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest
from stdnum.iso7064 import mod_37_36

from tests.conftest import NUMBER_PATTERN
from tests.system.conftest import Service, check_unsurprising, load

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


def test_a_removed_allocator_socket_is_bound_again_and_new_workers_reach_it(
    service: Service, short_tmp: Path
) -> None:
    service.start()
    allocators = service.child_pids("allocator")
    # What a second allocator's failed start used to do; an operator's rm or a cleaner of the
    # runtime directory does the same. The workers' connections live on: a reload's new
    # workers must connect anew.
    os.unlink(short_tmp / "run" / "allocator.sock")
    assert service.process is not None
    service.process.send_signal(signal.SIGHUP)
    service.wait_for_message("reload done", 1)

    async def until_every_request_is_served() -> list[str]:
        numbers: list[str] = []
        async with asyncio.timeout(30):
            while True:
                outcome = await load(service.url, 100, concurrency=8, fresh_connections=True)
                check_unsurprising(outcome)
                numbers += outcome.numbers
                if outcome.unavailable == 0:
                    return numbers

    numbers = asyncio.run(until_every_request_is_served())
    assert len(set(numbers)) == len(numbers)
    assert service.child_pids("allocator") == allocators  # healed in place, not restarted
    healed = service.wait_for_message(
        "the allocator socket was removed or replaced; binding it again", 1
    )
    assert healed["log.level"] == "error"
    # And the socket is there for the next start to find: it refuses to start a second one.
    twin = Service(short_tmp)
    try:
        with pytest.raises(RuntimeError, match="another allocator"):
            twin.start(timeout=10)
    finally:
        twin.kill()
    assert service.stop() == 0
