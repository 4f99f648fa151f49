"""Several hosts share one counter: one row in PostgreSQL, one ``UPDATE … RETURNING`` per
reservation.

Same shape as ``sqlite.py``, method for method: every method is statements that ``_run``
runs on the one connection, in turn, with any database failure made a StoreError (and the
connection dropped, to be made again).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from allocator.counter import COUNTER_LIMIT
from allocator.errors import StoreError, StoreMissing
from allocator.series import Series
from allocator.store import (
    Remembered,
    checked_key,
    idempotency_bytes_on_disk,
    offered_row,
    reserved_range,
    series_row,
)
from allocator.store.lock import StoreLock
from allocator.store.schema import (
    ADD_SCHEME_COLUMN,
    POSTGRES_IDEMPOTENCY,
    POSTGRES_IDEMPOTENCY_EXTRAS,
    POSTGRES_SERIES,
    POSTGRES_TABLES,
    SCHEMA_VERSION,
    create_or_check,
)
from config.urls import redact_url

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
DATABASE_ERRORS = (
    asyncpg.PostgresError,  # the server refused, or hung up ("terminating connection …")
    asyncpg.InterfaceError,  # the connection is closed, or not in the state we expect
    asyncpg.InternalClientError,
    OSError,  # no socket, refused, reset
    TimeoutError,  # CONNECT_TIMEOUT or STATEMENT_TIMEOUT
)

# Settings of every session, sent at connection start so that they win over any database or
# role default.
SESSION_SETTINGS = {
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

# The idempotency clock: the database's, one for every host.
_PG_NOW = "date_part('epoch', now())"
# A series made at its first use, with its order and size; a series already made keeps its own
# (hosts making one at once: the first insert wins).
_MAKE_SERIES = (
    "INSERT INTO tracking_series (name, reserved, size, ordering)"
    " VALUES ($1, 0, $2, $3) ON CONFLICT (name) DO NOTHING"
)

_T = TypeVar("_T")


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
    # Measured against the table (test_the_idempotency_bytes_counted_are_what_the_disk_holds):
    # PostgreSQL's row and index headers are larger than SQLite's.
    idempotency_key_overhead = 200

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = url
        self.create = create
        self.created = False
        self.location = redact_url(url)
        self._db: asyncpg.Connection | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_connect_error = ""
        self._server_warnings: list[str] = []
        # One connection runs one statement at a time; asyncpg refuses a second one.
        self._one_at_a_time = StoreLock()

    async def open(self) -> None:
        await create_or_check(
            lambda: self._run(
                "create the schema", lambda db: _create_schema(db, self.create, self.location)
            ),
            self.location,
            self.close,
        )

    async def load_key(self, supplied: bytes | None = None, scheme: int | None = None) -> bytes:
        async def insert_once_then_read(db: asyncpg.Connection) -> asyncpg.Record | None:
            offered = offered_row(self.create, supplied, scheme)
            if offered is not None:
                # Hosts starting at once each offer a key; the first insert wins and all read it.
                status = await db.execute(
                    "INSERT INTO tracking_counter (id, reserved, key, scheme) VALUES (1, 0, $1, $2)"
                    " ON CONFLICT (id) DO NOTHING",
                    *offered,
                )
                self.created = status == "INSERT 0 1"
            return await db.fetchrow("SELECT key, scheme FROM tracking_counter WHERE id = 1")

        row = await self._run("load the key", insert_once_then_read)
        return checked_key(row, supplied, scheme, self.create, self.location)

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
        return reserved_range(stop, count)

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

    async def open_series(self, name: str, order: str, size: int) -> Series:
        async def insert_once_then_read(db: asyncpg.Connection) -> asyncpg.Record | None:
            # Hosts making a series at once: the first insert wins and all read it.
            await db.execute(
                _MAKE_SERIES,
                name,
                size,
                order,
            )
            return await db.fetchrow(
                "SELECT ordering, size, reserved FROM tracking_series WHERE name = $1", name
            )

        return series_row(await self._run("open a series", insert_once_then_read), name)

    async def all_series(self) -> list[Series]:
        rows = await self._run(
            "read the series",
            lambda db: db.fetch(
                "SELECT name, ordering, size, reserved FROM tracking_series ORDER BY name"
            ),
        )
        return [Series(n, o, s, r) for n, o, s, r in rows]

    async def reserve_series(self, name: str, count: int) -> tuple[int, int]:
        async def raise_the_mark(db: asyncpg.Connection) -> tuple[int, int] | None:
            self._server_warnings.clear()
            # The row locked, then raised, in one transaction: its start is the mark we read.
            # The commit returns once durable, as for the default counter (``reserve``).
            async with db.transaction():
                row = await db.fetchrow(
                    "SELECT reserved, size FROM tracking_series WHERE name = $1 FOR UPDATE", name
                )
                if row is None:
                    return None
                start, stop = row[0], min(row[0] + count, row[1])
                await db.execute(
                    "UPDATE tracking_series SET reserved = $2 WHERE name = $1", name, stop
                )
            if self._server_warnings:
                warning = self._server_warnings[0]
                raise StoreError(f"reservation not granted: the server warned: {warning}")
            return start, stop

        taken = await self._run("reserve in a series", raise_the_mark, urgent=True)
        if taken is None:
            raise StoreError(f"the store holds no series {name}")
        return taken

    async def release_series(self, name: str, start: int, stop: int) -> bool:
        status = await self._run(
            "release in a series",
            lambda db: db.execute(
                "UPDATE tracking_series SET reserved = $1 WHERE name = $2 AND reserved = $3",
                start,
                name,
                stop,
            ),
            urgent=True,
        )
        return status == "UPDATE 1"

    async def raise_series_mark(self, name: str, order: str, size: int, value: int) -> Series:
        async def make_or_raise(db: asyncpg.Connection) -> asyncpg.Record | None:
            async with db.transaction():
                await db.execute(
                    _MAKE_SERIES,
                    name,
                    size,
                    order,
                )
                return await db.fetchrow(
                    "UPDATE tracking_series SET reserved = GREATEST(reserved, LEAST($2, size))"
                    " WHERE name = $1 RETURNING ordering, size, reserved",
                    name,
                    value,
                )

        return series_row(await self._run("raise a series' mark", make_or_raise, urgent=True), name)

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
        keys, key_bytes, kept_bytes = await self._run(
            "measure the idempotency keys",
            lambda db: db.fetchrow(
                "SELECT count(*), coalesce(sum(octet_length(key)), 0),"
                " coalesce(sum(octet_length(fingerprint) + octet_length(response)), 0)"
                " FROM tracking_idempotency"
            ),
        )
        return idempotency_bytes_on_disk(keys, key_bytes, kept_bytes, self.idempotency_key_overhead)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await db.close(timeout=CONNECT_TIMEOUT)
            except DATABASE_ERRORS:
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
            except DATABASE_ERRORS as exc:
                self._drop()
                raise StoreError(f"cannot {action}: {describe(exc)}") from exc

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
                server_settings=SESSION_SETTINGS,
            )
        except (*DATABASE_ERRORS, ValueError) as exc:  # ValueError: a malformed URL
            raise self._connect_failed(action, describe(exc)) from exc
        try:
            durability = await db.fetchval("SELECT current_setting('synchronous_commit')")
        except DATABASE_ERRORS as exc:
            db.terminate()
            raise self._connect_failed(action, describe(exc)) from exc
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
        self._last_connect_error = f"cannot connect to {self.location}: {reason}"
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
                raise StoreMissing.at(where)
            await db.execute(POSTGRES_TABLES)
        version = await db.fetchval("SELECT version FROM tracking_schema WHERE id = 1")
        if version is not None and version > SCHEMA_VERSION:
            return version  # a newer release's: not ours to touch
        if await db.fetchval("SELECT to_regclass('tracking_idempotency') IS NULL"):
            await db.execute(POSTGRES_IDEMPOTENCY)
        if not await db.fetchval(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tracking_counter'::regclass"
            " AND attname = 'scheme' AND NOT attisdropped)"
        ):
            await db.execute(ADD_SCHEME_COLUMN.format(table="tracking_counter", type="smallint"))
        if await db.fetchval("SELECT to_regclass('tracking_idempotency_unaudited') IS NULL"):
            await db.execute(POSTGRES_IDEMPOTENCY_EXTRAS)
        if await db.fetchval("SELECT to_regclass('tracking_series') IS NULL"):
            await db.execute(POSTGRES_SERIES)
        if version is not None and version < SCHEMA_VERSION:
            await db.execute("UPDATE tracking_schema SET version = $1 WHERE id = 1", SCHEMA_VERSION)
            version = SCHEMA_VERSION
        return version


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
