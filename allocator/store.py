"""Where the counter's reservation mark and the permutation key are kept durably.

A store hands out *reservations*: half-open ranges of counter values that are durably marked
as taken before they are returned, so no range is ever handed out twice, even across crashes
and (with a shared database) across hosts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Protocol

import aiosqlite

from allocator.protocol import COUNTER_LIMIT, KEY_BYTES, KeyMismatch, StoreError

SCHEMA_VERSION = 1


class Store(Protocol):
    kind: str
    # Values per reservation when the operator sets none and the rate asks for less.
    default_step: int

    async def open(self) -> None:
        """Connect, and create the schema if it is missing."""

    async def load_key(self, supplied: bytes | None = None) -> bytes:
        """The permutation key, created at first use (``supplied``, else random bytes).

        Raises KeyMismatch if ``supplied`` differs from the key already stored.
        """

    async def durable_mark(self) -> int:
        """The stored reservation mark: every value below it may have been handed out."""

    async def reserve(self, count: int) -> tuple[int, int]:
        """Durably take ``count`` values and return them as ``(start, stop)``."""

    async def release(self, start: int, stop: int) -> bool:
        """Give back the unused tail ``[start, stop)`` if nobody reserved past it since."""

    async def close(self) -> None: ...


class SQLiteStore:
    """The embedded default: one row in a SQLite file, WAL with ``synchronous=FULL``."""

    kind = "sqlite"
    default_step = 100_000

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            # isolation_level=None: we open and commit every transaction ourselves.
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk (the WAL fsynced) before COMMIT returns.
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS counter ("
                " id INTEGER PRIMARY KEY CHECK (id = 1),"
                f" reserved INTEGER NOT NULL CHECK (reserved BETWEEN 0 AND {COUNTER_LIMIT}),"
                f" key BLOB NOT NULL CHECK (length(key) = {KEY_BYTES}))"
            )
            await self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def load_key(self, supplied: bytes | None = None) -> bytes:
        db = self._connection()
        try:
            await db.execute(
                "INSERT OR IGNORE INTO counter (id, reserved, key) VALUES (1, 0, ?)",
                (supplied or os.urandom(KEY_BYTES),),
            )
            async with db.execute("SELECT key FROM counter WHERE id = 1") as cursor:
                (key,) = await cursor.fetchone()  # type: ignore[misc]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot load the key: {exc}") from exc
        if supplied is not None and key != supplied:
            raise KeyMismatch("the configured key differs from the key stored with the counter")
        return bytes(key)

    async def durable_mark(self) -> int:
        db = self._connection()
        try:
            async with db.execute("SELECT reserved FROM counter WHERE id = 1") as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the reservation: {exc}") from exc
        return row[0] if row else 0

    async def reserve(self, count: int) -> tuple[int, int]:
        db = self._connection()
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                async with db.execute(
                    "UPDATE counter SET reserved = reserved + ?"
                    " WHERE id = 1 AND reserved + ? <= ? RETURNING reserved",
                    (count, count, COUNTER_LIMIT),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    raise StoreError("the counter space is exhausted")
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot reserve: {exc}") from exc
        stop = row[0]
        return stop - count, stop

    async def release(self, start: int, stop: int) -> bool:
        db = self._connection()
        try:
            cursor = await db.execute(
                "UPDATE counter SET reserved = ? WHERE id = 1 AND reserved = ?", (start, stop)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release: {exc}") from exc
        return cursor.rowcount == 1

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


async def _rollback(db: aiosqlite.Connection) -> None:
    # The failed statement may already have ended the transaction.
    with contextlib.suppress(sqlite3.Error):
        await db.execute("ROLLBACK")


def open_store(url: str) -> Store:
    """The store for a ``store`` setting (not yet opened)."""
    prefix = "sqlite:///"
    if url.startswith(prefix):
        return SQLiteStore(url[len(prefix) :])
    raise StoreError(f"unsupported store {url!r}")
