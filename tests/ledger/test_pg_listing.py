"""Listing the shared ledger in PostgreSQL (ledger/pg_listing.py), with records a real writer
committed and forwarded (tests/ledger/test_forwarder.py's ``Forwarding``); skipped without a
PostgreSQL server, like the forwarder's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger import pg_listing, postgres
from ledger.errors import LedgerError
from ledger.listing import Filters, Position
from ledger.postgres import SharedReads
from ledger.records import Issue
from tests.ledger.test_forwarder import Forwarding
from tests.ledger.test_writer import issue
from tests.system.conftest import PostgresServer

ACME = "0f8fad5b-d9cb-469f-a165-70867728950e"


async def forward(forwarding: Forwarding, *issues: Issue) -> None:
    """Commit ``issues`` in this order, one group each, and wait until PostgreSQL holds them."""
    for one in issues:
        await forwarding.record(one)
    await forwarding.until_forwarded()


async def counters(
    db: asyncpg.Connection, filters: Filters, after: Position | None = None
) -> list[int]:
    return [x.record.counter for x in await pg_listing.read_page(db, filters, after, 100)]


async def test_a_walk_of_one_customers_pages_while_records_are_forwarded_sees_each_once(
    forwarding: Forwarding, reads: SharedReads
) -> None:
    other = issue(0).customer_id
    # Requests of 1 to 3 numbers, every other one ACME's: pages end inside requests.
    issues = [
        issue(*range(c * 5, c * 5 + (c % 3) + 1), customer_id=ACME if c % 2 else other)
        for c in range(1, 61)
    ]
    await forward(forwarding, *issues)
    expected = [
        n.counter for x in reversed(issues) if x.customer_id == ACME for n in reversed(x.numbers)
    ]
    seen: list[int] = []
    later = 10_000
    async with pg_listing.reading(reads) as db:
        after, pages = None, 0
        # Bounded: a walk that went round in circles would fail, not hang.
        while pages < 50 and (
            found := await pg_listing.read_page(db, Filters(customer_id=ACME), after, 4)
        ):
            seen += [listed.record.counter for listed in found]
            after = found[-1].position
            pages += 1
            # Newer records of the same customer, in PostgreSQL before the next page is read.
            await forward(forwarding, issue(later, later + 1, customer_id=ACME), issue(later + 2))
            later += 3
        assert seen == expected
        assert pages == -(-len(expected) // 4)
        # They were there: the newest records are the ones forwarded during the walk.
        assert (await counters(db, Filters(customer_id=ACME)))[:2] == [later - 2, later - 3]


async def test_each_filter_selects_its_records(forwarding: Forwarding, reads: SharedReads) -> None:
    await forward(
        forwarding,
        issue(1, issued_at_ns=1_000),
        issue(2, issued_at_ns=2_000, customer_id=ACME),
        issue(3, issued_at_ns=3_000, customer_slug="acme"),
        issue(4, issued_at_ns=4_000, origin="SG"),
        issue(5, issued_at_ns=5_000, destination="TH"),
        issue(6, 7, issued_at_ns=6_000, correlation_id="order-77"),
    )
    cases = {
        Filters(): [7, 6, 5, 4, 3, 2, 1],
        Filters(customer_id=ACME): [2],
        Filters(customer_slug="acme"): [3],
        Filters(origin="SG"): [4],
        Filters(destination="TH"): [5],
        Filters(correlation_id="order-77"): [7, 6],
        Filters(issued_from_ns=2_000, issued_to_ns=4_000): [3, 2],  # from included, to not
        Filters(issued_from_ns=5_000): [7, 6, 5],
        Filters(issued_to_ns=2_000): [1],
        Filters(origin="MY", destination="ID", issued_from_ns=3_000): [7, 6, 3],
        Filters(customer_id=ACME, origin="SG"): [],
    }
    async with pg_listing.reading(reads) as db:
        for filters, expected in cases.items():
            assert await counters(db, filters) == expected, filters
        # A position inside a request: the rest of that request, then the older ones.
        (last,) = await pg_listing.read_page(db, Filters(), None, 1)
        assert last.position.counter == 7
        assert await counters(db, Filters(), last.position) == [6, 5, 4, 3, 2, 1]
        assert last.record.customer_name == issue(7).customer_name


async def test_nothing_forwarded_yet_lists_nothing_and_an_unreachable_server_is_an_error(
    server: PostgresServer, reads: SharedReads
) -> None:
    async with pg_listing.reading(reads) as db:  # no table yet
        assert await pg_listing.read_page(db, Filters(), None, 10) == []
    missing = SharedReads(server.database_url("tn_missing_database"))
    await missing.start()
    try:
        with pytest.raises(LedgerError, match="cannot read the shared ledger"):
            async with pg_listing.reading(missing):
                pass
    finally:
        await missing.close()


# A shared ledger big enough for the planner to choose as in production: 1,000 customers'
# 60,000 requests of 1 to 3 numbers each.
_FILL = (
    "INSERT INTO ledger_issue (spool_id, local_id, issued_at_ns, origin, destination, weight,"
    " created_at, customer_id, customer_name, customer_slug, correlation_id, host)"
    " SELECT gen_random_uuid(), g, g, 'MY', 'ID', '1.0', 'x', 'c-' || (g % 1000), 'n',"
    " 's-' || (g % 1000), 'r-' || g, 'h' FROM generate_series(1, 60000) g;"
    "INSERT INTO ledger_number SELECT '\\x00'::bytea, i.id * 3 + k, i.id, 'N'"
    " FROM ledger_issue i, generate_series(0, i.id % 3) k;"
    "ANALYZE ledger_issue; ANALYZE ledger_number;"
)


@pytest.fixture
async def filled(database: str, reads: SharedReads) -> AsyncIterator[asyncpg.Connection]:
    """A listing's connection to the filled shared ledger."""
    db = await asyncpg.connect(database, timeout=10)
    try:
        await postgres.create_tables(db)
        await db.execute(_FILL)
    finally:
        await db.close()
    async with pg_listing.reading(reads) as listing:
        yield listing


