"""A worker's S10 series (service/s10_blocks.py): blocks only for the hot series, at most
MAX_HOT of them, and exact leases for the others, against a real allocator over its real Unix
socket and SQLite file. The clock is the test's, so that "busy" and "quiet" are not timings."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.errors import SeriesExhausted
from config.settings import Config
from ledger.records import Issued
from service import s10, s10_blocks
from service.s10_blocks import HOT_REQUESTS, HOT_WINDOW, MAX_HOT, S10Issuer
from tests.conftest import Allocators

INDICATORS = ["RA", "RB", "EA", "EB", "CA", "CB", "LA", "LB", "VA", "VB", "UA", "UB"]
COUNTRIES = ["GB", "FR", "DE", "NL", "IT", "ES", "PT", "BE", "AT", "CH", "SE", "NO", "DK"]
COUNTRIES += ["FI", "IE", "PL", "CZ", "HU", "GR", "RO", "BG", "HR", "SI", "SK", "LU"]
SERIES = list(itertools.product(INDICATORS, COUNTRIES))  # 300 series


class Clock:
    """The issuer's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """One worker's S10Issuer on its own allocator client, and the numbers it issued."""

    def __init__(self, config: Config) -> None:
        self.clock = Clock()
        self.client = AllocatorClient(config.allocator_socket, timeout=5)
        self.issuer = S10Issuer(self.client, config, clock=self.clock)
        self.issued: dict[tuple[str, str], list[Issued]] = {}

    async def issue(self, indicator: str, country: str, count: int = 1) -> list[Issued]:
        """As the handler does: one number from a hot series' block in hand if it can."""
        issuer = self.issuer
        one = issuer.issue_nowait(indicator, country) if count == 1 else None
        issued = [one] if one is not None else await issuer.issue_many(indicator, country, count)
        assert len(issued) == count
        self.issued.setdefault((indicator, country), []).extend(issued)
        return issued


@pytest.fixture
async def worker(config: Config) -> AsyncIterator[Worker]:
    made = Worker(config)
    yield made
    await made.issuer.close()
    await made.client.close()


def assert_unique_numbers_of_their_series(allocator: Allocator, worker: Worker) -> None:
    """Every number once, a valid S10 number of its series, from its counter in the series'
    order, below the series' durable mark."""
    numbers = [i.number for issued in worker.issued.values() for i in issued]
    assert len(set(numbers)) == len(numbers)
    for (indicator, country), issued in worker.issued.items():
        name = f"s10:{indicator}:{country}"
        made = allocator.series_made[name]
        permute = s10.SeriesPermutation(allocator.key, indicator, country, made.order, made.size)
        reserved = allocator.series[name].reserved
        for counter, number in issued:
            serial = int(number[2:10])
            assert (number[:2], number[11:]) == (indicator, country), number
            assert number[10] == s10.check_digit(number[2:10]), number
            assert permute.invert(serial) == counter < reserved


async def test_hundreds_of_series_round_robin_hold_at_most_max_hot_blocks(
    allocator: Allocator, worker: Worker
) -> None:
    # All busy (every request within one window): the first MAX_HOT to turn hot hold blocks,
    # the others stay cold, leased exactly.
    for _, (indicator, country) in itertools.product(range(HOT_REQUESTS + 2), SERIES):
        await worker.issue(indicator, country)
        assert worker.issuer.held <= MAX_HOT
    assert worker.issuer.held == MAX_HOT
    # Then all of them quiet (one request of a series every 3 s): the hot ones lose their
    # blocks, the least recently used first, one at each request.
    for indicator, country in SERIES:
        worker.clock.now += 3 * HOT_WINDOW / len(SERIES)
        await worker.issue(indicator, country, count=3)
        assert worker.issuer.held <= MAX_HOT
    assert worker.issuer.held == 0
    assert_unique_numbers_of_their_series(allocator, worker)


