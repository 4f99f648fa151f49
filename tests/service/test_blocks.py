import asyncio
import contextlib
import os
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.errors import AllocatorUnavailable
from config.settings import Config
from service.blocks import MAX_BLOCK, MIN_BLOCK, Issuer
from service.numbers import NumberFormatter
from tests.conftest import Allocators


@pytest.fixture
async def issuer(allocator: Allocator, config: Config) -> AsyncIterator[Issuer]:
    issuer = Issuer(AllocatorClient(config.allocator_socket, timeout=2), timeout=2)
    yield issuer
    await issuer.close()


async def test_the_first_number_waits_for_a_block_then_the_rest_do_not(issuer: Issuer) -> None:
    assert issuer.issue_nowait("MY", "ID") is None  # nothing in hand yet
    first = await issuer.issue("MY", "ID")
    assert len(first.number) == 16
    assert issuer.issue_nowait("MY", "ID") is not None


async def test_the_spare_block_is_fetched_when_half_the_current_one_is_used(
    issuer: Issuer,
) -> None:
    await issuer.issue("MY", "ID")
    size = issuer.buffered + 1
    for _ in range(size // 2):
        assert issuer.issue_nowait("MY", "ID") is not None
    await asyncio.sleep(0.05)  # the background lease lands
    assert issuer._spare is not None
    # The spare arrived before the current block ran out: no request had to wait.
    assert issuer.buffered > size // 2


async def test_block_sizes_follow_the_issue_rate_within_bounds(issuer: Issuer) -> None:
    await issuer.issue("MY", "ID")
    assert issuer.buffered + 1 == MIN_BLOCK  # no rate observed yet
    # Ten thousand numbers as fast as we can: far more than MIN_BLOCK a second.
    for _ in range(10_000):
        if issuer.issue_nowait("MY", "ID") is None:
            await issuer.issue("MY", "ID")
    await asyncio.sleep(0.05)
    assert issuer.buffered > 10 * MIN_BLOCK
    assert issuer.buffered <= 2 * MAX_BLOCK


async def test_numbers_from_successive_blocks_are_all_distinct(issuer: Issuer) -> None:
    numbers = set()
    for _ in range(5_000):
        issued = issuer.issue_nowait("MY", "ID") or await issuer.issue("MY", "ID")
        numbers.add(issued.number)
    assert len(numbers) == 5_000


async def test_each_number_is_its_counters_number_across_chunks_and_blocks(
    issuer: Issuer, allocator: Allocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker computes serials a chunk at a time; each number is still the one the
    formatter gives its counter alone, on whichever route asks for it."""
    # Blocks of 1,000 (a size set by the issue rate could be a multiple of the chunk, and then
    # no chunk would end inside a block: the check below failed on a fast run).
    monkeypatch.setattr(issuer, "min_block", 1000)
    monkeypatch.setattr(issuer, "max_block", 1000)
    await issuer.issue("MY", "ID")
    assert issuer._formatter is not None
    permute = issuer._formatter.permute
    runs: list[int] = []
    serials = permute.serials

    def counted(start: int, stop: int) -> list[int]:
        runs.append(stop - start)
        return serials(start, stop)

    monkeypatch.setattr(permute, "serials", counted)
    routes = [("MY", "ID"), ("US", "GB"), ("SG", "SG")]
    issued = []
    for i in range(10_000):
        origin, destination = routes[i % 3]
        one = issuer.issue_nowait(origin, destination) or await issuer.issue(origin, destination)
        issued.append((origin, destination, one))
    formatter = NumberFormatter(allocator.key, allocator.scheme)
    for origin, destination, one in issued:
        assert one.number == formatter.format(origin, destination, one.counter)
    counters = [one.counter for _, _, one in issued]
    assert len(set(counters)) == len(counters)
    # Chunks ended inside a block, and at the end of one (cut short).
    assert min(runs) < permute.chunk == max(runs)


async def test_serials_are_computed_a_chunk_at_a_time_however_big_the_block(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await issuer.issue("MY", "ID")
    assert issuer._formatter is not None
    permute = issuer._formatter.permute
    runs: list[int] = []
    serials = permute.serials

    def counted(start: int, stop: int) -> list[int]:
        runs.append(stop - start)
        return serials(start, stop)

    monkeypatch.setattr(permute, "serials", counted)
    taken = 0
    for _ in range(20_000):
        if issuer.issue_nowait("MY", "ID") is None:
            await issuer.issue("MY", "ID")
        taken += 1
    assert max(runs) == permute.chunk  # blocks grew far beyond a chunk
    # No serial is computed twice: beyond those taken, only the rest of the last chunk.
    assert sum(runs) < taken + permute.chunk


async def test_without_the_allocator_it_serves_what_it_holds_then_fails_fast(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start()
    issuer = Issuer(AllocatorClient(config.allocator_socket, timeout=1), timeout=1)
    await issuer.issue("MY", "ID")
    for _ in range(MIN_BLOCK // 2):  # past half the block: the spare comes too
        issuer.issue_nowait("MY", "ID")
    await asyncio.sleep(0.05)
    in_hand = issuer.buffered
    assert in_hand > MIN_BLOCK // 2
    await allocators.stop(allocator)

    served = 0
    while issuer.issue_nowait("MY", "ID") is not None:
        served += 1
    assert served == in_hand
    with pytest.raises(AllocatorUnavailable):
        await issuer.issue("MY", "ID")
    assert not issuer.can_issue
    await issuer.close()


async def test_a_batch_lets_other_requests_in_at_every_slice_boundary(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slice_ = 4
    monkeypatch.setattr("service.blocks.BATCH_SLICE", slice_)
    await issuer.issue("MY", "ID")
    count = 13
    assert issuer.buffered >= count  # all in hand: the batch never waits for a block
    taken = 0
    issue_nowait = issuer.issue_nowait

    def counting_issue_nowait(origin: str, destination: str) -> str | None:
        nonlocal taken
        taken += 1
        return issue_nowait(origin, destination)

    monkeypatch.setattr(issuer, "issue_nowait", counting_issue_nowait)
    taken_when_it_ran: list[int] = []

    async def other_requests() -> None:
        while not batch.done():
            taken_when_it_ran.append(taken)
            await asyncio.sleep(0)

    batch = asyncio.create_task(issuer.issue_many("MY", "ID", count))
    other = asyncio.create_task(other_requests())
    numbers = await batch
    await other
    assert len(set(numbers)) == count
    # Other requests ran after every slice, not only the first, and not after it all.
    assert taken_when_it_ran == [4, 8, 12]


# Pinned to the given core, it says it is ready, waits to be woken, and says it woke.
NEIGHBOUR = """
import os, sys
cpu, ready, wake, woke = map(int, sys.argv[1:])
os.sched_setaffinity(0, {cpu})
os.write(ready, b"r")
os.read(wake, 1)
os.write(woke, b"w")
"""


@contextlib.contextmanager
def sharing_a_core_with_a_neighbour() -> Iterator[tuple[int, int]]:
    """This thread and another process pinned to one core: yields the pipe end whose byte wakes
    the neighbour, and the one that becomes readable once it has run."""
    ready_r, ready_w = os.pipe()
    wake_r, wake_w = os.pipe()
    woke_r, woke_w = os.pipe()
    ours = os.sched_getaffinity(0)
    cpu = min(ours)
    theirs = (ready_w, wake_r, woke_w)
    neighbour = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR, str(cpu), *map(str, theirs)], pass_fds=theirs
    )
    for fd in theirs:
        os.close(fd)
    try:
        assert os.read(ready_r, 1) == b"r"  # pinned, and about to wait
        os.sched_setaffinity(0, {cpu})  # this thread only: the allocator's stay where they are
        try:
            yield wake_w, woke_r
        finally:
            os.sched_setaffinity(0, ours)
    finally:
        os.close(wake_w)  # the end of the pipe wakes it too, if the test did not get that far
        assert neighbour.wait(timeout=10) == 0
        os.close(ready_r)
        os.close(woke_r)


async def test_a_batch_lets_a_process_woken_on_its_core_run_between_its_slices(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``os.sched_yield`` the neighbour waits for the scheduler tick, tens or hundreds of
    numbers into the batch."""
    slice_ = 4
    monkeypatch.setattr("service.blocks.BATCH_SLICE", slice_)
    monkeypatch.setattr("service.blocks.YIELD_CPU_EVERY", slice_)  # every slice, for the test
    count = 2000
    await issuer.issue("MY", "ID")
    while issuer.buffered < count:  # all in hand: the batch never waits for a block
        await issuer.issue_many("MY", "ID", 500)
        await asyncio.sleep(0.01)  # the lease the batch started lands

    taken = 0
    taken_when_it_had_run: list[int] = []
    issue_nowait = issuer.issue_nowait

    def counting_issue_nowait(origin: str, destination: str) -> str | None:
        nonlocal taken
        if not taken_when_it_had_run and select.select([woke], [], [], 0)[0]:
            taken_when_it_had_run.append(taken)
        taken += 1
        return issue_nowait(origin, destination)

    monkeypatch.setattr(issuer, "issue_nowait", counting_issue_nowait)
    with sharing_a_core_with_a_neighbour() as (wake, woke):
        os.write(wake, b"w")
        await issuer.issue_many("MY", "ID", count)
    assert taken == count
    # It ran at one of the batch's first slice boundaries (the first, on a quiet machine).
    assert taken_when_it_had_run
    assert taken_when_it_had_run[0] <= 4 * slice_


async def test_a_batch_gives_up_the_cpu_only_every_so_many_numbers(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A yield at every slice let a busy neighbour on the core (another service, a backup) take
    its whole time slice six times in a 100-number batch: 27,000 numbers a second instead of
    the hundreds of thousands the worker can make."""
    yields = 0

    def counted_yield() -> None:
        nonlocal yields
        yields += 1

    monkeypatch.setattr(os, "sched_yield", counted_yield)
    await issuer.issue("MY", "ID")
    await issuer.issue_many("MY", "ID", 100)
    assert yields == 0
    await issuer.issue_many("MY", "ID", 1000)
    assert yields == 1000 // 256
