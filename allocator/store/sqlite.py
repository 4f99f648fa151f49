"""The embedded default store: one row in a SQLite file, WAL with ``synchronous=FULL``.

Same shape as ``postgres.py``, method for method: every method is statements that ``_run``
runs on the one connection, in turn, with any database failure made a StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

from allocator.counter import COUNTER_LIMIT
from allocator.errors import StoreError, StoreMissing
from allocator.files import private_database_file
from allocator.series import Series
from allocator.store import (
    Remembered,
    checked_key,
    idempotency_bytes_on_disk,
    offered_row,
    reserved_range,
    series_row,
)
from allocator.store.faults import fault
from allocator.store.lock import StoreLock
from allocator.store.schema import ADD_SCHEME_COLUMN, SCHEMA_VERSION, SQLITE_TABLES, create_or_check

# How long a statement waits for another process's lock on the file, in milliseconds.
BUSY_TIMEOUT_MS = 5000
# Attempts to switch a new SQLite file to WAL while other processes open it too.
WAL_ATTEMPTS = 100

_T = TypeVar("_T")


class SQLiteStore:
    """One host's counter: one row in a SQLite file, one connection."""

    kind = "sqlite"
    default_step = 100_000
    # Measured against the file (test_the_idempotency_bytes_counted_are_what_the_disk_holds).
    idempotency_key_overhead = 96

    def __init__(self, path: str, create: bool = True) -> None:
        self.path = self.location = path
        self.create = create
        self.created = False
        self._db: aiosqlite.Connection | None = None
        # One connection: a transaction must not take in a statement of another caller.
        self._one_at_a_time = StoreLock()
        # The idempotency clock: the wall clock at open, advanced by the monotonic clock, so a
        # step of the wall clock while we run expires nothing early (docs/reliability.md).
        self._wall_minus_monotonic = time.time() - time.monotonic()

    async def open(self) -> None:
        try:
            self._private_file()
            # isolation_level=None: we open and commit every transaction ourselves.
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            # First: every statement after it may meet another process's lock and must wait.
            await self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        await create_or_check(
            lambda: self._run(
                "create the schema", lambda db: _create_schema(db, self.create, self.location)
            ),
            self.location,
            self.close,
        )

    async def load_key(self, supplied: bytes | None = None, scheme: int | None = None) -> bytes:
        async def insert_once_then_read(db: aiosqlite.Connection) -> Any:
            offered = offered_row(self.create, supplied, scheme)
            if offered is not None:
                # Processes starting at once each offer a key; the first insert wins.
                inserted = await _rowcount(
                    db,
                    "INSERT OR IGNORE INTO counter (id, reserved, key, scheme) VALUES (1, 0, ?, ?)",
                    offered,
                )
                self.created = inserted == 1
            return await _fetchrow(db, "SELECT key, scheme FROM counter WHERE id = 1")

        row = await self._run("load the key", insert_once_then_read)
        return checked_key(row, supplied, scheme, self.create, self.location)

    async def load_scheme(self) -> int:
        scheme = await self._run(
            "load the key's scheme",
            lambda db: _fetchval(db, "SELECT scheme FROM counter WHERE id = 1"),
        )
        if scheme is None:
            raise StoreError("the store has no key yet")
        return int(scheme)

    async def durable_mark(self) -> int:
        mark = await self._run(
            "read the reservation",
            lambda db: _fetchval(db, "SELECT reserved FROM counter WHERE id = 1"),
        )
        return mark or 0

    async def reserve(self, count: int) -> tuple[int, int]:
        async def raise_the_mark(db: aiosqlite.Connection) -> int | None:
            async with _transaction(db):
                stop = await _fetchval(
                    db,
                    "UPDATE counter SET reserved = reserved + ?"
                    " WHERE id = 1 AND reserved + ? <= ? RETURNING reserved",
                    (count, count, COUNTER_LIMIT),
                )
                fault("reserve-before-commit")
            fault("reserve-after-commit")
            return stop

        stop = await self._run("reserve", raise_the_mark, urgent=True)
        return reserved_range(stop, count)

    async def release(self, start: int, stop: int) -> bool:
        changed = await self._run(
            "release",
            lambda db: _rowcount(
                db, "UPDATE counter SET reserved = ? WHERE id = 1 AND reserved = ?", (start, stop)
            ),
            urgent=True,
        )
        return changed == 1

    async def raise_mark(self, value: int) -> int:
        after = await self._run(
            "raise the mark",
            lambda db: _fetchval(
                db,
                "UPDATE counter SET reserved = MAX(reserved, ?) WHERE id = 1 RETURNING reserved",
                (value,),
            ),
            urgent=True,
        )
        if after is None:
            raise StoreError("the store has no counter yet")
        return int(after)

    async def open_series(self, name: str, order: str, size: int) -> Series:
        async def insert_once_then_read(db: aiosqlite.Connection) -> Any:
            await db.execute(
                "INSERT OR IGNORE INTO series (name, reserved, size, ordering) VALUES (?, 0, ?, ?)",
                (name, size, order),
            )
            return await _fetchrow(
                db, "SELECT ordering, size, reserved FROM series WHERE name = ?", (name,)
            )

        return series_row(await self._run("open a series", insert_once_then_read), name)

    async def all_series(self) -> list[Series]:
        rows = await self._run(
            "read the series",
            lambda db: _fetchall(
                db, "SELECT name, ordering, size, reserved FROM series ORDER BY name"
            ),
        )
        return [Series(str(n), str(o), int(s), int(r)) for n, o, s, r in rows]

    async def reserve_series(self, name: str, count: int) -> tuple[int, int]:
        async def raise_the_mark(db: aiosqlite.Connection) -> Any:
            async with _transaction(db):
                row = await _fetchrow(
                    db, "SELECT reserved, size FROM series WHERE name = ?", (name,)
                )
                if row is None:
                    return None
                start, stop = row[0], min(row[0] + count, row[1])
                await db.execute("UPDATE series SET reserved = ? WHERE name = ?", (stop, name))
                fault("reserve-before-commit")
            fault("reserve-after-commit")
            return start, stop

        taken = await self._run("reserve in a series", raise_the_mark, urgent=True)
        if taken is None:
            raise StoreError(f"the store holds no series {name}")
        return taken

    async def release_series(self, name: str, start: int, stop: int) -> bool:
        changed = await self._run(
            "release in a series",
            lambda db: _rowcount(
                db,
                "UPDATE series SET reserved = ? WHERE name = ? AND reserved = ?",
                (start, name, stop),
            ),
            urgent=True,
        )
        return changed == 1

    async def raise_series_mark(self, name: str, order: str, size: int, value: int) -> Series:
        async def make_or_raise(db: aiosqlite.Connection) -> Any:
            async with _transaction(db):
                await db.execute(
                    "INSERT OR IGNORE INTO series (name, reserved, size, ordering)"
                    " VALUES (?, 0, ?, ?)",
                    (name, size, order),
                )
                return await _fetchrow(
                    db,
                    "UPDATE series SET reserved = MAX(reserved, MIN(?, size)) WHERE name = ?"
                    " RETURNING ordering, size, reserved",
                    (value, name),
                )

        return series_row(await self._run("raise a series' mark", make_or_raise, urgent=True), name)

    def _now(self) -> float:
        return time.monotonic() + self._wall_minus_monotonic

    async def recall(self, key: str, fingerprint: bytes = b"") -> Remembered | None:
        async def read_then_claim(db: aiosqlite.Connection) -> Remembered | None:
            row = await _fetchrow(
                db,
                "SELECT i.fingerprint, i.response, u.key IS NOT NULL"
                " FROM idempotency i LEFT JOIN idempotency_unaudited u"
                " ON u.key = i.key AND u.expires_at = i.expires_at"
                " WHERE i.key = ? AND i.expires_at > ?",
                (key, self._now()),
            )
            if row is None:
                return None
            unaudited = False
            if row[2] and bytes(row[0]) == fingerprint:
                # Whoever deletes the mark audits the answer: one caller only.
                deleted = await _rowcount(
                    db, "DELETE FROM idempotency_unaudited WHERE key = ?", (key,)
                )
                unaudited = deleted == 1
            return Remembered(bytes(row[0]), bytes(row[1]), unaudited)

        return await self._run("recall an idempotency key", read_then_claim)

    async def remember(
        self, key: str, fingerprint: bytes, response: bytes, ttl: float
    ) -> Remembered:
        async def insert_then_read(db: aiosqlite.Connection) -> Any:
            now = self._now()
            async with _transaction(db):
                # An expired answer is replaced; a live one stays and is returned.
                await db.execute(
                    "INSERT INTO idempotency VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
                    " response = excluded.response, expires_at = excluded.expires_at"
                    " WHERE idempotency.expires_at <= ?",
                    (key, fingerprint, response, now + ttl, now),
                )
                return await _fetchrow(
                    db, "SELECT fingerprint, response FROM idempotency WHERE key = ?", (key,)
                )

        row = await self._run("remember an idempotency key", insert_then_read)
        return Remembered(bytes(row[0]), bytes(row[1]))

    async def abandon(self, key: str, response: bytes) -> None:
        await self._run(
            "mark an idempotency key abandoned",
            lambda db: _rowcount(
                db,
                "INSERT INTO idempotency_unaudited SELECT key, expires_at FROM idempotency"
                " WHERE key = ? AND response = ? AND expires_at > ?"
                " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
                (key, response, self._now()),
            ),
        )

    async def forget_expired(self, limit: int) -> int:
        deleted = 0
        for table in ("idempotency", "idempotency_unaudited"):
            deleted += await self._run(
                "forget expired idempotency keys",
                lambda db, table=table: _rowcount(
                    db,
                    f"DELETE FROM {table} WHERE key IN"
                    f" (SELECT key FROM {table} WHERE expires_at <= ? LIMIT ?)",
                    (self._now(), limit),
                ),
            )
        return deleted

    async def idempotency_bytes(self) -> int:
        keys, key_bytes, kept_bytes = await self._run(
            "measure the idempotency keys",
            lambda db: _fetchrow(
                db,
                "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB))), 0),"
                " coalesce(sum(length(fingerprint) + length(response)), 0) FROM idempotency",
            ),
        )
        return idempotency_bytes_on_disk(keys, key_bytes, kept_bytes, self.idempotency_key_overhead)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _run(
        self,
        action: str,
        statements: Callable[[aiosqlite.Connection], Awaitable[_T]],
        *,
        urgent: bool = False,
    ) -> _T:
        """``statements`` on the connection; any database failure is a StoreError.

        ``urgent``: the counter's statements, which go before any idempotency traffic.
        """
        async with self._one_at_a_time.hold(urgent=urgent):
            db = self._connection()
            try:
                return await statements(db)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action}: {exc}") from exc

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    def _private_file(self) -> None:
        """The database file, 0600 in a 0700 directory whatever the umask: it holds the key.

        SQLite gives the -wal and -shm files the database file's mode.
        """
        if not self.create and not os.path.exists(self.path):
            raise StoreMissing.at(self.location)
        private_database_file(self.path)


