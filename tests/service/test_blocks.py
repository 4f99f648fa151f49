import asyncio
from collections.abc import AsyncIterator

import pytest

from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.errors import AllocatorUnavailable
from config.settings import Config
from service.blocks import MAX_BLOCK, MIN_BLOCK, Issuer
from tests.conftest import Allocators


@pytest.fixture
async def issuer(allocator: Allocator, config: Config) -> AsyncIterator[Issuer]:
    issuer = Issuer(AllocatorClient(config.allocator_socket, timeout=2), timeout=2)
    yield issuer
    await issuer.close()


async def test_the_first_number_waits_for_a_block_then_the_rest_do_not(issuer: Issuer) -> None:
    assert issuer.issue_nowait("MY", "ID") is None  # nothing in hand yet
    first = await issuer.issue("MY", "ID")
    assert len(first) == 16
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
        number = issuer.issue_nowait("MY", "ID") or await issuer.issue("MY", "ID")
        numbers.add(number)
    assert len(numbers) == 5_000


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


async def test_a_batch_lets_other_requests_in_between_its_slices(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.blocks.BATCH_SLICE", 4)
    await issuer.issue("MY", "ID")
    count = 12
    assert issuer.buffered >= count  # all in hand: the batch never waits for a block
    seen_unfinished: list[bool] = []

    async def another_request() -> None:
        seen_unfinished.append(not batch.done())

    batch = asyncio.create_task(issuer.issue_many("MY", "ID", count))
    other = asyncio.create_task(another_request())
    numbers = await batch
    await other
    assert len(set(numbers)) == count
    # The other request ran while the batch was still going: after a slice, not after it all.
    assert seen_unfinished == [True]
