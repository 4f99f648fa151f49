"""Retention on a PostgreSQL store: the writer's retention task deletes expired records from
the shared ledger too, in bounded batches; a real writer forwarding to a real PostgreSQL,
skipped without one, like the forwarder's tests."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest

from config.settings import Config
from ledger import retention
from ledger import writer as writer_module
from ledger.protocol import LedgerStats
from ledger.writer import LedgerWriter
from tests.ledger.test_forwarder import Forwarding, expected, plant, shared_rows, until
from tests.ledger.test_retention import DAY_NS, aged
from tests.ledger.test_writer import KEY, rows
from tests.system.conftest import PostgresServer


class KeepingADay(Forwarding):
    """A writer forwarding to ``url`` that keeps records for a day."""

    async def start(self) -> LedgerWriter:
        self.writer = LedgerWriter(
            self.config.ledger_path, self.config.ledger_socket, self.url, retention_days=1
        )
        await self.writer.start()
        return self.writer


async def issues_left(url: str) -> int:
    db = await asyncpg.connect(url, timeout=10)
    try:
        return int(await db.fetchval("SELECT count(*) FROM ledger_issue"))
    finally:
        await db.close()


async def test_the_retention_task_deletes_old_records_from_postgresql_in_batches_keeping_recent(
    config: Config,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(retention, "BATCH_REQUESTS", 10)
    monkeypatch.setattr(retention, "BATCH_RECORDS", 100)
    batches: list[retention.Expired] = []
    expire_shared_batch = retention.expire_shared_batch

    async def counted(db: asyncpg.Connection, before_ns: int) -> retention.Expired:
        batches.append(expired := await expire_shared_batch(db, before_ns))
        return expired

    monkeypatch.setattr(retention, "expire_shared_batch", counted)
    caplog.set_level(logging.INFO, "ledger")
    # 30 old single numbers, an old request of 250 (more than a batch holds), 5 recent ones,
    # then an old one committed after them: a run stops at the first still within retention.
    old = [aged(3, n) for n in range(30)] + [aged(2, *range(1000, 1250))]
    recent = [aged(0.5, n) for n in range(2000, 2005)]
    late = aged(3, 3000)
    forwarding = KeepingADay(config, database)
    await forwarding.start()
    try:
        for one in (*old, *recent, late):
            await forwarding.record(one)
        await forwarding.until_forwarded()
        assert len(await shared_rows(database)) == 286
        monkeypatch.setattr(writer_module, "RETENTION_INTERVAL", 0.05)
        await forwarding.stop()  # started again: its retention task runs at the new interval
        writer = await forwarding.start()
        async with asyncio.timeout(30):
            while len(await shared_rows(database)) > 6:  # noqa: ASYNC110 (its task deletes)
                await asyncio.sleep(0.05)
        await until(lambda: len(rows(config.ledger_path)) == 6)
    finally:
        await forwarding.client.close()
        await forwarding.stop()
    assert await shared_rows(database) == expected(KEY, *recent, late)
    assert await issues_left(database) == 6  # the requests went with their numbers
    assert [row[1] for row in rows(config.ledger_path)] == [*range(2000, 2005), 3000]
    # Counted with the file's: 280 deleted there, 280 in PostgreSQL.
    assert writer.stats.records_expired_total == 560
    deleting = [b for b in batches if b.records or b.requests]
    assert all(b.records <= 100 and b.requests <= 10 for b in deleting), deleting
    assert len(deleting) >= 5  # 280 records in batches of 100 at most, and 31 requests of 10
    assert sum(b.records for b in deleting) == 280
    lines = [r for r in caplog.records if r.getMessage() == "shared ledger records expired"]
    assert sum(getattr(line, "tracking.ledger.records_expired") for line in lines) == 280


async def test_while_postgresql_is_away_retention_there_waits_for_the_next_run_logged_once(
    server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"tn_{int(time.time_ns()) % 10**12}"  # not created yet: every connection is refused
    url = server.database_url(name)
    stats = LedgerStats()
    shared = retention.SharedRetention(url, stats)
    try:
        assert await shared.expire(time.time_ns()) == 0
        assert await shared.expire(time.time_ns()) == 0
        failed = [r for r in caplog.records if r.getMessage().startswith("shared ledger retention")]
        assert len(failed) == 1
        assert failed[0].levelno == logging.WARNING
        admin = await server.admin()
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        assert await shared.expire(time.time_ns()) == 0  # no table yet: nothing to do, quietly
        await plant(url, 42, "CAUS00000000042Y")  # issued 10 s ago
        assert await shared.expire(time.time_ns() - DAY_NS) == 0  # within retention
        assert await shared.expire(time.time_ns()) == 1
        assert stats.records_expired_total == 1
        assert await shared_rows(url) == []
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    finally:
        await server.drop_database(name)
