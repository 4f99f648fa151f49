"""Copies the records each host committed to its own ledger file into the shared PostgreSQL
ledger, in commit order, in batches, each exactly once.

It runs inside the writer process, on its event loop, with a store that is PostgreSQL. The
writer commits to the local file as it always does (durable before the answer), so an answer
never waits for PostgreSQL, and issuing rides out a PostgreSQL outage: the file is the spool.
After each batch PostgreSQL committed, the file's high-water mark moves (``ledger/spool.py``);
a crash between the two sends the batch again, which PostgreSQL's constraints turn into
nothing (``ledger/postgres.py``). docs/architecture.md, "The ledger", says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid

import asyncpg

from allocator.store.postgres import DATABASE_ERRORS, describe
from config.urls import redact_url
from ledger import postgres, spool
from ledger.errors import LedgerError
from ledger.postgres import Duplicate
from ledger.protocol import LedgerStats
from ledger.spool import Batch

log = logging.getLogger("ledger")

# A batch: at most this many issues, and no more whole issues than fit MAX_NUMBERS numbers.
MAX_ISSUES = 1_000
MAX_NUMBERS = 20_000
# How often an idle forwarder looks for new records: the usual lag of the shared ledger.
POLL_INTERVAL = 0.05
# After a failure, the next attempt waits this long, doubling up to MAX.
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0


class Forwarder:
    """Forwards the ledger file at ``path`` to the PostgreSQL database at ``url``, and keeps
    ``stats``' spool figures and uniqueness violations."""

    def __init__(self, path: str, url: str, stats: LedgerStats) -> None:
        self.path = path
        self.url = url
        self.location = redact_url(url)
        self.stats = stats
        self._local: sqlite3.Connection | None = None
        self._spool_id = uuid.UUID(int=0)
        self._forwarded = 0
        self._db: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[Batch] | None = None  # a read in its thread
        self._failing = False  # since the last failure, until the spool is empty again

    @property
    def forwarded(self) -> int:
        """The newest local issue id PostgreSQL holds, with every one before it."""
        return self._forwarded

    async def start(self) -> None:
        """Open the file's spool side (the writer has made the file); forward from now on."""
        self._local, self._spool_id, self._forwarded = await asyncio.to_thread(
            spool.open_spool, self.path
        )
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop forwarding; what is left goes at the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reading is not None:  # a thread cannot be cancelled: its read ends first
            await asyncio.wait([self._reading])
            self._reading.exception()  # a failed last read matters no more
        self._drop()
        if self._local is not None:
            self._local.close()

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            try:
                batch = await self._forward_once()
                backoff = 0.0
                if len(batch.issues) < MAX_ISSUES and batch.records_after == 0:
                    await asyncio.sleep(POLL_INTERVAL)
            except Exception as exc:  # any: the records wait, and a dead task would hide it
                self._failed(exc)
                backoff = min(max(2 * backoff, BACKOFF_MIN), BACKOFF_MAX)
                await asyncio.sleep(backoff)

    async def _forward_once(self) -> Batch:
        """Read the next batch, commit it to PostgreSQL, then move the mark; the batch."""
        assert self._local is not None
        self._reading = asyncio.get_running_loop().run_in_executor(
            None,
            spool.read_batch,
            self._local,
            self._forwarded,
            MAX_ISSUES,
            MAX_NUMBERS,
        )
        batch = await asyncio.shield(self._reading)
        self._reading = None
        self._show(len(batch.numbers) + batch.records_after, batch.oldest_ns)
        if batch.issues:
            db = await self._connection()
            try:
                duplicates = await postgres.forward(db, self._spool_id, batch)
            except DATABASE_ERRORS:
                self._drop()
                raise
            # On the loop, between the writer's commits (which run on it too): the update
            # never waits for the write lock, nor makes a commit wait for it.
            spool.set_forwarded(self._local, batch.last_id)
            self._forwarded = batch.last_id
            self._violations(duplicates)
            self._show(batch.records_after, batch.oldest_after_ns)
        if self._failing and batch.records_after == 0:
            self._failing = False
            self.stats.spool_error = None
            log.info(
                "ledger forwarding caught up: the shared ledger holds every record",
                extra={"tracking.store_location": self.location},
            )
        return batch

    def _show(self, records: int, oldest_ns: int | None) -> None:
        self.stats.spool_records = records
        self.stats.spool_oldest_seconds = (
            0.0 if oldest_ns is None else max(0.0, time.time() - oldest_ns / 1e9)
        )

    async def _connection(self) -> asyncpg.Connection:
        if self._db is not None and not self._db.is_closed():
            return self._db
        db = await postgres.connect(self.url)
        try:
            await postgres.create_tables(db)
        except BaseException:
            db.terminate()
            raise
        self._db = db
        return db

    def _drop(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.terminate()

    def _failed(self, exc: BaseException) -> None:
        """Once per outage: the records wait in the file meanwhile."""
        reason = f"cannot forward to {self.location}: {describe(exc)}"
        if not self._failing:
            expected = isinstance(exc, (*DATABASE_ERRORS, ValueError, LedgerError, sqlite3.Error))
            log.warning(
                "ledger forwarding failed; records wait in this host's ledger file",
                extra={"tracking.store_location": self.location, "error.message": reason},
                exc_info=None if expected else exc,  # a defect: its stack trace
            )
        self._failing = True
        self.stats.spool_error = reason

    def _violations(self, duplicates: list[Duplicate]) -> None:
        """A counter another issue holds in the shared ledger: must never happen. The client
        was answered from the local commit already; the number is skipped, and alerts fire."""
        for duplicate in duplicates:
            self.stats.uniqueness_violations_total += 1
            log.error(
                "uniqueness violation: a counter has a record in the shared ledger already;"
                " this record is not forwarded",
                extra={
                    "tracking.counter": duplicate.counter,
                    "tracking.number": duplicate.number,
                    "tracking.recorded_number": duplicate.recorded_number,
                    "http.request.id": duplicate.correlation_id,
                },
            )
