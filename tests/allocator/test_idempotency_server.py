"""The allocator's side of idempotency: a cap on what the store keeps, leases that never wait
behind idempotency requests, expiry by the store's clock, and the purge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from allocator.actor import Allocator
from allocator.client import AllocatorClient
from allocator.errors import IdempotencyFull, LeaseRefused
from allocator.protocol import MAX_FRAME, MAX_KEY_LENGTH
from allocator.server import (
    MAX_IDEMPOTENCY_INFLIGHT_PER_CONNECTION,
    MAX_INFLIGHT_PER_CONNECTION,
)
from allocator.store import Remembered, idempotency_bytes_on_disk
from allocator.store.sqlite import SQLiteStore
from config.settings import Config
from tests.conftest import Allocators

FINGERPRINT = b"p" * 32
ANSWER = b"x" * 100
PER_KEY = SQLiteStore.idempotency_key_overhead


def on_disk(key: str, answer: bytes) -> int:
    """What one key costs against the cap."""
    return idempotency_bytes_on_disk(1, len(key), len(FINGERPRINT) + len(answer), PER_KEY)


RECORD = on_disk("k-000", ANSWER)
# Room for ten records once a Recall keeps room for the largest Remember (a frame).
CAP = (
    idempotency_bytes_on_disk(1, MAX_KEY_LENGTH, MAX_FRAME - MAX_KEY_LENGTH, PER_KEY) + 10 * RECORD
)


@pytest.fixture
async def client(config: Config) -> AllocatorClient:
    made = AllocatorClient(config.allocator_socket, timeout=3)
    yield made
    await made.close()


async def fill(client: AllocatorClient) -> int:
    """Recall and remember new keys, as a worker does, until the cap refuses one; how many
    were kept."""
    for n in range(1000):
        try:
            assert await client.recall(f"k-{n:03d}", FINGERPRINT) is None
        except IdempotencyFull:
            return n
        await client.remember(f"k-{n:03d}", FINGERPRINT, ANSWER)
    raise AssertionError("the cap never refused a key")


async def test_past_the_cap_new_keys_are_refused_and_kept_ones_still_answer(
    allocators: Allocators, client: AllocatorClient
) -> None:
    allocator = await allocators.start(idempotency_max_bytes=CAP)
    assert await fill(client) == 11  # the last one had room for a frame
    with pytest.raises(IdempotencyFull):
        await client.recall("new", FINGERPRINT)
    assert await client.recall("k-003", FINGERPRINT) == Remembered(FINGERPRINT, ANSWER)
    # A Remember that finds no room (one whose Recall raced others) is refused too.
    with pytest.raises(IdempotencyFull):
        await client.remember("n" * MAX_KEY_LENGTH, FINGERPRINT, b"y" * (MAX_FRAME - 400))
    status = allocators.server(allocator).status()
    assert status.idempotency_bytes == 11 * RECORD <= status.idempotency_max_bytes
    assert status.idempotency_refusals_total == 3
    start, stop = await client.lease(5)  # and leases go on
    assert stop - start == 5


async def test_the_purge_makes_room_again(
    allocators: Allocators, client: AllocatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("allocator.idempotency.PURGE_BATCH", 4)  # 11 keys: three batches
    allocator = await allocators.start(idempotency_max_bytes=CAP, idempotency_ttl=0.2)
    server = allocators.server(allocator)
    assert await fill(client) == 11
    deadline = time.monotonic() + 10
    while await allocator.store.recall("k-010") is not None:  # expired by the store's clock
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await server.idempotency.purge_round()  # one round drops every expired key
    assert await allocator.store.idempotency_bytes() == 0
    assert allocator.stats.idempotency_bytes == 0
    assert await client.recall("new", FINGERPRINT) is None  # room again
    await client.remember("new", FINGERPRINT, ANSWER)


async def test_the_bytes_of_an_answer_that_lost_the_race_are_given_back(
    allocators: Allocators, client: AllocatorClient
) -> None:
    allocator = await allocators.start()
    first = await client.remember("k-000", FINGERPRINT, ANSWER)
    # A racing twin with the same key: the first answer stands, the twin's is not kept.
    assert await client.remember("k-000", FINGERPRINT, b"y" * 100) == first
    assert allocator.stats.idempotency_bytes == RECORD == await allocator.store.idempotency_bytes()


def stick_recalls(allocator: Allocator, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make every recall wait on the store until the returned event is set."""
    release = asyncio.Event()

    async def stuck(key: str, fingerprint: bytes = b"") -> None:
        await release.wait()

    monkeypatch.setattr(allocator.store, "recall", stuck)
    return release