async def _create_schema(db: aiosqlite.Connection, create: bool, where: str) -> int:
    """Create the tables if they are missing (StoreMissing unless ``create``); the stored
    schema version."""
    if not create:
        exists = await _fetchval(
            db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counter'"
        )
        if exists is None:
            raise StoreMissing.at(where)  # an empty file, say: make no tables in it
    await _enable_wal(db)
    # FULL: a commit is on disk (the WAL fsynced) before COMMIT returns.
    await db.execute("PRAGMA synchronous=FULL")
    for statement in SQLITE_TABLES:
        await db.execute(statement)
    version = await _fetchval(db, "PRAGMA user_version")
    if version > SCHEMA_VERSION:
        return version  # a newer release's: not ours to touch
    # In a transaction: another process may be upgrading the same file.
    async with _transaction(db):
        if not await _fetchval(
            db, "SELECT 1 FROM pragma_table_info('counter') WHERE name = 'scheme'"
        ):
            await db.execute(ADD_SCHEME_COLUMN.format(table="counter", type="INTEGER"))
    await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return SCHEMA_VERSION


async def _enable_wal(db: aiosqlite.Connection) -> None:
    # Switching a new file to WAL takes an exclusive lock, and SQLite may refuse it at once
    # (busy handler or not) while another process opens the same new file: try again.
    for attempt in itertools.count():
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt >= WAL_ATTEMPTS:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """A write transaction (the file's write lock from its start), rolled back on any failure."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield
        await db.execute("COMMIT")
    except BaseException:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")
        raise


# asyncpg's fetchrow, fetchval and execute's status, for aiosqlite: the two stores' statements
# read alike.
async def _fetchrow(db: aiosqlite.Connection, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
    async with db.execute(sql, parameters) as cursor:
        return await cursor.fetchone()


async def _fetchval(db: aiosqlite.Connection, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
    row = await _fetchrow(db, sql, parameters)
    return None if row is None else row[0]


async def _fetchall(
    db: aiosqlite.Connection, sql: str, parameters: tuple[Any, ...] = ()
) -> list[Any]:
    async with db.execute(sql, parameters) as cursor:
        return list(await cursor.fetchall())


async def _rowcount(db: aiosqlite.Connection, sql: str, parameters: tuple[Any, ...] = ()) -> int:
    async with db.execute(sql, parameters) as cursor:
        return cursor.rowcount
