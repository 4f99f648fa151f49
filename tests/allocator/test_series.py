"""Named counters: each S10 series leases from a counter of its own, with the same invariant as
the default counter (every value granted lies below the series' durable mark; never twice)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3

import pytest

from allocator.client import AllocatorClient
from allocator.errors import SeriesExhausted
from allocator.protocol import Granted, Lease, Refused
from allocator.store import open_store
from allocator.store.sqlite import SQLiteStore
from config.settings import Config
from tests.conftest import Allocators

RR_GB = "s10:RR:GB"


def series_mark(config: Config, name: str) -> int:
    """A series' mark as stored on disk, read through a connection of our own."""
    store = open_store(config.store)
    assert isinstance(store, SQLiteStore)
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return db.execute("SELECT reserved FROM series WHERE name = ?", (name,)).fetchone()[0]


async def test_concurrent_series_leases_are_disjoint_and_within_the_series_mark(
    allocators: Allocators, config: Config
) -> None:
    await allocators.start(reserve_step=500)
    clients = [AllocatorClient(config.allocator_socket, timeout=5) for _ in range(4)]
    grants: dict[str, list[tuple[int, int]]] = {RR_GB: [], "s10:EE:FR": []}

    async def lease_many(client: AllocatorClient) -> None:
        for count, name in itertools.product((1, 7, 300, 3), grants):
            grant = await client.lease_series(name, "permuted", count)
            assert 0 < grant.stop - grant.start <= count
            assert grant.stop <= series_mark(config, name)  # granted only once durable
            assert (grant.order, grant.size) == ("permuted", 10**8)
            grants[name].append((grant.start, grant.stop))

    try:
        await asyncio.gather(*(lease_many(c) for c in clients))
        # The default counter is a counter of its own: it starts at 0 still.
        assert (await clients[0].lease(5))[0] == 0
    finally:
        for client in clients:
            await client.close()
    for blocks in grants.values():
        blocks.sort()
        assert len(blocks) == 16
        assert all(a_stop <= b_start for (_, a_stop), (b_start, _) in itertools.pairwise(blocks))


async def test_after_a_crash_a_series_starts_at_its_durable_mark(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start(reserve_step=1000, serve=False)
    await allocator.lease_series(RR_GB, "permuted", 10)
    reserved = allocator.series[RR_GB].reserved
    await allocator.store.close()  # a crash: no final checkpoint

    restarted = await allocators.start(serve=False)
    assert restarted.series[RR_GB].next == reserved == series_mark(config, RR_GB) == 1000
    start, _, _ = await restarted.lease_series(RR_GB, "permuted", 5)
    assert start == 1000


async def test_a_clean_stop_gives_back_each_series_unused_reservation(
    allocators: Allocators, config: Config
) -> None:
    allocator = await allocators.start(reserve_step=1000, serve=False)
    await allocator.lease_series(RR_GB, "permuted", 10)
    await allocators.stop(allocator)
    assert series_mark(config, RR_GB) == 10


async def test_a_series_keeps_the_order_it_was_made_with(allocators: Allocators) -> None:
    allocator = await allocators.start(serve=False)
    assert (await allocator.lease_series(RR_GB, "sequential", 1))[2].order == "sequential"
    # A later setting (another host's, or a changed s10_order) does not change it.
    assert (await allocator.lease_series(RR_GB, "permuted", 1))[2].order == "sequential"
    assert (await allocator.lease_series("s10:EE:FR", "permuted", 1))[2].order == "permuted"


async def test_a_used_up_series_is_refused_by_name_and_grants_nothing_else(
    allocators: Allocators, config: Config
) -> None:
    await allocators.start(reserve_step=7, series_size=100)
    clients = [AllocatorClient(config.allocator_socket, timeout=5) for _ in range(4)]
    values: list[int] = []

    async def lease_until_exhausted(client: AllocatorClient) -> None:
        while True:
            try:
                grant = await client.lease_series(RR_GB, "sequential", 3)
            except SeriesExhausted:
                return
            assert grant.size == 100
            values.extend(range(grant.start, grant.stop))

    try:
        await asyncio.gather(*(lease_until_exhausted(c) for c in clients))
        assert sorted(values) == list(range(100))  # every value once, none past the size
        with pytest.raises(SeriesExhausted, match=f"series {RR_GB} exhausted") as refused:
            await clients[0].lease_series(RR_GB, "sequential", 1)
        assert refused.value.series == RR_GB
        # Other counters go on.
        assert (await clients[0].lease_series("s10:EE:FR", "sequential", 1)).start == 0
        assert await clients[0].lease(1) == (0, 1)
        status = (await clients[0].status()).allocator
    finally:
        for client in clients:
            await client.close()
    (rr_gb,) = [series for series in status.series if series.name == RR_GB]
    assert (rr_gb.next, rr_gb.numbers_left, rr_gb.used_ratio, rr_gb.exhausted) == (100, 0, 1, True)


async def test_an_exhausted_series_stays_so_after_a_restart(allocators: Allocators) -> None:
    allocator = await allocators.start(serve=False, series_size=10)
    assert (await allocator.lease_series(RR_GB, "permuted", 10))[:2] == (0, 10)
    await allocators.stop(allocator)

    restarted = await allocators.start(serve=False, series_size=1000)
    with pytest.raises(SeriesExhausted):
        await restarted.lease_series(RR_GB, "permuted", 1)


async def test_the_status_shows_each_series_use_and_forecast(
    allocators: Allocators, config: Config
) -> None:
    await allocators.start(reserve_step=100, series_size=1000)
    client = AllocatorClient(config.allocator_socket, timeout=5)
    leased = 0
    try:
        for _ in range(5):
            grant = await client.lease_series(RR_GB, "permuted", 40)
            leased += grant.stop - grant.start
        status = (await client.status()).allocator
    finally:
        await client.close()
    (rr_gb,) = status.series
    assert (rr_gb.name, rr_gb.order, rr_gb.size, rr_gb.next) == (RR_GB, "permuted", 1000, leased)
    assert rr_gb.numbers_left == 1000 - leased
    assert rr_gb.used_ratio == pytest.approx(leased / 1000)
    assert rr_gb.reservations_total == rr_gb.reserved // 100
    assert rr_gb.lease_rate_per_second > 0
    assert rr_gb.seconds_to_exhaustion == pytest.approx(
        (1000 - leased) / rr_gb.lease_rate_per_second
    )


def test_a_lease_names_its_series_on_the_wire() -> None:
    from allocator import protocol

    lease = Lease(id=1, count=5, series=RR_GB, order="sequential")
    assert protocol.decode_request(protocol.encode(lease)[4:]) == lease
    # An older worker's lease names none: the default counter.
    assert protocol.decode_request(protocol.encode(Lease(id=1, count=5))[4:]).series == ""
    for bad in ("RR:GB", "s10:rr:GB", "s10:RR:GBR", "s10:R1:GB"):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_request(protocol.encode(Lease(id=1, count=5, series=bad))[4:])
    granted = Granted(id=1, start=0, stop=5, order="permuted", size=10**8)
    assert protocol.decode_response(protocol.encode(granted)[4:]) == granted
    refused = Refused(id=1, reason="series s10:RR:GB exhausted", exhausted=True)
    assert protocol.decode_response(protocol.encode(refused)[4:]) == refused
