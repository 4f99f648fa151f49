"""The shared ledger in PostgreSQL: every host's records, forwarded from its local file.

Same two tables as the local file (``ledger/sqlite.py``): ``ledger_issue`` holds one row per
request, known by the local file it came from and its id there, ``(spool_id, local_id)``,
UNIQUE, so a batch sent again after a crash adds nothing; ``ledger_number`` holds one row per
number, its primary key ``(key_digest, counter)`` the second line against duplicates across
hosts. The key's digest itself, not a local id of it: hosts share no ids.

The forwarder (``ledger/forwarder.py``) writes; workers read one record (``read_record``) and
list records (``ledger/pg_listing.py``); the writer's retention task deletes old ones
(``ledger/retention.py``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import NamedTuple

import asyncpg

from allocator.store.postgres import (
    CONNECT_TIMEOUT,
    DATABASE_ERRORS,
    SESSION_SETTINGS,
    STATEMENT_TIMEOUT,
    describe,
)
from config.urls import redact_url
from ledger import sqlite
from ledger.erasure import BATCH_REQUESTS, Erased
from ledger.errors import LedgerError
from ledger.records import ISSUE_COLUMNS, RECORD_COLUMNS, Record, key_digest
from ledger.spool import Batch

log = logging.getLogger("ledger")

# Hosts starting at once take turns creating the tables (as the store's schema does).
_SCHEMA_LOCK = int.from_bytes(b"tnledger", "big")
_SESSION = {**SESSION_SETTINGS, "application_name": "tracking-ledger"}
# A worker's connections for lookups, listings and labels: at most this many at once (more
# requests wait for one, up to CONNECT_TIMEOUT), whatever the requests' number, so that a burst
# of lookups cannot use up PostgreSQL's connections, which the allocators and forwarders need.
READ_CONNECTIONS = 4
# An idle reading connection is closed after this long.
READ_IDLE_SECONDS = 60.0
_READS_SESSION = {**SESSION_SETTINGS, "application_name": "tracking-ledger-reads"}

TABLES = """
CREATE TABLE IF NOT EXISTS ledger_issue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    spool_id uuid NOT NULL,
    local_id bigint NOT NULL,
    issued_at_ns bigint NOT NULL,
    origin text NOT NULL,
    destination text NOT NULL,
    weight text NOT NULL,
    created_at text NOT NULL,
    customer_id text NOT NULL,
    customer_name text NOT NULL,
    customer_slug text NOT NULL,
    correlation_id text NOT NULL,
    host text NOT NULL,
    idempotency_key_digest bytea,
    UNIQUE (spool_id, local_id)
);
CREATE TABLE IF NOT EXISTS ledger_number (
    key_digest bytea NOT NULL,
    counter bigint NOT NULL,
    issue_id bigint NOT NULL REFERENCES ledger_issue (id),
    number text NOT NULL,
    PRIMARY KEY (key_digest, counter)
);
"""
# A listing walks one customer's issues newest first through an index on the customer's column,
# which holds the issue's id after it; an issue's numbers come in counter order through the
# last, which retention's deletes need too (ledger_number's foreign key, checked at each delete
# of an issue). No index by time: retention walks the issues in id order (ledger/retention.py).
INDEXES = {
    "ledger_issue_by_customer_id": "ledger_issue (customer_id, id)",
    "ledger_issue_by_slug": "ledger_issue (customer_slug, id)",
    "ledger_number_by_issue": "ledger_number (issue_id, counter)",
}
# Building one on a big shared ledger takes minutes: the statement timeout would cancel it, and
# every retry would start it again. The forwarder waits meanwhile; records wait in the spool.
INDEX_BUILD_TIMEOUT = 3600.0
TABLES += "".join(f"CREATE INDEX IF NOT EXISTS {name} ON {on};\n" for name, on in INDEXES.items())
# Every other column of an issue is text.
_ISSUE_TYPES = {"issued_at_ns": "bigint", "idempotency_key_digest": "bytea"}
_INSERT_ISSUES = (
    f"INSERT INTO ledger_issue (spool_id, local_id, {', '.join(ISSUE_COLUMNS)})"
    f" SELECT $1, * FROM unnest($2::bigint[], "
    + ", ".join(
        f"${n}::{_ISSUE_TYPES.get(column, 'text')}[]"
        for n, column in enumerate(ISSUE_COLUMNS, start=3)
    )
    + ") ON CONFLICT (spool_id, local_id) DO NOTHING"
)
_ISSUE_IDS = (
    "SELECT local_id, id, issued_at_ns, correlation_id FROM ledger_issue"
    " WHERE spool_id = $1 AND local_id BETWEEN $2 AND $3"
)
_NUMBERS = "unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::text[])"
_INSERT_NUMBERS = (
    f"INSERT INTO ledger_number (key_digest, counter, issue_id, number) SELECT * FROM {_NUMBERS}"
    " ON CONFLICT (key_digest, counter) DO NOTHING"
)
# The numbers of a batch recorded for another issue than theirs (after the batch's own insert,
# in its transaction: the rows it added, and a resend's, are the batch's own).
_RECORDED_ELSEWHERE = (
    f"SELECT w.counter, w.number, n.number, w.issue_id FROM {_NUMBERS}"
    " AS w (key_digest, counter, issue_id, number)"
    " JOIN ledger_number n ON n.key_digest = w.key_digest AND n.counter = w.counter"
    " WHERE n.issue_id <> w.issue_id"
)
_RECORD = ", ".join(f"n.{c}" if c in ("counter", "number") else f"i.{c}" for c in RECORD_COLUMNS)
# Every record with its issue's id first, for a listing (ledger/pg_listing.py) to add conditions to.
RECORD_SELECT = (
    f"SELECT i.id, {_RECORD} FROM ledger_issue i JOIN ledger_number n ON n.issue_id = i.id"
)
SELECT_ONE = (
    f"SELECT {_RECORD} FROM ledger_number n JOIN ledger_issue i ON i.id = n.issue_id"
    " WHERE n.key_digest = $1 AND n.counter = $2"
)
# Erasure (the file's side is ledger/erasure.py): the customer's issues not blanked yet, in the
# order of ledger_issue_by_customer_id, a batch at a time; then their numbers, to report.
_NEXT_TO_BLANK = (
    "SELECT id FROM ledger_issue WHERE customer_id = $1 AND id > $2"
    " AND (customer_name <> '' OR customer_slug <> '') ORDER BY id LIMIT $3"
)
_BLANK = (
    "UPDATE ledger_issue SET customer_name = '', customer_slug = '' WHERE id = ANY($1::bigint[])"
)
_CUSTOMER_RECORDS = (
    "SELECT count(*) FROM ledger_number"
    " WHERE issue_id IN (SELECT id FROM ledger_issue WHERE customer_id = $1)"
)


class SpoolReused(LedgerError):
    """Another file already sent other issues under this file's identity (a copied or restored
    ledger file): its records are not forwarded, for they would be taken for resends."""


class Duplicate(NamedTuple):
    """A number of the batch whose counter the shared ledger holds for another issue."""

    counter: int
    number: str
    recorded_number: str
    correlation_id: str


async def connect(url: str) -> asyncpg.Connection:
    """A connection with the store's session settings (``synchronous_commit=on``)."""
    return await asyncpg.connect(
        url, timeout=CONNECT_TIMEOUT, command_timeout=STATEMENT_TIMEOUT, server_settings=_SESSION
    )


