"""Where the counter's reservation mark and the permutation key are kept durably.

A store hands out *reservations*: half-open ranges of counter values that are durably marked
as taken before they are returned, so no range is ever handed out twice, even across crashes
and (with a shared database) across hosts.

Two stores sit behind one interface: SQLite (one host, the default) and PostgreSQL (several
hosts sharing one counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import aiosqlite
import asyncpg

from allocator.protocol import (
    COUNTER_LIMIT,
    KEY_BYTES,
    NEW_STORE_SCHEME,
    SCHEME_FEISTEL4,
    KeyMismatch,
    Remembered,
    StoreError,
)
from allocator.store_lock import StoreLock
from config.settings import private_directory, redact_url

# 1: the counter and the key. 2: idempotency keys (created when missing: 1 upgrades in place).
# 3: the key's permutation scheme, a column added when missing; the rows that were already
# there get scheme 1, the only one before it (service/numbers.py).
SCHEMA_VERSION = 3
# Version 3, in both stores, when the column is missing. Every key made before it was used with
# scheme 1; a new key's row names its scheme (NEW_STORE_SCHEME), so the default only ever fills
# older rows.
_ADD_SCHEME_COLUMN = (
    f"ALTER TABLE {{table}} ADD COLUMN scheme {{type}} NOT NULL DEFAULT {SCHEME_FEISTEL4}"
    " CHECK (scheme >= 1)"
)
# Attempts to switch a new SQLite file to WAL while other processes open it too.
WAL_ATTEMPTS = 100

_T = TypeVar("_T")


# Test-only fault injection, for tests/system/test_faults.py; production never sets it.
# TRACKING_FAULT=POINT:FILE makes the allocator SIGKILL itself at POINT of a SQLite reservation
# ("reserve-before-commit" or "reserve-after-commit", that is before granting from it), once
# each time the test creates FILE. Unset, it costs one string comparison per reservation.
_FAULT_POINT, _, _FAULT_TRIGGER = os.environ.get("TRACKING_FAULT", "").partition(":")


def _fault(point: str) -> None:
    if point != _FAULT_POINT:
        return
    try:
        os.unlink(_FAULT_TRIGGER)  # armed once: only one process gets to remove it
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class StoreMissing(StoreError):
    """There is no store holding a key where the configuration says, and none may be created."""


def _missing(where: str) -> StoreMissing:
    return StoreMissing(
        f"there is no store holding a key at {where}, and it is not created implicitly: "
        "restore it, or create it with `run.py --init-store`"
    )


class Store(Protocol):
    kind: str
    # Values per reservation when the operator sets none and the rate asks for less.
    default_step: int
    # Whether open() and load_key() may create a new store. A store created by mistake (a wrong
    # path, a lost volume) restarts the counter at 0; under an operator's key_file, that would
    # issue every earlier number again.
    create: bool
    # True once load_key() has created the store's key (a new store).
    created: bool
    # Where it is, as it may be logged: a path, or the URL without its secrets.
    location: str

    async def open(self) -> None:
        """Connect, and create the schema if it is missing (StoreMissing if ``create`` is off)."""

    async def load_key(self, supplied: bytes | None = None) -> bytes:
        """The permutation key, created at first use (``supplied``, else random bytes).

        Raises KeyMismatch if ``supplied`` differs from the key already stored, and StoreMissing
        if there is none and ``create`` is off.
        """

    async def load_scheme(self) -> int:
        """The permutation scheme the stored key is used with: fixed when the key is made."""

    async def durable_mark(self) -> int:
        """The stored reservation mark: every value below it may have been handed out."""

    async def reserve(self, count: int) -> tuple[int, int]:
        """Durably take ``count`` values and return them as ``(start, stop)``."""

    async def release(self, start: int, stop: int) -> bool:
        """Give back the unused tail ``[start, stop)`` if nobody reserved past it since."""

    async def raise_mark(self, value: int) -> int:
        """Raise the mark to ``value`` if it is lower (never lower it); the mark after."""

    # Idempotency keys. Expiry follows the store's own clock (see docs/reliability.md): the
    # database's for PostgreSQL, so hosts with skewed clocks agree; for SQLite, the wall clock
    # read when the store was opened, advanced by the monotonic clock.

    async def recall(self, key: str, fingerprint: bytes = b"") -> Remembered | None:
        """The live answer remembered under an idempotency key, if there is one.

        ``unaudited`` is True for the one caller with the same ``fingerprint`` that takes over
        an answer whose first delivery was abandoned: it must count and audit it.
        """

    async def remember(
        self, key: str, fingerprint: bytes, response: bytes, ttl: float
    ) -> Remembered:
        """Durably keep ``response`` under ``key`` for ``ttl`` seconds, unless a live answer is
        there already: the answer that stands, ours or the one that was first."""

    async def abandon(self, key: str, response: bytes) -> None:
        """``response``, if it stands under ``key``, never reached its client: the next
        recall with its fingerprint is told so."""

    async def forget_expired(self, limit: int) -> int:
        """Drop at most ``limit`` expired answers (and abandonment marks); how many."""

    async def idempotency_bytes(self) -> int:
        """The bytes of keys, fingerprints and answers kept, expired or not."""

    async def close(self) -> None: ...


class SQLiteStore:
    """The embedded default: one row in a SQLite file, WAL with ``synchronous=FULL``."""

    kind = "sqlite"
    default_step = 100_000

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
            # First: every statement below may meet another process's lock and must wait.
            await self._db.execute("PRAGMA busy_timeout=5000")
            if not self.create:
                async with self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counter'"
                ) as cursor:
                    if await cursor.fetchone() is None:
                        raise _missing(self.location)  # an empty file, say: make no tables in it
            await self._enable_wal(self._db)
            # FULL: a commit is on disk (the WAL fsynced) before COMMIT returns.
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS counter ("
                " id INTEGER PRIMARY KEY CHECK (id = 1),"
                f" reserved INTEGER NOT NULL CHECK (reserved BETWEEN 0 AND {COUNTER_LIMIT}),"
                f" key BLOB NOT NULL CHECK (length(key) = {KEY_BYTES}))"
            )
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS idempotency ("
                " key TEXT PRIMARY KEY,"
                " fingerprint BLOB NOT NULL,"
                " response BLOB NOT NULL,"
                " expires_at REAL NOT NULL)"
            )
            await self._db.execute(
                "CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at)"
            )
            # Answers whose first delivery was abandoned (a table of its own, so that an
            # older release still reads and writes this store's idempotency table).
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS idempotency_unaudited ("
                " key TEXT PRIMARY KEY,"
                " expires_at REAL NOT NULL)"
            )
            async with self._db.execute("PRAGMA user_version") as cursor:
                (version,) = await cursor.fetchone()  # type: ignore[misc]
            if version > SCHEMA_VERSION:
                # Written by a newer release: its meaning is unknown to us, so do not touch it.
                raise StoreError(
                    f"the store's schema version {version} is newer than this release knows "
                    f"({SCHEMA_VERSION})"
                )
            await self._add_scheme_column(self._db)
            await self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except StoreError:
            await self.close()
            raise

    def _private_file(self) -> None:
        """The database file, 0600 in a 0700 directory whatever the umask: it holds the key.

        SQLite gives the -wal and -shm files the database file's mode.
        """
        if not self.create and not os.path.exists(self.path):
            raise _missing(self.location)
        private_directory(os.path.dirname(os.path.abspath(self.path)))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also tightens a file that an older release made 0644
        finally:
            os.close(fd)
        for leftover in (self.path + "-wal", self.path + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(leftover, 0o600)

    @staticmethod
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

    @staticmethod
    async def _add_scheme_column(db: aiosqlite.Connection) -> None:
        # In a transaction: another process may be upgrading the same file.
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute(
                "SELECT 1 FROM pragma_table_info('counter') WHERE name = 'scheme'"
            ) as cursor:
                present = await cursor.fetchone()
            if not present:
                await db.execute(_ADD_SCHEME_COLUMN.format(table="counter", type="INTEGER"))
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def load_key(self, supplied: bytes | None = None) -> bytes:
        db = self._connection()
        try:
            if self.create:
                cursor = await db.execute(
                    "INSERT OR IGNORE INTO counter (id, reserved, key, scheme) VALUES (1, 0, ?, ?)",
                    (supplied or os.urandom(KEY_BYTES), NEW_STORE_SCHEME),
                )
                self.created = cursor.rowcount == 1
            async with db.execute("SELECT key FROM counter WHERE id = 1") as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot load the key: {exc}") from exc
        if row is None:
            raise _missing(self.location)
        (key,) = row
        if supplied is not None and key != supplied:
            raise KeyMismatch("the configured key differs from the key stored with the counter")
        return bytes(key)

    async def load_scheme(self) -> int:
        db = self._connection()
        try:
            async with db.execute("SELECT scheme FROM counter WHERE id = 1") as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot load the key's scheme: {exc}") from exc
        if row is None:
            raise StoreError("the store has no key yet")
        return int(row[0])

    async def durable_mark(self) -> int:
        db = self._connection()
        try:
            async with db.execute("SELECT reserved FROM counter WHERE id = 1") as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the reservation: {exc}") from exc
        return row[0] if row else 0

    async def reserve(self, count: int) -> tuple[int, int]:
        async with self._one_at_a_time.hold(urgent=True):
            return await self._reserve(count)

    async def _reserve(self, count: int) -> tuple[int, int]:
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
                _fault("reserve-before-commit")
                await db.execute("COMMIT")
                _fault("reserve-after-commit")
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
            async with self._one_at_a_time.hold(urgent=True):
                cursor = await db.execute(
                    "UPDATE counter SET reserved = ? WHERE id = 1 AND reserved = ?", (start, stop)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release: {exc}") from exc
        return cursor.rowcount == 1

    async def raise_mark(self, value: int) -> int:
        db = self._connection()
        try:
            async with (
                self._one_at_a_time.hold(urgent=True),
                db.execute(
                    "UPDATE counter SET reserved = MAX(reserved, ?) WHERE id = 1"
                    " RETURNING reserved",
                    (value,),
                ) as cursor,
            ):
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot raise the mark: {exc}") from exc
        if row is None:
            raise StoreError("the store has no counter yet")
        return row[0]

    def _now(self) -> float:
        return time.monotonic() + self._wall_minus_monotonic

    async def recall(self, key: str, fingerprint: bytes = b"") -> Remembered | None:
        db = self._connection()
        try:
            async with self._one_at_a_time.hold(urgent=False):
                async with db.execute(
                    "SELECT i.fingerprint, i.response, u.key IS NOT NULL"
                    " FROM idempotency i LEFT JOIN idempotency_unaudited u"
                    " ON u.key = i.key AND u.expires_at = i.expires_at"
                    " WHERE i.key = ? AND i.expires_at > ?",
                    (key, self._now()),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    return None
                unaudited = False
                if row[2] and bytes(row[0]) == fingerprint:
                    # Whoever deletes the mark audits the answer: one caller only.
                    cursor = await db.execute(
                        "DELETE FROM idempotency_unaudited WHERE key = ?", (key,)
                    )
                    unaudited = cursor.rowcount == 1
        except sqlite3.Error as exc:
            raise StoreError(f"cannot recall an idempotency key: {exc}") from exc
        return Remembered(bytes(row[0]), bytes(row[1]), unaudited)

    async def remember(
        self, key: str, fingerprint: bytes, response: bytes, ttl: float
    ) -> Remembered:
        db = self._connection()
        try:
            async with self._one_at_a_time.hold(urgent=False):
                now = self._now()
                await db.execute("BEGIN IMMEDIATE")
                try:
                    # An expired answer is replaced; a live one stays and is returned.
                    await db.execute(
                        "INSERT INTO idempotency VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
                        " response = excluded.response, expires_at = excluded.expires_at"
                        " WHERE idempotency.expires_at <= ?",
                        (key, fingerprint, response, now + ttl, now),
                    )
                    async with db.execute(
                        "SELECT fingerprint, response FROM idempotency WHERE key = ?", (key,)
                    ) as cursor:
                        row = await cursor.fetchone()
                    await db.execute("COMMIT")
                except BaseException:
                    await _rollback(db)
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remember an idempotency key: {exc}") from exc
        assert row is not None  # just written, in this transaction
        return Remembered(bytes(row[0]), bytes(row[1]))

    async def abandon(self, key: str, response: bytes) -> None:
        db = self._connection()
        try:
            async with self._one_at_a_time.hold(urgent=False):
                await db.execute(
                    "INSERT INTO idempotency_unaudited SELECT key, expires_at FROM idempotency"
                    " WHERE key = ? AND response = ? AND expires_at > ?"
                    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
                    (key, response, self._now()),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot mark an idempotency key abandoned: {exc}") from exc

    async def forget_expired(self, limit: int) -> int:
        db = self._connection()
        deleted = 0
        try:
            for table in ("idempotency", "idempotency_unaudited"):
                async with self._one_at_a_time.hold(urgent=False):
                    cursor = await db.execute(
                        f"DELETE FROM {table} WHERE key IN"
                        f" (SELECT key FROM {table} WHERE expires_at <= ? LIMIT ?)",
                        (self._now(), limit),
                    )
                deleted += cursor.rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot forget expired idempotency keys: {exc}") from exc
        return deleted

    async def idempotency_bytes(self) -> int:
        db = self._connection()
        try:
            async with (
                self._one_at_a_time.hold(urgent=False),
                db.execute(
                    "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(fingerprint)"
                    " + length(response)), 0) FROM idempotency"
                ) as cursor,
            ):
                (total,) = await cursor.fetchone()  # type: ignore[misc]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot measure the idempotency keys: {exc}") from exc
        return int(total)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


async def _rollback(db: aiosqlite.Connection) -> None:
    # The failed statement may already have ended the transaction.
    with contextlib.suppress(sqlite3.Error):
        await db.execute("ROLLBACK")


# --- PostgreSQL: several hosts, one counter -----------------------------------------------------

# A connection attempt that takes longer than this has failed.
CONNECT_TIMEOUT = 5.0
# None of our statements takes long unless something is wrong (a lost network, a synchronous
# standby that does not answer). Past this, asyncpg cancels the statement and the call fails.
STATEMENT_TIMEOUT = 10.0
# After a failed connection attempt, the next one waits this long, doubling up to MAX: while
# the database is down, each call fails at once instead of waiting for a timeout.
RECONNECT_BACKOFF_MIN = 0.25
RECONNECT_BACKOFF_MAX = 5.0

# Every failure of the database or of the way to it. Each one drops the connection: reservations
# are rare, so a fresh connection costs nothing, and one in an unknown state could cost a lot.
_DATABASE_ERRORS = (
    asyncpg.PostgresError,  # the server refused, or hung up ("terminating connection …")
    asyncpg.InterfaceError,  # the connection is closed, or not in the state we expect
    asyncpg.InternalClientError,
    OSError,  # no socket, refused, reset
    TimeoutError,  # CONNECT_TIMEOUT or STATEMENT_TIMEOUT
)

# Settings of every session, sent at connection start so that they win over any database or
# role default.
_SESSION_SETTINGS = {
    # A reservation is granted only after its commit is flushed to disk and, with synchronous
    # replication, acknowledged by the synchronous standbys.
    "synchronous_commit": "on",
    # CREATE TABLE IF NOT EXISTS's notices are noise; warnings are what reserve() watches for.
    "client_min_messages": "warning",
    "application_name": "tracking-allocator",
}

# Hosts starting at once must take turns creating the schema: CREATE TABLE IF NOT EXISTS is not
# safe against itself (it can fail on a duplicate catalog row). The lock id is "tracking".
_SCHEMA_LOCK = int.from_bytes(b"tracking", "big")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tracking_schema (
    id smallint PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
INSERT INTO tracking_schema (id, version) VALUES (1, {SCHEMA_VERSION}) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS tracking_counter (
    id smallint PRIMARY KEY CHECK (id = 1),
    reserved bigint NOT NULL CHECK (reserved BETWEEN 0 AND {COUNTER_LIMIT}),
    key bytea NOT NULL CHECK (length(key) = {KEY_BYTES})
);
"""
# Version 2 (and a version 1 store, upgraded in place).
_IDEMPOTENCY_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking_idempotency (
    key text PRIMARY KEY,
    fingerprint bytea NOT NULL,
    response bytea NOT NULL,
    expires_at double precision NOT NULL
);
"""
# Created when missing, in tables of their own, so that an older release still uses the
# idempotency table of a store this release has opened.
_IDEMPOTENCY_EXTRAS = """
CREATE INDEX IF NOT EXISTS tracking_idempotency_expiry ON tracking_idempotency (expires_at);
CREATE TABLE IF NOT EXISTS tracking_idempotency_unaudited (
    key text PRIMARY KEY,
    expires_at double precision NOT NULL
);
"""
# The idempotency clock: the database's, one for every host.
_PG_NOW = "date_part('epoch', now())"


class PostgresStore:
    """Several hosts share one row in PostgreSQL; one ``UPDATE … RETURNING`` per reservation.

    The URL is anything asyncpg accepts: ``postgresql://USER@HOST:PORT/DB``, a Unix socket as
    ``postgresql:///DB?host=/run/postgresql``, several hosts with ``target_session_attrs``.
    The password comes from the URL, ``PGPASSWORD``, or a password file (``PGPASSFILE``, or
    ``passfile=`` in the URL); it never appears in a message.

    One connection, made again when it breaks: at most one reservation is in flight at a time
    (the Allocator sees to that), so a pool would buy nothing.
    """

    kind = "postgresql"
    # Hosts share one row: a larger step keeps that row cold (see docs/scaling.md).
    default_step = 1_000_000

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = url
        self.create = create
        self.created = False
        self.display_url = self.location = redact_url(url)
        self._db: asyncpg.Connection | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_connect_error = ""
        self._server_warnings: list[str] = []
        # One connection runs one statement at a time; asyncpg refuses a second one.
        self._one_at_a_time = StoreLock()

    async def open(self) -> None:
        version = await self._run(
            "create the schema", lambda db: _create_schema(db, self.create, self.location)
        )
        # A later release migrates older schemas here. A newer one is not ours to touch.
        if version is None or version > SCHEMA_VERSION:
            await self.close()
            raise StoreError(
                f"{self.display_url}: the store's schema version {version} is newer than this "
                f"release knows ({SCHEMA_VERSION})"
                if version is not None
                else f"{self.display_url}: tracking_schema holds no version"
            )

    async def load_key(self, supplied: bytes | None = None) -> bytes:
        async def insert_once_then_read(db: asyncpg.Connection) -> bytes | None:
            if self.create:
                # Hosts starting at once each offer a key; the first insert wins and all read it.
                status = await db.execute(
                    "INSERT INTO tracking_counter (id, reserved, key, scheme) VALUES (1, 0, $1, $2)"
                    " ON CONFLICT (id) DO NOTHING",
                    supplied or os.urandom(KEY_BYTES),
                    NEW_STORE_SCHEME,
                )
                self.created = status == "INSERT 0 1"
            return await db.fetchval("SELECT key FROM tracking_counter WHERE id = 1")

        key = await self._run("load the key", insert_once_then_read)
        if key is None:
            raise _missing(self.location)
        if supplied is not None and key != supplied:
            raise KeyMismatch("the configured key differs from the key stored with the counter")
        return bytes(key)

    async def load_scheme(self) -> int:
        scheme = await self._run(
            "load the key's scheme",
            lambda db: db.fetchval("SELECT scheme FROM tracking_counter WHERE id = 1"),
        )
        if scheme is None:
            raise StoreError("the store has no key yet")
        return int(scheme)

    async def durable_mark(self) -> int:
        mark = await self._run(
            "read the reservation",
            lambda db: db.fetchval("SELECT reserved FROM tracking_counter WHERE id = 1"),
        )
        return mark or 0

    async def reserve(self, count: int) -> tuple[int, int]:
        async def raise_the_mark(db: asyncpg.Connection) -> int | None:
            self._server_warnings.clear()
            # One statement in its own transaction: asyncpg returns its row only at
            # ReadyForQuery, after the commit (and any synchronous standby) has made it durable.
            stop = await db.fetchval(
                "UPDATE tracking_counter SET reserved = reserved + $1"
                " WHERE id = 1 AND reserved + $1 <= $2 RETURNING reserved",
                count,
                COUNTER_LIMIT,
            )
            if self._server_warnings:
                # A commit whose wait for a synchronous standby was cancelled (pg_cancel_backend,
                # say) succeeds with a WARNING: durable here, perhaps not on the standby that a
                # failover would promote. Granting from it could repeat numbers, so it is a
                # failure (a gap). The warning came before the result, and asyncpg queued its
                # listener as it read it, so the listener has run by the time we get here.
                warning = self._server_warnings[0]
                raise StoreError(f"reservation not granted: the server warned: {warning}")
            return stop

        stop = await self._run("reserve", raise_the_mark, urgent=True)
        if stop is None:
            raise StoreError("the counter space is exhausted")
        return stop - count, stop

    async def release(self, start: int, stop: int) -> bool:
        status = await self._run(
            "release",
            lambda db: db.execute(
                "UPDATE tracking_counter SET reserved = $1 WHERE id = 1 AND reserved = $2",
                start,
                stop,
            ),
            urgent=True,
        )
        return status == "UPDATE 1"

    async def raise_mark(self, value: int) -> int:
        after = await self._run(
            "raise the mark",
            lambda db: db.fetchval(
                "UPDATE tracking_counter SET reserved = GREATEST(reserved, $1)"
                " WHERE id = 1 RETURNING reserved",
                value,
            ),
            urgent=True,
        )
        if after is None:
            raise StoreError("the store has no counter yet")
        return after

    async def recall(self, key: str, fingerprint: bytes = b"") -> Remembered | None:
        async def read_then_claim(db: asyncpg.Connection) -> Remembered | None:
            row = await db.fetchrow(
                "SELECT i.fingerprint, i.response, u.key IS NOT NULL"
                " FROM tracking_idempotency i LEFT JOIN tracking_idempotency_unaudited u"
                " ON u.key = i.key AND u.expires_at = i.expires_at"
                f" WHERE i.key = $1 AND i.expires_at > {_PG_NOW}",
                key,
            )
            if row is None:
                return None
            unaudited = False
            if row[2] and bytes(row[0]) == fingerprint:
                # Whoever deletes the mark audits the answer: one caller, on any host.
                status = await db.execute(
                    "DELETE FROM tracking_idempotency_unaudited WHERE key = $1", key
                )
                unaudited = status == "DELETE 1"
            return Remembered(bytes(row[0]), bytes(row[1]), unaudited)

        return await self._run("recall an idempotency key", read_then_claim)

    async def remember(
        self, key: str, fingerprint: bytes, response: bytes, ttl: float
    ) -> Remembered:
        async def insert_then_read(db: asyncpg.Connection) -> asyncpg.Record:
            async with db.transaction():
                # An expired answer is replaced; a live one (another host's too) stays.
                await db.execute(
                    "INSERT INTO tracking_idempotency"
                    f" VALUES ($1, $2, $3, {_PG_NOW} + $4::double precision)"
                    " ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,"
                    " response = excluded.response, expires_at = excluded.expires_at"
                    f" WHERE tracking_idempotency.expires_at <= {_PG_NOW}",
                    key,
                    fingerprint,
                    response,
                    ttl,
                )
                return await db.fetchrow(
                    "SELECT fingerprint, response FROM tracking_idempotency WHERE key = $1", key
                )

        row = await self._run("remember an idempotency key", insert_then_read)
        return Remembered(bytes(row[0]), bytes(row[1]))

    async def abandon(self, key: str, response: bytes) -> None:
        await self._run(
            "mark an idempotency key abandoned",
            lambda db: db.execute(
                "INSERT INTO tracking_idempotency_unaudited"
                " SELECT key, expires_at FROM tracking_idempotency"
                f" WHERE key = $1 AND response = $2 AND expires_at > {_PG_NOW}"
                " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
                key,
                response,
            ),
        )

    async def forget_expired(self, limit: int) -> int:
        deleted = 0
        for table in ("tracking_idempotency", "tracking_idempotency_unaudited"):
            status = await self._run(
                "forget expired idempotency keys",
                lambda db, table=table: db.execute(
                    f"DELETE FROM {table} WHERE key IN"
                    f" (SELECT key FROM {table} WHERE expires_at <= {_PG_NOW} LIMIT $1)",
                    limit,
                ),
            )
            deleted += int(status.split()[-1])
        return deleted

    async def idempotency_bytes(self) -> int:
        total = await self._run(
            "measure the idempotency keys",
            lambda db: db.fetchval(
                "SELECT coalesce(sum(octet_length(key) + octet_length(fingerprint)"
                " + octet_length(response)), 0) FROM tracking_idempotency"
            ),
        )
        return int(total)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await db.close(timeout=CONNECT_TIMEOUT)
            except _DATABASE_ERRORS:
                db.terminate()

    @property
    def retry_in(self) -> float:
        """Seconds until the next connection attempt is allowed (0 when connected)."""
        return max(0.0, self._retry_at - time.monotonic()) if self._db is None else 0.0

    async def _run(
        self,
        action: str,
        statements: Callable[[asyncpg.Connection], Awaitable[_T]],
        *,
        urgent: bool = False,
    ) -> _T:
        """``statements`` on the connection; any database failure is a StoreError.

        ``urgent``: the counter's statements, which go before any idempotency traffic.
        """
        async with self._one_at_a_time.hold(urgent=urgent):
            db = await self._connection(action)
            try:
                return await statements(db)
            except _DATABASE_ERRORS as exc:
                self._drop()
                raise StoreError(f"cannot {action}: {_describe(exc)}") from exc

    async def _connection(self, action: str) -> asyncpg.Connection:
        if self._db is not None:
            if not self._db.is_closed():
                return self._db
            # The server hung up between two calls (a restart, say): reconnect right away.
            self._drop()
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise StoreError(
                f"cannot {action}: {self._last_connect_error} (next attempt in {wait:.1f} s)"
            )
        try:
            db = await asyncpg.connect(
                self.url,
                timeout=CONNECT_TIMEOUT,
                command_timeout=STATEMENT_TIMEOUT,
                server_settings=_SESSION_SETTINGS,
            )
        except (*_DATABASE_ERRORS, ValueError) as exc:  # ValueError: a malformed URL
            raise self._connect_failed(action, _describe(exc)) from exc
        try:
            durability = await db.fetchval("SELECT current_setting('synchronous_commit')")
        except _DATABASE_ERRORS as exc:
            db.terminate()
            raise self._connect_failed(action, _describe(exc)) from exc
        if durability != "on":
            # Something between us and the server (a pooler) dropped the session setting.
            db.terminate()
            raise self._connect_failed(action, f"synchronous_commit is {durability!r}, not 'on'")
        self._backoff = 0.0
        db.add_log_listener(self._on_server_message)
        self._db = db
        return db

    def _connect_failed(self, action: str, reason: str) -> StoreError:
        self._backoff = min(max(2 * self._backoff, RECONNECT_BACKOFF_MIN), RECONNECT_BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff
        self._last_connect_error = f"cannot connect to {self.display_url}: {reason}"
        return StoreError(f"cannot {action}: {self._last_connect_error}")

    def _drop(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.terminate()

    def _on_server_message(
        self, db: asyncpg.Connection, message: asyncpg.PostgresLogMessage
    ) -> None:
        self._server_warnings.append(str(message))


async def _create_schema(db: asyncpg.Connection, create: bool, where: str) -> int | None:
    """Create the tables if they are missing (StoreMissing unless ``create``); the stored
    schema version."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        # Only when missing: a role without CREATE can still use tables a DBA made for it.
        missing = await db.fetchval(
            "SELECT to_regclass('tracking_schema') IS NULL"
            " OR to_regclass('tracking_counter') IS NULL"
        )
        if missing:
            if not create:
                raise _missing(where)
            await db.execute(_SCHEMA)
        version = await db.fetchval("SELECT version FROM tracking_schema WHERE id = 1")
        if version is not None and version > SCHEMA_VERSION:
            return version  # a newer release's: not ours to touch
        if await db.fetchval("SELECT to_regclass('tracking_idempotency') IS NULL"):
            await db.execute(_IDEMPOTENCY_SCHEMA)
        if not await db.fetchval(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tracking_counter'::regclass"
            " AND attname = 'scheme' AND NOT attisdropped)"
        ):
            await db.execute(_ADD_SCHEME_COLUMN.format(table="tracking_counter", type="smallint"))
        if await db.fetchval("SELECT to_regclass('tracking_idempotency_unaudited') IS NULL"):
            await db.execute(_IDEMPOTENCY_EXTRAS)
        if version is not None and version < SCHEMA_VERSION:
            await db.execute("UPDATE tracking_schema SET version = $1 WHERE id = 1", SCHEMA_VERSION)
            version = SCHEMA_VERSION
        return version


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, *, create: bool = True) -> Store:
    """The store for a ``store`` setting (not yet opened); ``create``: see ``Store.create``."""
    prefix = "sqlite:///"
    if url.startswith(prefix):
        return SQLiteStore(url[len(prefix) :], create)
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresStore(url, create)
    raise StoreError(f"unsupported store {redact_url(url)!r}")
