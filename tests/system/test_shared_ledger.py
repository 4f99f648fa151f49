"""The shared ledger: two hosts on one PostgreSQL store, each record in PostgreSQL exactly once.

Two real ``run.py`` with the ledger on share a PostgreSQL store (as in test_two_hosts.py). Each
commits its records to its own ledger file before answering, and its writer forwards them to
PostgreSQL. PostgreSQL is stopped for several seconds under load: the hosts go on issuing from
their blocks, the records wait in their files, and once PostgreSQL is back every number a
client received is in PostgreSQL once, with the client's fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Outcome, PostgresServer, Service
from tests.system.test_two_hosts import (
    RECOVERY_TIMEOUT,
    SharedStore,
    Traffic,
    check_clean,
    check_no_duplicates,
    report,
    two_hosts,
)

TOKEN = "shared-ledger-test-token"
# How long PostgreSQL stays down, at least: the age of the oldest record waiting on each host.
OUTAGE_SECONDS = 5.0


async def ledger_status(host: Service) -> dict[str, Any]:
    """The writer's figures in the host's /allocator/status."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{host.url}/allocator/status", headers=headers) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["ledger"]["writer_up"], body["ledger"]
    return body["ledger"]["stats"]


async def until_spooled(hosts: tuple[Service, Service], seconds: float) -> None:
    """Return once each host's oldest record waiting for PostgreSQL is ``seconds`` old."""
    async with asyncio.timeout(RECOVERY_TIMEOUT):
        for host in hosts:
            # Polling: the spool shows only in the status.
            while (await ledger_status(host))["spool_oldest_seconds"] < seconds:  # noqa: ASYNC110
                await asyncio.sleep(0.1)


async def until_forwarded(hosts: tuple[Service, Service]) -> list[dict[str, Any]]:
    """Each host's figures once its spool is empty and forwarding has no error."""
    async with asyncio.timeout(RECOVERY_TIMEOUT):
        for host in hosts:
            while True:
                stats = await ledger_status(host)
                if stats["spool_records"] == 0 and stats["spool_error"] is None:
                    break
                await asyncio.sleep(0.1)
    return [await ledger_status(host) for host in hosts]


async def until_more(outcomes: tuple[Outcome, ...], more: int) -> None:
    targets = [len(o.numbers) + more for o in outcomes]
    async with asyncio.timeout(RECOVERY_TIMEOUT):
        while any(len(o.numbers) < t for o, t in zip(outcomes, targets, strict=True)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def shared_records(url: str) -> list[asyncpg.Record]:
    db = await asyncpg.connect(url, timeout=10)
    try:
        return await db.fetch(
            "SELECT n.key_digest, n.counter, n.number, i.spool_id, i.origin, i.destination,"
            " i.weight, i.created_at, i.customer_id, i.customer_name, i.customer_slug"
            " FROM ledger_number n JOIN ledger_issue i ON i.id = n.issue_id"
        )
    finally:
        await db.close()


def spool_id(host: Service) -> uuid.UUID:
    with contextlib.closing(sqlite3.connect(host.state_dir / "ledger.sqlite3")) as db:
        return uuid.UUID(db.execute("SELECT spool_id FROM ledger_spool").fetchone()[0])


async def look_up(host: Service, number: str) -> tuple[int, dict[str, Any]]:
    """The status and body of an operator's lookup of ``number`` on ``host``."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{host.url}/tracking-numbers/{number}", headers=headers) as response,
    ):
        return response.status, await response.json()


@pytest.fixture
def server() -> PostgresServer:
    return PostgresServer.from_environment(restartable=True)


@pytest.fixture
def shared(server: PostgresServer) -> Iterator[SharedStore]:
    name = asyncio.run(server.create_database())
    yield SharedStore(server.database_url(name))
    asyncio.run(server.drop_database(name))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_with_postgresql_stopped_under_load_every_number_received_reaches_it_exactly_once(
    short_tmp: Path, server: PostgresServer, shared: SharedStore
) -> None:

    async def run(hosts: tuple[Service, Service]) -> tuple[Outcome, Outcome, list[int], float]:
        traffic = Traffic(hosts)
        await until_more(traffic.outcomes, 300)
        await until_forwarded(hosts)  # the everyday path first: forwarded as they come
        before = [len(o.numbers) for o in traffic.outcomes]
        await asyncio.to_thread(server.stop)
        began = time.monotonic()
        try:
            await until_spooled(hosts, OUTAGE_SECONDS)
            # A host's own file still vouches for its numbers; another host's, it cannot tell.
            mine = traffic.outcomes[0].numbers[-1]
            status, verdict = await look_up(hosts[0], mine)
            assert (status, verdict["issued"], verdict["record"]["tracking_number"]) == (
                200,
                True,
                mine,
            )
            assert (await look_up(hosts[1], mine))[0] == 503
        finally:
            await asyncio.to_thread(server.start)
        down_for = time.monotonic() - began
        during = [len(o.numbers) - b for o, b in zip(traffic.outcomes, before, strict=True)]
        await until_more(traffic.outcomes, 300)  # issuing recovered, records flowing again
        first, second = await traffic.stop()
        return first, second, during, down_for

    with two_hosts(short_tmp, shared.url, "--ledger", "--admin-token", TOKEN) as hosts:
        first, second, during, down_for = asyncio.run(run(hosts))
        stats = asyncio.run(until_forwarded(hosts))
        report("shared ledger, PostgreSQL down", first, second, down_s=f"{down_for:.2f}",
               issued_while_down=during)  # fmt: skip
        for outcome in (first, second):
            check_clean(outcome)
        check_no_duplicates(first.numbers, second.numbers)
        # Issuing went on from the blocks while PostgreSQL was away, on both hosts.
        assert all(n > 0 for n in during), during
        assert [s["uniqueness_violations_total"] for s in stats] == [0, 0]

        records = asyncio.run(shared_records(shared.url))
        assert [k for k, n in Counter((r[0], r[1]) for r in records).items() if n > 1] == []
        assert [k for k, n in Counter(r[2] for r in records).items() if n > 1] == []
        by_number = {r[2]: r for r in records}
        for host, outcome in zip(hosts, (first, second), strict=True):
            spool = spool_id(host)
            missing = [number for number in outcome.numbers if number not in by_number]
            assert missing == [], f"{len(missing)} numbers not in PostgreSQL, e.g. {missing[:3]}"
            for number in outcome.numbers:
                record = by_number[number]
                assert record[3] == spool  # forwarded by the host that issued it
                assert tuple(record[4:]) == (
                    number[:2],
                    number[2:4],
                    *(CANONICAL_QUERY[name] for name in ("weight", "created_at", "customer_id")),
                    CANONICAL_QUERY["customer_name"],
                    CANONICAL_QUERY["customer_slug"],
                )

        # Either host answers for the other's numbers, from the shared ledger.
        for asked, number in ((hosts[1], first.numbers[0]), (hosts[0], second.numbers[-1])):
            status, verdict = asyncio.run(look_up(asked, number))
            assert (status, verdict["issued"]) == (200, True), verdict
            assert verdict["record"]["tracking_number"] == number
        for host in hosts:
            assert host.stop() == 0