def nodes(plan: list[str]) -> list[str]:
    """The plan's nodes, with what they scan: "Index Scan Backward using … on ledger_issue i"."""
    return [
        line.strip().removeprefix("->").split("  (cost")[0].strip()
        for line in plan
        if "(cost" in line
    ]


async def plans(
    db: asyncpg.Connection, filters: Filters, after: Position | None
) -> list[list[str]]:
    """The page's plan as PostgreSQL makes it for these values, and its generic plan (which a
    prepared statement may take after five runs)."""
    sql, parameters = pg_listing.query(filters, after, 101)
    custom = [row[0] for row in await db.fetch(f"EXPLAIN {sql}", *parameters)]
    await db.execute("SET plan_cache_mode = force_generic_plan")
    await db.execute(f"PREPARE page AS {sql}")
    values = ", ".join(f"'{p}'" if isinstance(p, str) else str(p) for p in parameters)
    generic = [row[0] for row in await db.fetch(f"EXPLAIN EXECUTE page({values})")]
    await db.execute("DEALLOCATE page; RESET plan_cache_mode")
    return [custom, generic]


def sorts_one_request_at_a_time(plan: list[str]) -> bool:
    """No sort of what the walk reads: at most each request's numbers, in counter order."""
    found = nodes(plan)
    return "Sort" not in found and (
        "Incremental Sort" not in found
        or any(line.strip() == "Presorted Key: i.id" for line in plan)
    )


CUSTOMERS = {
    "customer id": (Filters(customer_id="c-7"), "ledger_issue_by_customer_id"),
    "slug": (Filters(customer_slug="s-7"), "ledger_issue_by_slug"),
    "customer and the rest": (
        Filters(customer_id="c-7", origin="MY", issued_from_ns=1, issued_to_ns=10**9),
        "ledger_issue_by_customer_id",
    ),
}


async def test_a_customers_page_walks_its_index_from_the_cursor_without_sorting_its_records(
    filled: asyncpg.Connection,
) -> None:
    for name, (filters, index) in CUSTOMERS.items():
        for after in (None, Position(30_000, 5), Position(300, 1)):
            for plan in await plans(filled, filters, after):
                found = nodes(plan)
                assert f"Index Scan Backward using {index} on ledger_issue i" in found, (name, plan)
                assert any(
                    n.startswith("Index Scan") and "ledger_number_by_issue" in n for n in found
                ), (name, plan)
                assert sorts_one_request_at_a_time(plan), (name, plan)
                if after is not None:
                    assert any("Index Cond:" in line and "id <=" in line for line in plan), plan


async def test_without_a_customer_a_page_walks_the_ledger_from_the_cursor_without_a_sort(
    filled: asyncpg.Connection,
) -> None:
    for filters in (Filters(), Filters(origin="MY", correlation_id="r-1")):
        for plan in await plans(filled, filters, Position(30_000, 5)):
            found = nodes(plan)
            assert sorts_one_request_at_a_time(plan), plan
            assert not any(n.startswith(("Seq Scan", "Bitmap")) for n in found), plan
            # Both tables' walks start at the cursor, not at the newest record.
            conditions = [line.strip() for line in plan if "Index Cond:" in line]
            assert any("issue_id <=" in c for c in conditions), plan
            assert any(c.startswith("Index Cond: (id <=") for c in conditions), plan


async def test_tables_an_earlier_version_made_gain_the_listings_indexes(database: str) -> None:
    db = await asyncpg.connect(database, timeout=10)
    try:
        await db.execute(postgres.TABLES.split("CREATE INDEX")[0])  # the tables alone
        await postgres.create_tables(db)
        names = {row[0] for row in await db.fetch("SELECT indexname FROM pg_indexes")}
    finally:
        await db.close()
    assert set(postgres.INDEXES) <= names