class SharedReads:
    """A worker's connections to the shared ledger for reading: opened when first needed, at
    most READ_CONNECTIONS, and kept for the next request, since a connection of its own cost
    each lookup a connection and an authentication (docs/performance.md)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Make the pool: no connection yet, so that a PostgreSQL away at start is no error."""
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=READ_CONNECTIONS,
            max_inactive_connection_lifetime=READ_IDLE_SECONDS,
            timeout=CONNECT_TIMEOUT,
            command_timeout=STATEMENT_TIMEOUT,
            server_settings=_READS_SESSION,
        )

    @contextlib.asynccontextmanager
    async def connection(
        self, settings: dict[str, str] | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool, with ``settings`` (names and values of ours, never a
        client's) for as long as it is held (the pool resets a connection it gets back).
        DATABASE_ERRORS when none can be had.

        A kept connection may have been closed by PostgreSQL meanwhile (a restart, a
        failover, ``pg_terminate_backend``), which the pool notices only if the close reached
        it first: a first statement checks, and on failure another connection is tried once
        (tests/ledger/test_shared_reads.py failed now and then without)."""
        if self._pool is None:
            raise asyncpg.InterfaceError("the shared ledger's reading connections are closed")
        first = "; ".join(f"SET {name} = {value}" for name, value in (settings or {}).items())
        for last_try in (False, True):
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as db:
                try:
                    await db.execute(first or "SELECT 1")
                except DATABASE_ERRORS:
                    if last_try:
                        raise
                    continue  # given back broken: the pool replaces it
                yield db
                return

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()  # nothing to wait for: readers only read
            self._pool = None


async def create_tables(db: asyncpg.Connection) -> None:
    """The shared ledger's tables and indexes, those that are missing (a DBA may have made
    them; tables made by an earlier version gain the listing's indexes)."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        if await db.fetchval(
            "SELECT to_regclass('ledger_issue') IS NULL OR to_regclass('ledger_number') IS NULL"
        ):
            await db.execute(TABLES)
            return
        for name, on in INDEXES.items():
            if not await db.fetchval("SELECT to_regclass($1) IS NULL", name):
                continue
            try:
                async with db.transaction():  # a savepoint: a refusal leaves the rest standing
                    await db.execute(
                        f"CREATE INDEX IF NOT EXISTS {name} ON {on}", timeout=INDEX_BUILD_TIMEOUT
                    )
            except asyncpg.InsufficientPrivilegeError as exc:
                # Forwarding matters more than a listing's speed: it goes on without.
                log.warning(
                    "cannot create an index of the shared ledger; listings walk without it",
                    extra={"tracking.index": name, "error.message": describe(exc)},
                )


async def forward(db: asyncpg.Connection, spool_id: uuid.UUID, batch: Batch) -> list[Duplicate]:
    """Commit ``batch`` of the file ``spool_id``, skipping what PostgreSQL holds already; the
    numbers it skipped because another issue holds their counter (uniqueness violations)."""
    issues, first, last = batch.issues, batch.issues[0][0], batch.last_id
    async with db.transaction():
        columns = [list(column) for column in zip(*issues, strict=True)]
        await db.execute(_INSERT_ISSUES, spool_id, *columns)
        ids: dict[int, tuple[int, int, str]] = {}
        for local_id, issue_id, issued_at_ns, correlation_id in await db.fetch(
            _ISSUE_IDS, spool_id, first, last
        ):
            ids[local_id] = (issue_id, issued_at_ns, correlation_id)
        at, correlation = ISSUE_COLUMNS.index("issued_at_ns"), ISSUE_COLUMNS.index("correlation_id")
        for row in issues:
            found = ids.get(row[0])
            if found is None or found[1:] != (row[1 + at], row[1 + correlation]):
                raise SpoolReused(
                    f"the shared ledger holds another issue under this file's id {spool_id}"
                    f" and local id {row[0]}: the ledger file was copied or restored"
                )
        digests, counters, issue_ids, numbers = [], [], [], []
        for digest, counter, local_id, number in batch.numbers:
            digests.append(digest)
            counters.append(counter)
            issue_ids.append(ids[local_id][0])
            numbers.append(number)
        status = await db.execute(_INSERT_NUMBERS, digests, counters, issue_ids, numbers)
        if int(status.split()[-1]) == len(numbers):
            return []  # every number was new: the everyday case
        by_id = {issue_id: correlation_id for issue_id, _, correlation_id in ids.values()}
        return [
            Duplicate(counter, number, recorded, by_id[issue_id])
            for counter, number, recorded, issue_id in await db.fetch(
                _RECORDED_ELSEWHERE, digests, counters, issue_ids, numbers
            )
        ]


async def read_record(
    reads: SharedReads, path: str, key: bytes, counter: int, series: str = ""
) -> Record | None:
    """The record of ``counter`` under permutation ``key`` (of S10 ``series``, if any) in the
    shared ledger, else in this host's file at ``path`` (its spool: a record not forwarded
    yet). While PostgreSQL cannot be read, a record of this host's file still vouches for its
    number; without one, no answer can be given: LedgerError."""
    digest = key_digest(key, series)
    unreachable: str | None = None
    try:
        async with reads.connection() as db:
            row = await db.fetchrow(SELECT_ONE, digest, counter)
        if row is not None:
            return Record(*row)
    except (*DATABASE_ERRORS, ValueError) as exc:
        unreachable = describe(exc)
    found = await sqlite.read_record(path, key, counter, series)
    if unreachable is not None:
        where = redact_url(reads.url)
        if found is None:
            raise LedgerError(f"cannot read the shared ledger at {where}: {unreachable}")
        log.warning(
            "shared ledger unreachable: the record was read from this host's ledger file",
            extra={"tracking.store_location": where, "error.message": unreachable},
        )
    return found


async def erase_customer(url: str, customer_id: str) -> Erased:
    """Blank the name and slug of every issue of ``customer_id`` in the shared ledger, then
    rewrite the table, so that the names are gone from its files too.

    An UPDATE leaves the old row versions in their pages, and a plain VACUUM marks their space
    free without overwriting it (measured: the names were still in the table's and the slug
    index's files). VACUUM FULL writes the table and its indexes anew, holding an exclusive
    lock meanwhile: forwarding waits (records wait in the spools), reads of records time out.
    So it runs only when something was blanked.
    """
    db = await connect(url)
    try:
        requests = 0
        position = 0
        while batch := [
            row[0] for row in await db.fetch(_NEXT_TO_BLANK, customer_id, position, BATCH_REQUESTS)
        ]:
            await db.execute(_BLANK, batch)  # a transaction of its own, as in the file
            requests += len(batch)
            position = batch[-1]
        records = await db.fetchval(_CUSTOMER_RECORDS, customer_id)
        if requests:
            await db.execute("VACUUM FULL ledger_issue", timeout=INDEX_BUILD_TIMEOUT)
        return Erased(requests, int(records))
    finally:
        await db.close()