async def test_a_lease_is_granted_while_idempotency_requests_wait_for_the_store(
    allocators: Allocators, client: AllocatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocator = await allocators.start()
    release = stick_recalls(allocator, monkeypatch)
    # More than a connection's in-flight slots, all waiting on the store.
    recalls = [asyncio.create_task(client.recall(f"k-{n:03d}", FINGERPRINT)) for n in range(40)]
    await asyncio.sleep(0)
    try:
        start, stop = await client.lease(10)  # within the client's timeout
    finally:
        release.set()
    assert stop - start == 10
    assert await asyncio.gather(*recalls) == [None] * 40


async def test_a_step_of_the_wall_clock_expires_no_answer(
    allocators: Allocators, client: AllocatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await allocators.start()  # idempotency_ttl: 24 hours
    await client.remember("k", FINGERPRINT, ANSWER)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 2 * 86400)  # an NTP step, two days on
    assert await client.recall("k", FINGERPRINT) == Remembered(FINGERPRINT, ANSWER)


async def test_idempotency_requests_past_a_connections_slots_are_refused_at_once(
    allocators: Allocators, client: AllocatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocator = await allocators.start()
    release = stick_recalls(allocator, monkeypatch)
    # A client that does not keep to the limit our workers keep to.
    monkeypatch.setattr(client, "_idempotency_slots", asyncio.Semaphore(100))
    recalls = [
        asyncio.create_task(client.recall(f"k-{n:03d}", FINGERPRINT))
        for n in range(MAX_IDEMPOTENCY_INFLIGHT_PER_CONNECTION + 4)
    ]
    try:
        refused = await asyncio.gather(*recalls[-4:], return_exceptions=True)
    finally:
        release.set()
    assert all(isinstance(error, LeaseRefused) for error in refused), refused
    assert await asyncio.gather(*recalls[:-4]) == [None] * MAX_IDEMPOTENCY_INFLIGHT_PER_CONNECTION


class StuckAbandons:
    """Every Abandon waits on the store until ``release`` is set; the keys that reached the
    store, and those it has written."""

    def __init__(self, allocator: Allocator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = asyncio.Event()
        self.waiting: list[str] = []
        self.written: list[str] = []

        async def stuck(key: str, response: bytes) -> None:
            self.waiting.append(key)
            await self.release.wait()
            self.written.append(key)

        monkeypatch.setattr(allocator.store, "abandon", stuck)


async def until(condition: Callable[[], bool]) -> None:
    """Polls: what the test waits for is a list the stuck store fills."""
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_lease_is_answered_while_more_abandons_than_slots_wait_for_the_store(
    allocators: Allocators, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocator = await allocators.start()
    abandons = StuckAbandons(allocator, monkeypatch)
    client = AllocatorClient(config.allocator_socket, timeout=30)  # generous: not a speed test
    try:
        await client.connect()
        keys = [f"k-{n:03d}" for n in range(MAX_INFLIGHT_PER_CONNECTION + 4)]
        for key in keys:
            client.abandon(key, ANSWER)
        start, stop = await client.lease(10)  # read and answered behind them, on one connection
        assert stop - start == 10
        assert abandons.written == []  # answered while every Abandon was still held
        abandons.release.set()
        await until(lambda: abandons.written == keys)  # none dropped, in arrival order
    finally:
        abandons.release.set()
        await client.close()


async def test_an_abandon_is_written_after_its_worker_hung_up(
    allocators: Allocators, client: AllocatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocator = await allocators.start()
    server = allocators.server(allocator)
    abandons = StuckAbandons(allocator, monkeypatch)
    try:
        await client.connect()
        client.abandon("k", ANSWER)
        await until(lambda: abandons.waiting == ["k"])
        await client.close()  # a worker that told us and exited, as one does on a reload
        await until(lambda: server.status().connected_workers == 0)
    finally:
        abandons.release.set()
    await until(lambda: abandons.written == ["k"])
