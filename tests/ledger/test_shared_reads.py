"""A worker's connections for reading the shared ledger (``ledger.postgres.SharedReads``): a
few, kept between lookups, and replaced when PostgreSQL has closed them; on a real server,
skipped without one like the forwarder's tests."""

from __future__ import annotations

import asyncio

import asyncpg

from ledger import pg_listing, postgres
from ledger.listing import Filters
from ledger.postgres import READ_CONNECTIONS, SharedReads
from tests.ledger.test_forwarder import Forwarding
from tests.ledger.test_writer import KEY, issue

# No file there: a record can only come from PostgreSQL (no fallback to this host's file).
NO_FILE = "/nonexistent/ledger.sqlite3"


async def reading_backends(database: str) -> list[int]:
    """The server processes of the reading connections to ``database``."""
    db = await asyncpg.connect(database, timeout=10)
    try:
        rows = await db.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'tracking-ledger-reads' AND datname = current_database()"
            " ORDER BY pid"
        )
        return [row["pid"] for row in rows]
    finally:
        await db.close()


async def test_many_lookups_at_once_share_a_few_connections_kept_for_the_next(
    forwarding: Forwarding, reads: SharedReads, database: str
) -> None:
    await forwarding.record(issue(*range(1, 51)))
    await forwarding.until_forwarded()
    found = await asyncio.gather(
        *(postgres.read_record(reads, NO_FILE, KEY, counter) for counter in range(1, 51))
    )
    assert [record.counter if record else None for record in found] == list(range(1, 51))
    kept = await reading_backends(database)
    assert 1 <= len(kept) <= READ_CONNECTIONS
    # The next lookup and a listing use the kept connections: no new server process.
    assert await postgres.read_record(reads, NO_FILE, KEY, 7) is not None
    async with pg_listing.reading(reads) as db:
        assert len(await pg_listing.read_page(db, Filters(), None, 10)) == 10
    assert await reading_backends(database) == kept


async def test_connections_postgresql_closed_are_replaced_without_an_error(
    forwarding: Forwarding, reads: SharedReads, database: str
) -> None:
    await forwarding.record(issue(5))
    await forwarding.until_forwarded()
    assert await postgres.read_record(reads, NO_FILE, KEY, 5) is not None
    (before,) = await reading_backends(database)
    admin = await asyncpg.connect(database, timeout=10)
    try:  # as a restart or a failover would close them
        await admin.execute("SELECT pg_terminate_backend($1)", before)
    finally:
        await admin.close()
    found = await postgres.read_record(reads, NO_FILE, KEY, 5)
    assert found is not None
    assert found.counter == 5
    assert await reading_backends(database) not in ([], [before])
