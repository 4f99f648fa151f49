"""What the ledger's writer can take, and what a read costs: ``python -m tests.benchmark.ledger``.

No HTTP, no sockets: the writer's own insert (``ledger.sqlite.insert``, one transaction per
group, WAL with ``synchronous=FULL`` as in production) into a fresh file in a temporary
directory, then reads through a read-only connection of their own per lookup, as a worker does
(``ledger.sqlite.read_record``). Prints, for each traffic shape, the numbers a second it
ingests, the commit time, and the bytes per number on disk; then the p50/p99 of a lookup by
counter in the ledger it built, and of a page of 100 records of its biggest customer at page 1
and at page 1,000 (or its last page, when it has fewer), reached by walking the pages with the
real cursors (``service.cursor``), read and encoded as the listing route does.

    LEDGER_BENCH_NUMBERS=10000000 python -m tests.benchmark.ledger   # the 10-million ledger
    LEDGER_BENCH_SHAPES=1,2 python -m tests.benchmark.ledger          # only the 2nd and 3rd shapes
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass

import msgspec

from ledger import listing
from ledger import sqlite as ledger_sqlite
from ledger.records import Issue, Issued
from service.cursor import Cursors
from service.listing import Page
from service.records import RecordBody

NUMBERS = int(os.environ.get("LEDGER_BENCH_NUMBERS", "300000"))
LOOKUPS = int(os.environ.get("LEDGER_BENCH_LOOKUPS", "2000"))
PAGE = 100
DEEP_PAGE = 1000
KEY = bytes(range(32))


@dataclass
class Shape:
    name: str
    per_request: int  # numbers per request (count)
    requests_per_commit: int  # requests that meet in one group commit
    customers: int  # distinct customers the requests come from


SHAPES = (
    Shape("single numbers, one customer, 50 a commit", 1, 50, 1),
    Shape("single numbers, 1,000 customers, 50 a commit", 1, 50, 1000),
    Shape("count=100, 1,000 customers, 10 a commit", 100, 10, 1000),
    Shape("count=1000, 1,000 customers, 1 a commit", 1000, 1, 1000),
    # The groups of make bench's load (64 connections: about 18 requests a commit), and those
    # of a writer offered more than it takes, whose groups grow until it keeps up: a record's
    # cost is mostly its commit's (docs/performance.md).
    Shape("single numbers, one customer, 18 a commit", 1, 18, 1),
    Shape("single numbers, one customer, 2,000 a commit", 1, 2000, 1),
)


def ingest(directory: str, shape: Shape, total: int) -> tuple[str, float, float, float]:
    """Fill a new ledger with ``total`` numbers; its path, numbers/s, ms a commit, bytes/number."""
    path = os.path.join(directory, shape.name.replace(" ", "_").replace(",", "") + ".sqlite3")
    db = ledger_sqlite.open_for_writing(path)
    key = ledger_sqlite.key_id(db, ledger_sqlite.key_digest(KEY))
    next_id = ledger_sqlite.next_issue_id(db)
    customers = [str(uuid.uuid4()) for _ in range(shape.customers)]
    # Every group is made before the clock starts: the figure is the writer's, not the making
    # of its input (a worker makes the records; 2,000 a commit took longer to make than to write).
    groups: list[list[Issue]] = []
    counter = 0
    while counter < total:
        issues = []
        for _ in range(shape.requests_per_commit):
            numbers = [
                Issued(c, f"MYID{c:011d}X") for c in range(counter, counter + shape.per_request)
            ]
            counter += shape.per_request
            issues.append(
                Issue(
                    time.time_ns(),
                    "MY",
                    "ID",
                    "1.234",
                    "2026-12-06T10:00:00+08:00",
                    random.choice(customers),
                    "RedBox Logistics Sdn Bhd",
                    "redbox-logistics",
                    str(uuid.uuid4()),
                    "tracking-1",
                    None,
                    numbers,
                )
            )
        groups.append(issues)
    commits = 0
    began = time.perf_counter()
    for issues in groups:
        with ledger_sqlite.transaction(db):
            next_id = ledger_sqlite.insert(db, key, next_id, issues)
        commits += 1
        if commits % 100 == 0:
            ledger_sqlite.checkpoint(db)  # as the writer's checkpointer does, once a second
    seconds = time.perf_counter() - began
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path, counter / seconds, seconds / commits * 1000, os.path.getsize(path) / counter


async def lookups(path: str, total: int) -> tuple[float, float]:
    """p50 and p99, in ms, of reading one random counter's record, a connection each."""
    timings = []
    for _ in range(LOOKUPS):
        counter = random.randrange(total)
        began = time.perf_counter()
        record = await ledger_sqlite.read_record(path, KEY, counter)
        timings.append((time.perf_counter() - began) * 1000)
        assert record is not None
        assert record.counter == counter
    timings.sort()
    return timings[len(timings) // 2], timings[int(len(timings) * 0.99)]


def biggest_customer(path: str) -> str:
    with sqlite3.connect(path) as db:
        (customer,) = db.execute(
            "SELECT customer_id FROM issue GROUP BY customer_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    return str(customer)


async def one_page(
    path: str, cursors: Cursors, filters: listing.Filters, cursor: str | None
) -> str | None:
    """What the listing route does for one JSON page, HTTP aside; the next cursor."""
    async with listing.reading(path) as db:
        after = None if cursor is None else cursors.open(cursor, filters)
        found = await listing.read_page(db, filters, after, PAGE + 1)
    more = len(found) > PAGE
    found = found[:PAGE]
    following = cursors.make(found[-1].position, filters) if more else None
    msgspec.json.encode(Page([RecordBody.of(x.record) for x in found], following))
    return following


async def pages(path: str) -> list[tuple[int, float, float]]:
    """(page, p50 ms, p99 ms) of page 1 and page DEEP_PAGE (or the last) of one customer."""
    cursors = Cursors(KEY)
    filters = listing.Filters(customer_id=biggest_customer(path))
    starts: dict[int, str | None] = {1: None}
    cursor, page = await one_page(path, cursors, filters, None), 1
    while cursor is not None and page < DEEP_PAGE:
        starts[page + 1] = cursor
        cursor, page = await one_page(path, cursors, filters, cursor), page + 1
    found = []
    for number in sorted({1, page}):
        timings = []
        for _ in range(LOOKUPS // 4):
            began = time.perf_counter()
            await one_page(path, cursors, filters, starts[number])
            timings.append((time.perf_counter() - began) * 1000)
        timings.sort()
        found.append((number, timings[len(timings) // 2], timings[int(len(timings) * 0.99)]))
    return found


def main() -> None:
    directory = tempfile.mkdtemp(prefix="tn-ledger-bench-", dir="/tmp")
    os.chmod(directory, 0o700)
    try:
        print(f"{NUMBERS:,} numbers per shape, SQLite {sqlite3.sqlite_version}")
        chosen = os.environ.get("LEDGER_BENCH_SHAPES")
        shapes = [SHAPES[int(i)] for i in chosen.split(",")] if chosen else SHAPES
        for shape in shapes:
            path, rate, commit_ms, size = ingest(directory, shape, NUMBERS)
            p50, p99 = asyncio.run(lookups(path, NUMBERS))
            print(
                f"{shape.name}: {rate:,.0f} numbers/s, {commit_ms:.2f} ms a commit, "
                f"{size:.0f} bytes a number; lookup p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            )
            for number, p50, p99 in asyncio.run(pages(path)):
                print(
                    f"    a page of {PAGE} of one customer, page {number:,}: "
                    f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
                )
            os.unlink(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
