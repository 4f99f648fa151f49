"""Listing the shared ledger's records in PostgreSQL (a PostgreSQL store), as ``ledger/listing.py``
lists a host's file: the same filters, order, keyset positions and page size.

Records are ordered by their issue's ``ledger_issue.id``, then by counter, both descending.
PostgreSQL numbers issues as the forwarders insert them, so a record forwarded while someone
walks the pages sorts before the walker's position (or, from a host whose insert got its id
earlier and committed later, among the records still ahead): a walk never sees a record twice,
and never misses one that was there when it began. A record still in a host's spool is not
listed until it is forwarded (its lag: the spool's depth, in /allocator/status).

The customer id or slug leads the walk through its index (``ledger.postgres.INDEXES``), which
holds the issue's id after the value: a page starts at the cursor's position through the index
and reads its issues' numbers through ``ledger_number_by_issue``. PostgreSQL sorts the numbers
of one issue at a time (an incremental sort on the counter, the issue's id presorted), never
the customer's records (tests/ledger/test_pg_listing.py checks the plans). Without a customer,
the walk merges both tables' indexes from the cursor down, with no sort at all; the countries,
the time range and the correlation id narrow what it returns, and a page costs what it reads
past, as on SQLite.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from allocator.store.postgres import DATABASE_ERRORS, describe
from config.settings import redact_url
from ledger.errors import LedgerError
from ledger.listing import EQUALS, Filters, Listed, Position
from ledger.postgres import RECORD_SELECT, SharedReads
from ledger.records import Record

# A page must follow the indexes whatever the planner estimates: for a customer of few records
# below the cursor it would fetch them all and sort them (a bitmap scan), and a generic plan
# keeps that choice for a customer of millions. Set while a listing holds its connection.
_WALK = {"enable_sort": "off", "enable_bitmapscan": "off"}


def query(filters: Filters, after: Position | None, limit: int) -> tuple[str, list[object]]:
    """The SQL and parameters of one page: ``limit`` records after ``after``, newest first."""
    conditions: list[str] = []
    parameters: list[object] = []

    def given(value: object) -> str:
        parameters.append(value)
        return f"${len(parameters)}"

    for name, column in EQUALS.items():
        value = getattr(filters, name)
        if value is not None:
            conditions.append(f"{column} = {given(value)}")
    # The shared ledger has no index by time: a window narrows the walk, never leads it.
    if filters.issued_from_ns is not None:
        conditions.append(f"i.issued_at_ns >= {given(filters.issued_from_ns)}")
    if filters.issued_to_ns is not None:
        conditions.append(f"i.issued_at_ns < {given(filters.issued_to_ns)}")
    if after is not None:
        # Not a row comparison: "i.id <= …" alone bounds the walk of an index. The same bound
        # on the numbers' issue id, which PostgreSQL does not infer from the join: a walk of
        # every record merges both tables' indexes, and each must start at the cursor.
        issue_id, counter = given(after.issue_id), given(after.counter)
        conditions.append(
            f"i.id <= {issue_id} AND n.issue_id <= {issue_id}"
            f" AND (i.id < {issue_id} OR n.counter < {counter})"
        )
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"{RECORD_SELECT}{where} ORDER BY i.id DESC, n.counter DESC LIMIT {given(limit)}"
    return sql, parameters


@contextlib.asynccontextmanager
async def reading(reads: SharedReads) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the worker's reading pool, held for a listing's pages, its walk set by
    ``_WALK``; LedgerError when PostgreSQL cannot be reached."""
    async with contextlib.AsyncExitStack() as held:
        try:
            db = await held.enter_async_context(reads.connection(_WALK))
        except (*DATABASE_ERRORS, ValueError) as exc:
            raise _unreadable(reads.url, exc) from exc
        yield db


async def read_page(
    db: asyncpg.Connection, filters: Filters, after: Position | None, limit: int
) -> list[Listed]:
    """Up to ``limit`` records matching ``filters`` after ``after``, newest first;
    LedgerError when PostgreSQL cannot answer."""
    sql, parameters = query(filters, after, limit)
    try:
        rows = await db.fetch(sql, *parameters)
    except asyncpg.UndefinedTableError:
        return []  # no host has forwarded a record yet: nothing recorded
    except DATABASE_ERRORS as exc:
        raise _unreadable(None, exc) from exc
    return [Listed(Position(row[0], row[1]), Record(*row[1:])) for row in rows]


def _unreadable(url: str | None, exc: BaseException) -> LedgerError:
    where = "" if url is None else f" at {redact_url(url)}"
    return LedgerError(f"cannot read the shared ledger{where}: {describe(exc)}")
