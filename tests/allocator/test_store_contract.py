"""The store contract: what every store (SQLite, PostgreSQL) promises the allocator.

The contract tests run against both stores. The PostgreSQL ones need a server
(``source .ci/postgres.sh``): without one they skip, and under CI they fail. Each test gets a
database of its own. PostgreSQL's own behaviour (schema version, session durability,
connection loss, passwords) is at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from allocator.actor import STORE_RETRY_DELAY, Allocator
from allocator.counter import (
    COUNTER_LIMIT,
    KNOWN_SCHEMES,
    NEW_STORE_SCHEME,
    SCHEME_FEISTEL4,
    SCHEME_FEISTEL10,
)
from allocator.errors import KeyMismatch, SchemeNotNamed, StoreError, StoreMissing
from allocator.series import Series
from allocator.store import Remembered, Store, idempotency_bytes_on_disk, open_store
from allocator.store import postgres as store_module
from allocator.store.postgres import PostgresStore
from allocator.store.schema import SCHEMA_VERSION
from allocator.store.sqlite import SQLiteStore
from tests.allocator.old_stores import make_a_store_from_before_schemes
from tests.system.conftest import REPO, PostgresServer, missing_server

KINDS = ["sqlite", "postgresql"]


class Locations:
    """Fresh, empty places for a store of one kind, and the stores opened on them.

    Everything is closed and dropped after the test, even when it fails.
    """

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self._tmp = tmp
        self.server = PostgresServer.from_environment() if kind == "postgresql" else None
        self._databases: list[str] = []
        self._stores: list[Store] = []

    async def new(self) -> str:
        """The URL of a new, empty store location."""
        if self.server is None:
            return f"sqlite:///{self._tmp}/{uuid.uuid4().hex[:8]}/tracking.sqlite3"
        name = await self.server.create_database()
        self._databases.append(name)
        return self.server.database_url(name)

    async def open(self, url: str, *, create: bool = True) -> Store:
        store = open_store(url, create=create)
        self._stores.append(store)
        await store.open()
        return store

    async def holds_anything(self, url: str) -> bool:
        """Whether anything of a store (a file, a table) exists at ``url``."""
        if self.server is None:
            return Path(url.removeprefix("sqlite:///")).parent.exists()
        connection = await asyncpg.connect(url, timeout=10)
        try:
            return bool(
                await connection.fetchval(
                    "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tracking%'"
                )
            )
        finally:
            await connection.close()

    async def bytes_on_disk(self, url: str) -> int:
        """What the store's files hold: SQLite's pages once the WAL is checkpointed into the
        file; PostgreSQL's idempotency table, its indexes and its TOAST table."""
        if self.server is None:
            db = sqlite3.connect(url.removeprefix("sqlite:///"))
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                (pages,) = db.execute("PRAGMA page_count").fetchone()
                (page_size,) = db.execute("PRAGMA page_size").fetchone()
                return pages * page_size
            finally:
                db.close()
        connection = await asyncpg.connect(url, timeout=10)
        try:
            # Main forks only: a free-space map that autovacuum may add meanwhile is no row's.
            return await connection.fetchval(
                "SELECT sum(pg_relation_size(c.oid)) FROM pg_class c, pg_class t"
                " WHERE t.relname = 'tracking_idempotency' AND (c.oid IN (t.oid, t.reltoastrelid)"
                " OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = t.oid))"
            )
        finally:
            await connection.close()

    async def cleanup(self) -> None:
        for store in self._stores:
            await store.close()
        if self.server is not None:
            for name in self._databases:
                await self.server.drop_database(name)


@pytest.fixture(params=KINDS)
async def locations(request: pytest.FixtureRequest, short_tmp: Path) -> AsyncIterator[Locations]:
    made = Locations(request.param, short_tmp)
    yield made
    await made.cleanup()


@pytest.fixture
async def url(locations: Locations) -> str:
    return await locations.new()


