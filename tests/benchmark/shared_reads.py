"""A lookup's cost on a PostgreSQL store: a connection of its own (as before 2026-12-07) against
the worker's kept reading connections (``ledger.postgres.SharedReads``).

    eval "$(bash .ci/postgres.sh | grep '^export')"
    python -m tests.benchmark.shared_reads

Needs the PostgreSQL server of ``.ci/postgres.sh`` (the tests' own); makes and drops a database.
Prints p50 and p99 of 300 lookups one after the other, each way twice, taken in turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ledger import postgres
from ledger.postgres import SELECT_ONE, SharedReads
from ledger.records import key_digest
from tests.system.conftest import PostgresServer

LOOKUPS = 300


async def timed(lookup: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """p50 and p99 of LOOKUPS lookups, in milliseconds."""
    took = []
    for _ in range(LOOKUPS):
        started = time.perf_counter()
        await lookup()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return took[LOOKUPS // 2], took[LOOKUPS * 99 // 100 - 1]


async def main() -> None:
    server = PostgresServer.from_environment()
    name = await server.create_database()
    url = server.database_url(name)
    digest = key_digest(b"k" * 32)
    reads = SharedReads(url)
    try:
        db = await postgres.connect(url)
        try:
            await postgres.create_tables(db)
        finally:
            await db.close()
        await reads.start()

        async def own_connection() -> None:
            db = await postgres.connect(url)
            try:
                await db.fetchrow(SELECT_ONE, digest, 1)
            finally:
                await db.close()

        async def kept_connection() -> None:
            async with reads.connection() as db:
                await db.fetchrow(SELECT_ONE, digest, 1)

        ways = {"a connection per lookup": own_connection, "kept connections": kept_connection}
        for _ in range(2):
            for label, lookup in ways.items():
                p50, p99 = await timed(lookup)
                print(f"{label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    finally:
        await reads.close()
        await server.drop_database(name)


if __name__ == "__main__":
    asyncio.run(main())