async def test_a_series_turning_busy_gets_blocks_and_loses_them_when_idle(
    allocator: Allocator, worker: Worker
) -> None:
    series = allocator.series
    for _ in range(HOT_REQUESTS - 1):
        await worker.issue("RR", "GB")
    assert worker.issuer.held == 0
    # A cold series takes what it asks for, no more: the allocator leased it just that.
    assert series["s10:RR:GB"].next == HOT_REQUESTS - 1

    await worker.issue("RR", "GB")  # the HOT_REQUESTS-th within the window
    assert worker.issuer.held == 1
    leases = allocator.stats.leases_total
    for _ in range(5):
        await worker.issue("RR", "GB")
    assert allocator.stats.leases_total == leases  # from the block in hand
    held_until = series["s10:RR:GB"].next
    assert held_until > HOT_REQUESTS + 5  # a block leased ahead

    # Idle for two windows: the next request of any other series takes its blocks away.
    worker.clock.now += 2 * HOT_WINDOW
    await worker.issue("EE", "FR")
    assert worker.issuer.held == 0
    # The block's unused values are a gap: what the series issues next comes after them.
    (after,) = await worker.issue("RR", "GB")
    assert after.counter == held_until
    assert_unique_numbers_of_their_series(allocator, worker)


async def test_a_hot_series_served_from_its_block_in_hand_stays_hot(
    allocator: Allocator, worker: Worker
) -> None:
    for _ in range(HOT_REQUESTS):
        await worker.issue("RR", "GB")
    assert worker.issuer.held == 1
    for _ in range(3):
        # A window later, another series' request looks through the hot set: RR had as many
        # requests in the last window, all served without a lease, and is not quiet.
        worker.clock.now += HOT_WINDOW
        await worker.issue("EE", "FR")
        assert worker.issuer.held == 1
        leases = allocator.stats.leases_total
        for _ in range(HOT_REQUESTS):
            await worker.issue("RR", "GB")
    assert allocator.stats.leases_total == leases  # the last window's, from the block in hand
    assert_unique_numbers_of_their_series(allocator, worker)


async def test_a_busy_series_keeps_its_blocks_and_a_quiet_one_makes_room(
    allocator: Allocator, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s10_blocks, "MAX_HOT", 2)
    for _ in range(HOT_REQUESTS):
        for indicator in ("RR", "EE", "CC"):
            await worker.issue(indicator, "GB")
    assert worker.issuer.held == 2  # RR and EE, still busy: CC stays cold

    # Two windows later CC is busy again, RR and EE quiet: they make room, one a request.
    worker.clock.now += 2 * HOT_WINDOW
    for _ in range(HOT_REQUESTS):
        await worker.issue("CC", "GB")
    assert worker.issuer.held == 1
    leases = allocator.stats.leases_total
    await worker.issue("CC", "GB")
    assert allocator.stats.leases_total == leases  # CC's, from its block
    assert_unique_numbers_of_their_series(allocator, worker)


async def test_a_cold_request_of_many_leases_until_it_has_them_all(
    allocators: Allocators, worker: Worker
) -> None:
    # Reservations of 3: a lease of 5 is granted 3, then 2 of the next reservation.
    allocator = await allocators.start(reserve_step=3)
    issued = await worker.issue("RR", "GB", count=5)
    assert [counter for counter, _ in issued] == [0, 1, 2, 3, 4]
    assert allocator.stats.leases_total == 2
    assert allocator.series["s10:RR:GB"].next == 5
    assert worker.issuer.held == 0
    assert_unique_numbers_of_their_series(allocator, worker)


async def test_a_small_series_used_up_through_cold_requests_issues_each_number_once(
    allocators: Allocators, worker: Worker
) -> None:
    allocator = await allocators.start(series_size=30)
    # Concurrent cold requests (never HOT_REQUESTS in a window), two numbers each.
    for _ in range(3):
        worker.clock.now += HOT_WINDOW
        await asyncio.gather(*(worker.issue("RR", "GB", count=2) for _ in range(5)))
    assert worker.issuer.held == 0
    serials = sorted(int(i.number[2:10]) for i in worker.issued["RR", "GB"])
    # A series of 30 permutes its 30 serials among themselves: each of them once.
    assert serials == list(range(30))
    with pytest.raises(SeriesExhausted) as refused:
        await worker.issuer.issue_many("RR", "GB", 1)
    assert refused.value.series == "s10:RR:GB"
    assert_unique_numbers_of_their_series(allocator, worker)