async def test_a_reservation_survives_closing_and_reopening(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    await store.load_key()
    assert await store.reserve(1000) == (0, 1000)
    assert await store.reserve(500) == (1000, 1500)
    await store.close()

    reopened = await locations.open(url)
    assert await reopened.durable_mark() == 1500
    assert await reopened.reserve(10) == (1500, 1510)


async def test_the_key_is_made_once_and_never_changes(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    key = await store.load_key()
    assert len(key) == 32
    await store.close()

    reopened = await locations.open(url)
    assert await reopened.load_key() == key
    assert await reopened.load_key() == key


async def test_two_fresh_stores_get_different_keys(locations: Locations) -> None:
    first = await locations.open(await locations.new())
    second = await locations.open(await locations.new())
    assert await first.load_key() != await second.load_key()


async def test_a_supplied_key_is_stored_at_first_use(locations: Locations, url: str) -> None:
    supplied = bytes(range(32))
    store = await locations.open(url)
    assert await store.load_key(supplied, NEW_STORE_SCHEME) == supplied
    await store.close()

    reopened = await locations.open(url)
    assert await reopened.load_key() == supplied


async def test_a_supplied_key_that_differs_from_the_stored_one_is_refused(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    stored = await store.load_key()
    with pytest.raises(KeyMismatch):
        await store.load_key(bytes(32))
    assert await store.load_key() == stored


async def test_a_store_that_may_not_create_refuses_a_missing_store_and_makes_nothing(
    locations: Locations, url: str
) -> None:
    # Refused at open already: no file, no table is made for a store that is not there.
    with pytest.raises(StoreMissing, match="--init-store"):
        await locations.open(url, create=False)
    assert not await locations.holds_anything(url)

    # The same location is still new to a store that may create one.
    creating = await locations.open(url)
    assert not creating.created
    await creating.load_key()
    assert creating.created


async def test_a_store_that_may_not_create_refuses_a_schema_without_a_key(
    locations: Locations, url: str
) -> None:
    # Tables but no counter: an interrupted first start, or a DBA who made the tables.
    await (await locations.open(url)).close()
    store = await locations.open(url, create=False)
    with pytest.raises(StoreMissing):
        await store.load_key(bytes(32))
    with pytest.raises(StoreMissing):
        await store.load_key()
    assert not store.created


async def test_a_store_that_may_not_create_uses_an_existing_one_and_checks_its_key(
    locations: Locations, url: str
) -> None:
    supplied = bytes(range(32))
    first = await locations.open(url)
    await first.load_key(supplied, NEW_STORE_SCHEME)
    assert first.created
    await first.reserve(1000)
    await first.close()

    store = await locations.open(url, create=False)
    assert await store.load_key(supplied) == supplied
    assert not store.created
    with pytest.raises(KeyMismatch):
        await store.load_key(bytes(32))
    assert await store.reserve(10) == (1000, 1010)


async def test_a_new_store_records_the_new_scheme_with_a_random_key(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    key = await store.load_key()
    assert await store.load_scheme() == NEW_STORE_SCHEME
    await store.close()

    reopened = await locations.open(url)
    assert await reopened.load_key() == key
    assert await reopened.load_scheme() == NEW_STORE_SCHEME


@pytest.mark.parametrize("scheme", KNOWN_SCHEMES)
async def test_a_supplied_key_makes_a_store_with_the_scheme_supplied_with_it(
    locations: Locations, url: str, scheme: int
) -> None:
    """The scheme belongs to the key: a store rebuilt under an old key keeps its numbers."""
    supplied = bytes(range(32))
    store = await locations.open(url)
    assert await store.load_key(supplied, scheme) == supplied
    assert store.created
    assert await store.load_scheme() == scheme
    await store.close()

    reopened = await locations.open(url)
    assert await reopened.load_key(supplied, scheme) == supplied
    assert await reopened.load_scheme() == scheme


async def test_a_supplied_key_without_its_scheme_never_makes_a_store(
    locations: Locations, url: str
) -> None:
    """Guessing the newest scheme would give an old key's counters other numbers."""
    store = await locations.open(url)
    with pytest.raises(SchemeNotNamed, match="scheme=N"):
        await store.load_key(bytes(range(32)))
    assert not store.created
    with pytest.raises(StoreError, match="no key"):
        await store.load_scheme()


async def test_a_supplied_scheme_that_differs_from_the_stored_one_is_refused(
    locations: Locations, url: str
) -> None:
    supplied = bytes(range(32))
    store = await locations.open(url)
    await store.load_key(supplied, SCHEME_FEISTEL4)
    with pytest.raises(KeyMismatch, match="scheme"):
        await store.load_key(supplied, SCHEME_FEISTEL10)
    # A key without its scheme takes the stored one, on a store that may or may not create.
    assert await store.load_key(supplied) == supplied
    await store.close()
    existing = await locations.open(url, create=False)
    assert await existing.load_key(supplied) == supplied
    with pytest.raises(KeyMismatch, match="scheme"):
        await existing.load_key(supplied, SCHEME_FEISTEL10)
    assert await existing.load_scheme() == SCHEME_FEISTEL4


async def test_a_store_made_before_the_scheme_keeps_its_key_its_mark_and_four_rounds(
    locations: Locations, url: str
) -> None:
    old_key = bytes(range(100, 132))
    await make_a_store_from_before_schemes(url, old_key, mark=5000)
    store = await locations.open(url)
    assert await store.load_key() == old_key
    assert await store.load_scheme() == SCHEME_FEISTEL4
    assert await store.reserve(10) == (5000, 5010)
    await store.close()

    # Upgraded once, it stays so: opening it again keeps its scheme.
    reopened = await locations.open(url)
    assert await reopened.load_key() == old_key
    assert await reopened.load_scheme() == SCHEME_FEISTEL4


async def test_release_gives_back_only_an_untouched_tail(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    await store.load_key()
    await store.reserve(1000)
    assert await store.release(400, 1000) is True
    assert await store.durable_mark() == 400
    # Somebody reserved past it since: the mark must not move back.
    await store.reserve(100)
    assert await store.release(450, 500) is True
    assert await store.durable_mark() == 450
    assert await store.release(0, 1000) is False
    assert await store.durable_mark() == 450


async def test_release_fails_when_another_store_reserved_in_between(
    locations: Locations, url: str
) -> None:
    ours = await locations.open(url)
    theirs = await locations.open(url)
    await ours.load_key()
    start, stop = await ours.reserve(100)
    await theirs.reserve(50)  # another host, after us
    assert await ours.release(start + 10, stop) is False
    assert await theirs.durable_mark() == 150


async def test_the_counter_space_cannot_be_overrun(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    await store.load_key()
    await store.reserve(COUNTER_LIMIT - 10)
    with pytest.raises(StoreError, match="exhausted"):
        await store.reserve(11)
    assert await store.reserve(10) == (COUNTER_LIMIT - 10, COUNTER_LIMIT)
    with pytest.raises(StoreError, match="exhausted"):
        await store.reserve(1)


async def test_raise_mark_raises_the_mark_and_never_lowers_it(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.load_key()
    await store.reserve(100)
    assert await store.raise_mark(5000) == 5000
    assert await store.raise_mark(10) == 5000
    assert await store.reserve(1) == (5000, 5001)


async def test_concurrent_reservers_get_monotonic_disjoint_ranges(
    locations: Locations, url: str
) -> None:
    """Several stores (hosts) on one fresh location: opened, keyed and reserving at once."""
    stores = await asyncio.gather(*(locations.open(url) for _ in range(4)))
    keys = await asyncio.gather(*(store.load_key() for store in stores))
    assert len(set(keys)) == 1  # one key wins, everyone reads it
    counts = [1, 7, 1000, 3, 250, 64, 10_000, 2]

    async def reserve_many(store: Store) -> list[tuple[int, int]]:
        return [await store.reserve(count) for count in counts * 3]

    per_store = await asyncio.gather(*(reserve_many(store) for store in stores))

    for ranges in per_store:
        assert [stop - start for start, stop in ranges] == counts * 3
        # Each store's own reservations only ever move up.
        assert all(a_stop <= b_start for (_, a_stop), (b_start, _) in itertools.pairwise(ranges))
    everything = sorted(r for ranges in per_store for r in ranges)
    # Disjoint and, with no crash, without a gap: together they tile [0, mark) exactly.
    assert all(a_stop == b_start for (_, a_stop), (b_start, _) in itertools.pairwise(everything))
    mark = await stores[0].durable_mark()
    assert everything[0][0] == 0
    assert everything[-1][1] == mark == 4 * 3 * sum(counts)


async def test_an_answer_is_kept_under_its_key_until_it_expires(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.load_key()
    assert await store.recall("k-1") is None
    kept = await store.remember("k-1", b"print", b'{"a":1}', ttl=0.5)
    assert kept == Remembered(b"print", b'{"a":1}')
    await store.close()

    reopened = await locations.open(url)  # kept durably
    assert await reopened.recall("k-1") == Remembered(b"print", b'{"a":1}')
    assert await reopened.recall("k-2") is None
    await until_expired(reopened, "k-1")


async def test_a_live_answer_is_never_replaced_but_an_expired_one_is(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.load_key()
    first = await store.remember("k", b"one", b"first", ttl=0.3)
    # A racing twin, or another host: the first answer stands and comes back.
    assert await store.remember("k", b"two", b"second", ttl=3600) == first
    await until_expired(store, "k")
    assert await store.remember("k", b"two", b"second", ttl=0.3) == (Remembered(b"two", b"second"))
    assert await store.forget_expired(limit=10) == 0  # not yet expired
    await until_expired(store, "k")
    assert await store.forget_expired(limit=10) == 1
    assert await store.idempotency_bytes() == 0


async def until_expired(store: Store, key: str) -> None:
    """Wait (by the store's own clock) until the answer under ``key`` has expired."""
    deadline = time.monotonic() + 10
    while await store.recall(key) is not None:
        assert time.monotonic() < deadline, "never expired"
        await asyncio.sleep(0.02)


async def test_expiry_follows_the_stores_clock_not_the_process_wall_clock(
    locations: Locations, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await locations.open(url)
    await store.load_key()
    await store.remember("k", b"print", b"answer", ttl=3600)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 2 * 86400)  # an NTP step, two days on
    assert await store.recall("k") == Remembered(b"print", b"answer")
    assert await store.forget_expired(limit=10) == 0


async def test_an_abandoned_answer_is_handed_over_once_to_its_own_request(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.load_key()
    await store.remember("k", b"print", b"answer", ttl=3600)
    await store.abandon("k", b"another answer")  # a racing twin's, which does not stand
    await store.abandon("missing", b"answer")
    assert await store.recall("k", b"print") == Remembered(b"print", b"answer", False)

    await store.abandon("k", b"answer")
    assert await store.recall("k", b"other") == Remembered(b"print", b"answer", False)
    assert await store.recall("k", b"print") == Remembered(b"print", b"answer", True)
    assert await store.recall("k", b"print") == Remembered(b"print", b"answer", False)


async def test_expired_answers_are_forgotten_in_batches(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    await store.load_key()
    for n in range(7):
        await store.remember(f"k-{n}", b"print", b"answer", ttl=0.05)
    await store.remember("live", b"print", b"kept", ttl=3600)
    per_key = store.idempotency_key_overhead
    # Keys, then fingerprints and answers: 7 * 3 + 4, then 7 * (5 + 6) + (5 + 4).
    assert await store.idempotency_bytes() == idempotency_bytes_on_disk(8, 25, 86, per_key)
    await until_expired(store, "k-6")
    assert [await store.forget_expired(limit=3) for _ in range(4)] == [3, 3, 1, 0]
    assert await store.recall("live") == Remembered(b"print", b"kept")
    assert await store.idempotency_bytes() == idempotency_bytes_on_disk(1, 4, 9, per_key)


@pytest.mark.parametrize("key_length", [36, 255])  # a UUID, and the longest key there can be
async def test_the_idempotency_bytes_counted_are_what_the_disk_holds(
    locations: Locations, url: str, key_length: int
) -> None:
    store = await locations.open(url)
    await store.load_key()
    before = await locations.bytes_on_disk(url)
    draw = random.Random(key_length)  # the same keys every run, in no order
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz-"
    for _ in range(1000):
        key = "".join(draw.choices(alphabet, k=key_length))
        number = "".join(draw.choices(alphabet[:36], k=11)).upper()
        # An answer of one number, as the service keeps it.
        answer = (
            f'{{"tracking_number":"MYID{number}X","created_at":"2018-11-20T19:29:32+08:00",'
            f'"correlation_id":"{uuid.UUID(int=draw.getrandbits(128))}","request_metadata":'
            '{"origin_country":"MY","destination_country":"ID","weight_kg":"1.234",'
            '"customer_slug":"redbox-logistics"}}'
        ).encode()
        await store.remember(key, draw.randbytes(32), answer, ttl=3600)
    grown = await locations.bytes_on_disk(url) - before
    assert 0.85 < await store.idempotency_bytes() / grown < 1.15


async def test_a_reservation_does_not_wait_behind_idempotency_traffic(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.load_key()
    done = 0

    async def remember(n: int) -> None:
        nonlocal done
        await store.remember(f"k-{n}", b"print", b"answer", ttl=3600)
        done += 1

    storm = [asyncio.create_task(remember(n)) for n in range(100)]
    await asyncio.sleep(0)  # every one of them now waits for the connection
    await store.reserve(10)
    # At most the one statement that held the connection went first, not the queue.
    assert done <= 1
    await asyncio.gather(*storm)
    assert done == 100


def test_open_store_chooses_the_store_by_url() -> None:
    assert isinstance(open_store("sqlite:////var/lib/tracking/t.sqlite3"), SQLiteStore)
    for url in (
        "postgresql://tracking@db.example/tracking",
        "postgres://tracking@db.example:5433/tracking",
        "postgresql:///tracking?host=/run/postgresql",
    ):
        store = open_store(url)
        assert isinstance(store, PostgresStore), url
        assert store.kind == "postgresql"
    # Hosts share one row: PostgreSQL reserves more per write than SQLite.
    assert PostgresStore.default_step > SQLiteStore.default_step
    with pytest.raises(StoreError) as info:
        open_store("mysql://user:hunter2@db/tracking")
    assert "hunter2" not in str(info.value)


# --- PostgreSQL only ---------------------------------------------------------------------------


@pytest.fixture
async def database(server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database's name."""
    name = await server.create_database()
    yield name
    await server.drop_database(name)


@pytest.fixture
async def admin(server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    connection = await server.admin()
    yield connection
    await connection.close()


@pytest.fixture
async def pg_store(server: PostgresServer, database: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(server.database_url(database))
    await store.open()
    await store.load_key()
    yield store
    await store.close()


async def backend_pid(admin: asyncpg.Connection, database: str) -> int:
    """The server process of the store connected to ``database`` (one per test database)."""
    pid = await admin.fetchval(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'tracking-allocator'",
        database,
    )
    assert pid is not None, "the store is not connected"
    return pid


async def until_waiting(
    admin: asyncpg.Connection, pid: int, wait: str, unless: asyncio.Task[object] | None = None
) -> None:
    """Return once the server process ``pid`` waits on ``wait`` (or ``unless`` is done)."""
    # Polling: what a server process waits on shows only in pg_stat_activity.
    while not (unless is not None and unless.done()) and not await admin.fetchval(  # noqa: ASYNC110
        "SELECT $2 IN (wait_event_type, wait_event) FROM pg_stat_activity WHERE pid = $1",
        pid,
        wait,
    ):
        await asyncio.sleep(0.01)


async def stored_mark(server: PostgresServer, database: str) -> int:
    """The mark as committed, read over a connection of our own."""
    connection = await asyncpg.connect(server.database_url(database))
    try:
        return await connection.fetchval("SELECT reserved FROM tracking_counter")
    finally:
        await connection.close()


async def test_the_schema_version_is_kept_in_the_database_and_a_newer_one_is_refused(
    server: PostgresServer, database: str, pg_store: PostgresStore
) -> None:
    url = server.database_url(database)
    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("SELECT version FROM tracking_schema") == SCHEMA_VERSION
        # Opening again changes nothing: the schema is made once.
        again = PostgresStore(url)
        await again.open()
        await again.close()
        assert await connection.fetchval("SELECT count(*) FROM tracking_schema") == 1

        await connection.execute("UPDATE tracking_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await connection.close()
    newer = PostgresStore(url)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        await newer.open()


async def test_a_version_1_database_is_upgraded_in_place(
    server: PostgresServer, database: str, pg_store: PostgresStore
) -> None:
    url = server.database_url(database)
    await pg_store.load_key()
    connection = await asyncpg.connect(url)
    try:
        # What version 1 was: the counter alone.
        await connection.execute("DROP TABLE tracking_idempotency")
        await connection.execute("UPDATE tracking_schema SET version = 1")
        upgraded = PostgresStore(url)
        await upgraded.open()
        assert await upgraded.recall("k") is None
        await upgraded.close()
        assert await connection.fetchval("SELECT version FROM tracking_schema") == SCHEMA_VERSION
    finally:
        await connection.close()


async def test_the_session_commits_synchronously_whatever_the_database_default(
    server: PostgresServer, database: str, admin: asyncpg.Connection
) -> None:
    await admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    store = PostgresStore(server.database_url(database))
    await store.open()
    try:
        assert store._db is not None
        assert await store._db.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await store.close()


async def test_a_connection_cut_mid_reservation_is_a_store_error_and_the_next_call_reconnects(
    server: PostgresServer, database: str, admin: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    first = await pg_store.reserve(100)
    locker = await asyncpg.connect(server.database_url(database))
    try:
        # Hold the row, so that the next reservation waits on it, then cut its connection.
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("SELECT 1 FROM tracking_counter FOR UPDATE")
        reserving = asyncio.create_task(pg_store.reserve(100))
        pid = await backend_pid(admin, database)
        async with asyncio.timeout(10):
            await until_waiting(admin, pid, "Lock")
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreError, match="cannot reserve"):
            await reserving
        await transaction.rollback()
    finally:
        await locker.close()

    assert await stored_mark(server, database) == first[1]
    start, _ = await pg_store.reserve(100)
    assert start == first[1]


async def test_while_connections_are_refused_the_store_backs_off_then_recovers(
    database: str,
    admin: asyncpg.Connection,
    pg_store: PostgresStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A first back-off long enough that a loaded machine cannot let it run out between the
    # failure that starts it and the call that must find it still running.
    monkeypatch.setattr(store_module, "RECONNECT_BACKOFF_MIN", 1.0)
    attempts = 0
    connect = asyncpg.connect

    async def counted_connect(*args: object, **kwargs: object) -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        return await connect(*args, **kwargs)

    monkeypatch.setattr(store_module.asyncpg, "connect", counted_connect)
    await pg_store.reserve(10)
    await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    await admin.execute("SELECT pg_terminate_backend($1)", await backend_pid(admin, database))
    try:
        failures = []
        # The first call finds the connection gone; the next ones cannot make a new one.
        async with asyncio.timeout(10):
            while pg_store.retry_in == 0:
                with pytest.raises(StoreError) as info:
                    await pg_store.reserve(10)
                failures.append(str(info.value))
        first_wait = pg_store.retry_in
        assert 0 < first_wait <= store_module.RECONNECT_BACKOFF_MIN
        assert "not currently accepting connections" in failures[-1]

        # Inside the back-off, a call fails at once without trying the database.
        tried = attempts
        with pytest.raises(StoreError, match="next attempt in"):
            await pg_store.reserve(10)
        assert attempts == tried

        # Each failed attempt doubles the wait.
        await asyncio.sleep(pg_store.retry_in)
        with pytest.raises(StoreError, match="not currently accepting connections"):
            await pg_store.reserve(10)
        assert pg_store.retry_in > first_wait
    finally:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")

    await asyncio.sleep(pg_store.retry_in)
    start, stop = await pg_store.reserve(10)
    assert (start, stop) == (10, 20)
    assert pg_store.retry_in == 0


async def lease_until_refused(allocator: Allocator, count: int) -> list[tuple[int, int]]:
    """Every block granted until the first refusal (which must come)."""
    granted = []
    for _ in range(1000):
        try:
            granted.append(await allocator.lease(count))
        except StoreError:
            return granted
    raise AssertionError("the allocator never refused")


async def test_during_an_outage_the_allocator_grants_only_what_is_durable_then_recovers(
    server: PostgresServer, database: str, admin: asyncpg.Connection
) -> None:
    allocator = Allocator(PostgresStore(server.database_url(database)), reserve_step=100)
    await allocator.start()
    try:
        await allocator.lease(10)
        await asyncio.sleep(0.1)  # let any background reservation land
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend($1)", await backend_pid(admin, database))
        try:
            granted = await lease_until_refused(allocator, 30)
        finally:
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        mark = await stored_mark(server, database)
        assert granted, "what was already reserved is still granted"
        assert all(stop <= mark for _, stop in granted)

        # Recovery needs nothing from outside: leases flow again once a retry is due.
        async with asyncio.timeout(STORE_RETRY_DELAY + store_module.RECONNECT_BACKOFF_MAX + 5):
            while True:
                try:
                    start, stop = await allocator.lease(30)
                    break
                except StoreError:
                    await asyncio.sleep(0.1)
        assert start >= granted[-1][1]
        assert stop <= await stored_mark(server, database)
    finally:
        await allocator.stop()


async def test_a_password_from_a_password_file_is_used_and_a_url_password_is_never_shown(
    server: PostgresServer, admin: asyncpg.Connection, short_tmp: Path
) -> None:
    role = f"tn_role_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    database = f"tn_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    # Owner of its database, so it may create the schema (PostgreSQL 15 grants no CREATE on
    # the public schema to others).
    await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
    try:
        url = server.database_url(database, user=role)
        try:
            await (await asyncpg.connect(url)).close()
        except asyncpg.InvalidAuthorizationSpecificationError:
            pass  # as it should: the role must give its password
        else:
            missing_server("the server does not ask this role for a password")

        passfile = short_tmp / "pgpass"
        passfile.write_text(f"*:*:*:{role}:{password}\n")
        passfile.chmod(0o600)  # or asyncpg ignores it, as libpq does
        with_passfile = PostgresStore(f"{url}{'&' if '?' in url else '?'}passfile={passfile}")
        await with_passfile.open()
        await with_passfile.load_key()
        assert await with_passfile.reserve(5) == (0, 5)
        await with_passfile.close()

        wrong = PostgresStore(server.database_url(database, user=f"{role}:hunter2-{password}"))
        with pytest.raises(StoreError) as info:
            await wrong.open()
        assert "hunter2" not in str(info.value)
        assert f"{role}:***@" in str(info.value)
        assert "password authentication failed" in str(info.value)
    finally:
        await server.drop_database(database)
        await admin.execute(f"DROP ROLE {role}")


async def test_a_reservation_whose_wait_for_a_synchronous_standby_was_cancelled_is_refused(
    database: str, admin: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    """Cancelled while waiting for a standby, a commit succeeds with a WARNING: committed here,
    maybe not on the standby a failover would promote. It must not be granted from."""
    # A cluster-wide setting: only on a server that is ours to break (.ci/postgres.sh's).
    PostgresServer.from_environment(restartable=True)
    before = await pg_store.reserve(10)
    # A synchronous standby that never answers: every commit waits for it.
    await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'tn_absent_standby'")
    await admin.execute("SELECT pg_reload_conf()")
    try:
        # The setting reaches the backends a little later: until then reservations go through.
        async with asyncio.timeout(30):
            while True:
                reserving = asyncio.create_task(pg_store.reserve(10))
                pid = await backend_pid(admin, database)
                await until_waiting(admin, pid, "SyncRep", unless=reserving)
                if not reserving.done():
                    break
                before = reserving.result()
        await admin.execute("SELECT pg_cancel_backend($1)", pid)
        with pytest.raises(StoreError, match="warned"):
            await reserving
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")

    # The cancelled reservation is a gap: the next one starts after it, never inside it.
    async with asyncio.timeout(30):
        while True:
            try:
                start, _ = await pg_store.reserve(10)
                break
            except StoreError:  # the reload has not reached the checkpointer yet
                await asyncio.sleep(0.1)
    assert start >= before[1] + 10


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [pytest.param("true", "1 error", id="ci"), pytest.param(None, "1 skipped", id="local")],
)
def test_without_a_server_postgresql_tests_skip_locally_and_fail_under_ci(
    ci: str | None, outcome: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_TEST_POSTGRES")}
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    test = f"{__file__}::test_the_session_commits_synchronously_whatever_the_database_default"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert outcome in result.stdout, result.stdout
    assert (result.returncode != 0) == (ci is not None), result.stdout
    if ci is not None:
        assert "CI is set but TRACKING_TEST_POSTGRES_URL is not set" in result.stdout


# --- Named counters: the S10 series (allocator/series.py) ------------------------------------


async def test_a_series_is_a_counter_of_its_own_beside_the_default_one(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.load_key()
    await store.reserve(1000)
    assert await store.open_series("s10:RR:GB", "permuted", 10**8) == Series(
        "s10:RR:GB", "permuted", 10**8, 0
    )
    assert await store.reserve_series("s10:RR:GB", 50) == (0, 50)
    assert await store.reserve_series("s10:RR:GB", 50) == (50, 100)
    await store.open_series("s10:EE:FR", "permuted", 10**8)
    assert await store.reserve_series("s10:EE:FR", 7) == (0, 7)
    assert await store.durable_mark() == 1000
    await store.close()

    reopened = await locations.open(url)
    assert await reopened.all_series() == [
        Series("s10:EE:FR", "permuted", 10**8, 7),
        Series("s10:RR:GB", "permuted", 10**8, 100),
    ]
    assert await reopened.reserve_series("s10:RR:GB", 1) == (100, 101)
    assert await reopened.reserve(1) == (1000, 1001)


async def test_a_series_keeps_the_order_and_size_it_was_made_with(
    locations: Locations, url: str
) -> None:
    first = await locations.open(url)
    second = await locations.open(url)  # another host
    assert (await first.open_series("s10:RR:GB", "sequential", 100)).order == "sequential"
    assert await second.open_series("s10:RR:GB", "permuted", 10**8) == Series(
        "s10:RR:GB", "sequential", 100, 0
    )


async def test_a_series_grants_up_to_its_size_then_nothing(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    await store.open_series("s10:RR:GB", "permuted", 100)
    assert await store.reserve_series("s10:RR:GB", 60) == (0, 60)
    assert await store.reserve_series("s10:RR:GB", 60) == (60, 100)
    assert await store.reserve_series("s10:RR:GB", 60) == (100, 100)
    assert (await store.all_series())[0].reserved == 100


async def test_reservations_of_a_series_from_two_stores_never_overlap(
    locations: Locations, url: str
) -> None:
    stores = [await locations.open(url) for _ in range(2)]
    await stores[0].open_series("s10:RR:GB", "permuted", 1000)
    taken = await asyncio.gather(
        *(stores[i % 2].reserve_series("s10:RR:GB", 7) for i in range(200))
    )
    values = [v for start, stop in taken for v in range(start, stop)]
    assert sorted(values) == list(range(1000))


async def test_a_series_releases_only_an_untouched_tail(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    await store.open_series("s10:RR:GB", "permuted", 10**8)
    await store.reserve_series("s10:RR:GB", 100)
    assert await store.release_series("s10:RR:GB", 40, 100) is True
    assert await store.reserve_series("s10:RR:GB", 10) == (40, 50)
    assert await store.release_series("s10:RR:GB", 0, 40) is False


async def test_reserving_in_a_series_never_made_is_an_error(locations: Locations, url: str) -> None:
    store = await locations.open(url)
    with pytest.raises(StoreError, match="no series"):
        await store.reserve_series("s10:RR:GB", 1)


async def test_a_series_mark_is_raised_never_lowered_nor_past_its_size(
    locations: Locations, url: str
) -> None:
    store = await locations.open(url)
    await store.open_series("s10:RR:GB", "sequential", 1000)
    await store.reserve_series("s10:RR:GB", 100)
    assert await store.raise_series_mark("s10:RR:GB", "permuted", 10**8, 500) == Series(
        "s10:RR:GB", "sequential", 1000, 500
    )
    assert (await store.raise_series_mark("s10:RR:GB", "permuted", 10**8, 50)).reserved == 500
    assert (await store.raise_series_mark("s10:RR:GB", "permuted", 10**8, 5000)).reserved == 1000
    # A series the store does not hold (made after a backup) is made, with the mark.
    assert await store.raise_series_mark("s10:EE:FR", "permuted", 10**8, 70) == Series(
        "s10:EE:FR", "permuted", 10**8, 70
    )
    assert await store.reserve_series("s10:EE:FR", 1) == (70, 71)
