"""Listing the ledger's records, newest first, a page at a time (keyset pagination).

Records are ordered by their issue's id, then by counter, both descending. The writer numbers
issues in commit order, so a record committed while someone walks the pages always sorts
before the walker's position: a walk never sees a record twice, and never misses one that was
there when it began. A page starts after the last position of the previous one, found through
an index, so it costs the same at the millionth record as at the first
(tests/ledger/test_listing.py checks the query plans).

The indexed filters are the customer id and the customer slug: the walk follows that column's
index (an index on a column holds the row's id after it, in order). The countries, the time
range and the correlation id narrow what such a walk returns; without an indexed filter the
walk goes through every record newest first, and a page costs what it reads past.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from typing import NamedTuple

import msgspec

from ledger.errors import LedgerError
from ledger.records import Record
from ledger.sqlite import RECORD_SELECT

# Records a stream reads from the file at a time: its memory, whatever the ledger's size.
STREAM_PAGE = 1000


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What a listing asks for; None is no condition. Times are nanoseconds since the epoch:
    ``issued_from`` included, ``issued_to`` excluded."""

    customer_id: str | None = None
    customer_slug: str | None = None
    origin: str | None = None
    destination: str | None = None
    issued_from_ns: int | None = None
    issued_to_ns: int | None = None
    correlation_id: str | None = None


class Position(NamedTuple):
    """Where a record sorts in a listing: its issue's id, then its counter."""

    issue_id: int
    counter: int


class Listed(NamedTuple):
    position: Position
    record: Record


# Equality conditions, each a column of ``issue`` (names from this table only, never a client).
EQUALS = {
    "customer_id": "i.customer_id",
    "customer_slug": "i.customer_slug",
    "origin": "i.origin",
    "destination": "i.destination",
    "correlation_id": "i.correlation_id",
}
_INDEXED = ("customer_id", "customer_slug")


def query(filters: Filters, after: Position | None, limit: int) -> tuple[str, list[object]]:
    """The SQL and parameters of one page: ``limit`` records after ``after``, newest first."""
    conditions, parameters = [], []
    for name, column in EQUALS.items():
        value = getattr(filters, name)
        if value is not None:
            # Only the indexed columns may lead the walk: "+" keeps the planner from using an
            # index of another's (a country's rows would have to be sorted, half the ledger).
            conditions.append(f"{column} = ?" if name in _INDEXED else f"+{column} = ?")
            parameters.append(value)
    # The time index would give the rows of a window out of order, to be sorted at each page.
    if filters.issued_from_ns is not None:
        conditions.append("+i.issued_at_ns >= ?")
        parameters.append(filters.issued_from_ns)
    if filters.issued_to_ns is not None:
        conditions.append("+i.issued_at_ns < ?")
        parameters.append(filters.issued_to_ns)
    if after is not None:
        conditions.append("i.id <= ? AND (i.id < ? OR n.counter < ?)")
        parameters.extend((after.issue_id, after.issue_id, after.counter))
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"{RECORD_SELECT}{where} ORDER BY i.id DESC, n.counter DESC LIMIT ?"
    parameters.append(limit)
    return sql, parameters


def page(
    db: sqlite3.Connection, filters: Filters, after: Position | None, limit: int
) -> list[Listed]:
    """Up to ``limit`` records matching ``filters`` after ``after``, newest first."""
    sql, parameters = query(filters, after, limit)
    return [
        Listed(Position(row[0], row[1]), Record(*row[1:])) for row in db.execute(sql, parameters)
    ]


def _connect(path: str) -> sqlite3.Connection | None:
    if not os.path.exists(path):
        return None  # nothing recorded yet
    try:
        db = sqlite3.connect(
            f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, check_same_thread=False
        )
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from exc
    return db


@contextlib.asynccontextmanager
async def reading(path: str) -> AsyncIterator[sqlite3.Connection | None]:
    """A read-only connection of the caller's own to the ledger file at ``path``, opened in a
    thread (None when there is no file yet: nothing recorded); LedgerError when it cannot be."""
    db = await asyncio.to_thread(_connect, path)
    try:
        yield db
    finally:
        if db is not None:
            db.close()


async def read_page(
    db: sqlite3.Connection | None, filters: Filters, after: Position | None, limit: int
) -> list[Listed]:
    """``page`` in a thread, so that the worker's loop goes on; LedgerError when it fails."""
    if db is None:
        return []

    def read() -> list[Listed]:
        try:
            return page(db, filters, after, limit)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger: {exc}") from exc

    return await asyncio.to_thread(read)
