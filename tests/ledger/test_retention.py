"""Retention: the writer deletes records past ``ledger_retention_days``, in bounded batches
between its commits, on a real SQLite file and a real Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator

import pytest

from config.settings import Config
from ledger import retention
from ledger import writer as writer_module
from ledger.client import LedgerClient
from ledger.records import Issue
from ledger.writer import LedgerWriter
from tests.ledger.test_writer import KEY, issue, rows

DAY_NS = 86_400 * 10**9


def aged(days: float, *counters: int) -> Issue:
    """A request's issue of ``counters``, issued ``days`` ago."""
    return issue(*counters, issued_at_ns=time.time_ns() - int(days * DAY_NS))


def table_count(path: str, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
async def keeping_a_day(config: Config) -> AsyncIterator[LedgerWriter]:
    """A real writer with ``ledger_retention_days = 1``."""
    writer = LedgerWriter(config.ledger_path, config.ledger_socket, retention_days=1)
    await writer.start()
    yield writer
    await writer.close()


@pytest.fixture
async def ledger(config: Config, keeping_a_day: LedgerWriter) -> AsyncIterator[LedgerClient]:
    client = LedgerClient(config.ledger_socket, timeout=5.0)
    yield client
    await client.close()


async def test_records_past_retention_go_in_bounded_batches_counted_and_logged_once(
    config: Config,
    ledger: LedgerClient,
    keeping_a_day: LedgerWriter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(retention, "BATCH_REQUESTS", 10)
    monkeypatch.setattr(retention, "BATCH_RECORDS", 100)
    batches: list[retention.Expired] = []
    expire_batch = retention.expire_batch

    def counted(db: sqlite3.Connection, before_ns: int, kept_from: int) -> retention.Expired:
        batches.append(expired := expire_batch(db, before_ns, kept_from))
        return expired

    monkeypatch.setattr(retention, "expire_batch", counted)
    # 30 old single numbers, an old request of 250 (more than a batch holds), 5 recent ones.
    old = [aged(3, n) for n in range(30)] + [aged(2, *range(1000, 1250))]
    recent = [aged(0.5, n) for n in range(2000, 2005)]
    await asyncio.gather(*(ledger.record(KEY, one) for one in old + recent))
    caplog.set_level(logging.INFO, "ledger")

    deleted = await keeping_a_day.expire(time.time_ns() - DAY_NS)

    assert deleted == 280 == keeping_a_day.stats.records_expired_total
    assert [row[1] for row in rows(config.ledger_path)] == list(range(2000, 2005))
    assert table_count(config.ledger_path, "issue") == 5  # the requests went with their numbers
    assert all(b.records <= 100 and b.requests <= 10 for b in batches), batches
    assert len(batches) >= 5  # 280 records in batches of 100 at most, and 31 requests of 10
    (line,) = [r for r in caplog.records if r.getMessage() == "ledger records expired"]
    assert getattr(line, "tracking.ledger.records_expired") == 280
    assert getattr(line, "tracking.ledger.retention_days") == 1
    # Nothing left to delete: no batch, no line, the counter stays.
    assert await keeping_a_day.expire(time.time_ns() - DAY_NS) == 0
    assert len([r for r in caplog.records if r.getMessage() == "ledger records expired"]) == 1
    assert keeping_a_day.stats.records_expired_total == 280


async def test_the_writer_deletes_by_itself_and_goes_on_committing(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "RETENTION_INTERVAL", 0.05)
    writer = LedgerWriter(config.ledger_path, config.ledger_socket, retention_days=1)
    await writer.start()
    client = LedgerClient(config.ledger_socket, timeout=5.0)
    try:
        await client.record(KEY, aged(2, *range(100)))
        async with asyncio.timeout(10):
            while writer.stats.records_expired_total < 100:  # noqa: ASYNC110 (its task deletes)
                await asyncio.sleep(0.01)
        await client.record(KEY, aged(0, 500))
    finally:
        await client.close()
        await writer.close()
    assert [row[1] for row in rows(config.ledger_path)] == [500]


async def test_commits_go_on_between_the_batches_of_a_backlog(
    ledger: LedgerClient, keeping_a_day: LedgerWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog of many batches (retention just turned on) never holds the writer: a request
    that arrives meanwhile is committed before the backlog is gone."""
    monkeypatch.setattr(retention, "BATCH_REQUESTS", 5)
    await asyncio.gather(*(ledger.record(KEY, aged(3, n)) for n in range(500)))
    expiring = asyncio.create_task(keeping_a_day.expire(time.time_ns() - DAY_NS))
    await asyncio.sleep(0)  # the first batch runs
    await ledger.record(KEY, aged(0, 9_999))
    assert not expiring.done()  # committed while 100 batches were under way
    assert await expiring == 500
