"""The forwarder: the writer's local file copied to a real PostgreSQL, each record exactly once.

The writer runs as in production (a real SQLite file, a real Unix socket, its client), with the
forwarder on a fresh database of the server ``.ci/postgres.sh`` started; skipped without one
(a failure under CI), like the store's PostgreSQL tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable

import asyncpg
import msgspec
import pytest

from config.settings import Config
from ledger import postgres
from ledger.client import LedgerClient
from ledger.postgres import SharedReads
from ledger.records import Issue, Record, key_digest
from ledger.writer import LedgerWriter
from tests.ledger.test_writer import KEY, OTHER_KEY, issue
from tests.system.conftest import PostgresServer

WAIT = 30.0  # for a condition that normally holds within milliseconds


class Forwarding:
    """A writer forwarding to ``url``, and a client of it; started again at will."""

    def __init__(self, config: Config, url: str) -> None:
        self.config = config
        self.url = url
        self.writer: LedgerWriter | None = None
        self.client = LedgerClient(config.ledger_socket, timeout=5.0)

    async def start(self) -> LedgerWriter:
        self.writer = LedgerWriter(self.config.ledger_path, self.config.ledger_socket, self.url)
        await self.writer.start()
        return self.writer

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.close()
            self.writer = None

    async def record(self, *issues: Issue, key: bytes = KEY) -> None:
        await asyncio.gather(*(self.client.record(key, one) for one in issues))

    async def until_forwarded(self) -> None:
        """Return once the writer's spool is empty and its mark is the file's last issue."""
        await until(self._forwarded)

    def _forwarded(self) -> bool:
        assert self.writer is not None
        return self.writer.stats.spool_records == 0 and mark(self.config) == last_issue(self.config)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 (the writer's tasks make it true)
            await asyncio.sleep(0.02)


def mark(config: Config) -> int:
    with contextlib.closing(sqlite3.connect(config.ledger_path)) as db:
        return int(db.execute("SELECT forwarded_id FROM ledger_spool").fetchone()[0])


def last_issue(config: Config) -> int:
    with contextlib.closing(sqlite3.connect(config.ledger_path)) as db:
        return int(db.execute("SELECT coalesce(max(id), 0) FROM issue").fetchone()[0])


async def shared_rows(url: str) -> list[tuple[object, ...]]:
    """Every number's record in PostgreSQL, by a query of the test's own: (key digest,
    counter, number, the request's fields...), in key and counter order."""
    db = await asyncpg.connect(url, timeout=10)
    try:
        rows = await db.fetch(
            "SELECT n.key_digest, n.counter, n.number, i.issued_at_ns, i.origin, i.destination,"
            " i.weight, i.created_at, i.customer_id, i.customer_name, i.customer_slug,"
            " i.correlation_id, i.host, i.idempotency_key_digest"
            " FROM ledger_number n JOIN ledger_issue i ON i.id = n.issue_id"
            " ORDER BY n.key_digest, n.counter"
        )
    finally:
        await db.close()
    return [tuple(row) for row in rows]


def expected(key: bytes, *issues: Issue) -> list[tuple[object, ...]]:
    return sorted(
        (key_digest(key), counter, number, *msgspec.structs.astuple(one)[:-1])
        for one in issues
        for counter, number in one.numbers
    )


def recent(*counters: int, **fields: object) -> Issue:
    """An issue made 10 s ago, so that the spool's age shows."""
    return issue(*counters, issued_at_ns=time.time_ns() - 10 * 10**9, **fields)


async def test_committed_records_reach_postgresql_once_each_with_every_field(
    forwarding: Forwarding, database: str, config: Config, reads: SharedReads
) -> None:
    batch = issue(7, 8, 9, idempotency_key_digest=b"\x01" * 32, customer_name="Zoë 物流")
    others = [issue(n) for n in range(10, 2_510)]  # more issues than one forwarded batch
    await forwarding.record(batch, *others)
    await forwarding.record(issue(7), key=OTHER_KEY)  # another key's counter 7: not a duplicate
    await forwarding.until_forwarded()
    assert await shared_rows(database) == sorted(
        expected(KEY, batch, *others) + expected(OTHER_KEY, issue(7))
    )
    found = await postgres.read_record(reads, config.ledger_path, KEY, 8)
    assert found == Record(8, batch.numbers[1].number, *msgspec.structs.astuple(batch)[:-1])
    assert forwarding.writer is not None
    assert forwarding.writer.stats.uniqueness_violations_total == 0


async def test_a_resend_after_a_crash_before_the_mark_moved_adds_nothing_and_no_violation(
    forwarding: Forwarding, database: str, config: Config
) -> None:
    issues = [issue(n, n + 1000) for n in range(1, 301)]
    await forwarding.record(*issues)
    await forwarding.until_forwarded()
    await forwarding.stop()
    # PostgreSQL committed, the mark did not move: the writer died between the two.
    with contextlib.closing(sqlite3.connect(config.ledger_path)) as db:
        db.execute("UPDATE ledger_spool SET forwarded_id = 0")
        db.commit()
    writer = await forwarding.start()
    await forwarding.record(issue(5000))  # and the spool goes on after the resend
    await forwarding.until_forwarded()
    assert sorted(await shared_rows(database)) == sorted(expected(KEY, *issues, issue(5000)))
    assert writer.stats.uniqueness_violations_total == 0
    db = await asyncpg.connect(database, timeout=10)
    try:
        assert await db.fetchval("SELECT count(*) FROM ledger_issue") == 301
    finally:
        await db.close()


async def plant(url: str, counter: int, number: str) -> None:
    """Another host's record of ``counter`` under KEY, in the shared ledger."""
    db = await asyncpg.connect(url, timeout=10)
    try:
        await postgres.create_tables(db)
        other = recent(counter, host="host-b", correlation_id="host-b-request")
        issue_id = await db.fetchval(
            "INSERT INTO ledger_issue (spool_id, local_id, issued_at_ns, origin, destination,"
            " weight, created_at, customer_id, customer_name, customer_slug, correlation_id,"
            " host, idempotency_key_digest)"
            " VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            uuid.uuid4(),
            *msgspec.structs.astuple(other)[:-1],
        )
        await db.execute(
            "INSERT INTO ledger_number VALUES ($1, $2, $3, $4)",
            key_digest(KEY),
            counter,
            issue_id,
            number,
        )
    finally:
        await db.close()


async def test_a_counter_another_host_recorded_is_a_violation_logged_with_both_numbers(
    forwarding: Forwarding, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    await plant(database, 42, "CAUS00000000042Y")
    mine = issue(41, 42, 43)
    await forwarding.record(mine)  # answered from the local commit, as every request
    await forwarding.until_forwarded()
    writer = forwarding.writer
    assert writer is not None
    assert writer.stats.uniqueness_violations_total == 1
    (line,) = [r for r in caplog.records if r.getMessage().startswith("uniqueness violation")]
    assert line.levelno == logging.ERROR
    assert getattr(line, "tracking.counter") == 42
    assert getattr(line, "tracking.number") == mine.numbers[1].number
    assert getattr(line, "tracking.recorded_number") == "CAUS00000000042Y"
    assert getattr(line, "http.request.id") == mine.correlation_id
    # The number was skipped; the others of its issue, and later ones, were forwarded.
    await forwarding.record(issue(44))
    await forwarding.until_forwarded()
    numbers = {row[1]: row[2] for row in await shared_rows(database)}
    assert numbers == {
        41: mine.numbers[0].number,
        42: "CAUS00000000042Y",
        43: mine.numbers[2].number,
        44: issue(44).numbers[0].number,
    }
    assert writer.stats.uniqueness_violations_total == 1


async def test_records_spool_while_postgresql_is_away_and_follow_in_order_when_it_is_back(
    config: Config, server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ledger")
    # A database that does not exist yet: every connection is refused, as with a server down.
    name = f"tn_{uuid.uuid4().hex[:12]}"
    forwarding = Forwarding(config, server.database_url(name))
    writer = await forwarding.start()
    try:
        first = [recent(n) for n in range(1, 101)]
        await forwarding.record(*first)  # committed here: nothing waits for PostgreSQL
        await until(lambda: writer.stats.spool_error is not None)
        assert writer.stats.spool_records == 100
        assert writer.stats.spool_oldest_seconds >= 10
        await forwarding.record(*(recent(n) for n in range(101, 201)))
        admin = await server.admin()
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        await forwarding.until_forwarded()
        rows = await shared_rows(forwarding.url)
        assert [row[1] for row in rows] == list(range(1, 201))
        assert writer.stats.spool_oldest_seconds == 0.0
        assert writer.stats.spool_error is None
        # In commit order: PostgreSQL's ids follow the local ones.
        db = await asyncpg.connect(forwarding.url, timeout=10)
        try:
            local_ids = await db.fetch("SELECT local_id FROM ledger_issue ORDER BY id")
        finally:
            await db.close()
        assert [row[0] for row in local_ids] == list(range(1, 201))
    finally:
        await forwarding.client.close()
        await forwarding.stop()
        await server.drop_database(name)
    messages = [r.getMessage() for r in caplog.records if r.name == "ledger"]
    assert sum(m.startswith("ledger forwarding failed") for m in messages) == 1
    assert sum(m.startswith("ledger forwarding caught up") for m in messages) == 1


async def test_a_restored_ledger_file_is_not_forwarded_over_the_records_it_lost(
    forwarding: Forwarding, database: str, config: Config
) -> None:
    first = [issue(n) for n in range(1, 11)]
    await forwarding.record(*first)
    await forwarding.until_forwarded()
    await forwarding.stop()
    # The file as a backup taken after its 5th issue had it: PostgreSQL holds issues 6 to 10.
    with contextlib.closing(sqlite3.connect(config.ledger_path)) as db:
        db.execute("DELETE FROM issued_number WHERE issue_id > 5")
        db.execute("DELETE FROM issue WHERE id > 5")
        db.execute("UPDATE ledger_spool SET forwarded_id = 5")
        db.commit()
    writer = await forwarding.start()
    later = [issue(n) for n in range(100, 103)]  # local ids 6 to 8 again, other requests
    await forwarding.record(*later)
    await until(lambda: "copied or restored" in (writer.stats.spool_error or ""))
    assert writer.stats.spool_records == 3
    # Nothing of the later requests was attached to the earlier requests' rows.
    assert await shared_rows(database) == expected(KEY, *first)
