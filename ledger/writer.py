"""The ledger's writer: the one process that writes the ledger, one group commit at a time.

Workers send ``Append`` frames over a Unix socket. Everything that arrives while a commit runs
is committed together by the next one, in one transaction (group commit): one fsync for many
requests' records, so a record costs little however many arrive. Each frame is answered once
its records are durable, or with ``NotCommitted`` when they cannot be; the worker then answers
its client with a 503, and the numbers become gaps.

This module is also the writer process's entry point (``main``), the supervisor's child target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple

from allocator.errors import ProtocolError
from allocator.protocol import read_frame
from allocator.unix_socket import OwnSocket
from config.settings import Config
from config.urls import POSTGRES_URLS
from ledger import protocol, retention, sqlite
from ledger.forwarder import Forwarder
from ledger.protocol import (
    BATCH_BUCKETS,
    COMMIT_BUCKETS,
    Append,
    Committed,
    LedgerStats,
    NotCommitted,
    Stats,
    StatsQuery,
)
from process import lifecycle, logs
from process.lifecycle import until_stop_requested
from process.logs import error_fields

log = logging.getLogger("ledger")


# How often the checkpointer copies the WAL into the file (sqlite.checkpoint).
CHECKPOINT_INTERVAL = 1.0
# How often records past retention are deleted (ledger/retention.py).
RETENTION_INTERVAL = 60.0

Answer = Callable[[int], protocol.Message]  # the answer to a frame, given its id


class _Pending(NamedTuple):
    """A frame waiting for the next commit, and where its answer goes."""

    append: Append
    writer: asyncio.StreamWriter


class LedgerWriter:
    """Serves the ledger file over a Unix socket; commits in groups, in arrival order."""

    def __init__(
        self, path: str, socket_path: str, shared: str | None = None, retention_days: int = 0
    ) -> None:
        """``shared``: the PostgreSQL URL of the shared ledger, which the file is forwarded to;
        ``retention_days``: how long records are kept (0: for ever)."""
        self.path = path
        self.retention_days = retention_days  # 0 keeps every record
        self.stats = LedgerStats()
        self._forwarder = None if shared is None else Forwarder(path, shared, self.stats)
        self._shared_retention = (
            None if shared is None else retention.SharedRetention(shared, self.stats)
        )
        self._db: sqlite3.Connection | None = None
        self._checkpoints: sqlite3.Connection | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._checkpoint_in_thread: asyncio.Future[bool] | None = None
        self._catch_up = False  # a checkpoint in the thread ended: finish it between commits
        self._expiring: asyncio.Task[None] | None = None
        self._key_ids: dict[bytes, int] = {}
        self._next_issue_id = 0  # read from the file at start
        self._queue: list[_Pending] = []
        self._queued = asyncio.Event()
        self._stopping = False
        self._committing: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._socket = OwnSocket(socket_path)

    async def start(self) -> None:
        self._db = await asyncio.to_thread(sqlite.open_for_writing, self.path)
        self._next_issue_id = sqlite.next_issue_id(self._db)
        self._checkpoints = sqlite.open_for_checkpoints(self.path)
        self._committing = asyncio.create_task(self._commit_loop())
        self._checkpointing = asyncio.create_task(self._checkpoint_loop())
        if self._forwarder is not None:
            await self._forwarder.start()
        if self.retention_days:
            self._expiring = asyncio.create_task(self._retention_loop())
        self._server = await asyncio.start_unix_server(
            self._serve, sock=self._socket.bind(), limit=protocol.MAX_FRAME
        )

    async def close(self) -> None:
        """Stop accepting, commit and answer what was read, close."""
        if self._server is not None:
            self._server.close()
        if self._committing is not None:
            self._stopping = True
            self._queued.set()
            await self._committing
        for task in (self._expiring, self._checkpointing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._checkpoint_in_thread is not None:
            # A thread cannot be cancelled: closing its connection under it crashed the
            # process (a segmentation fault in SQLite). It ends with its checkpoint.
            await self._checkpoint_in_thread
        if self._forwarder is not None:
            await self._forwarder.close()
        for writer in list(self._connections):
            writer.close()
        self._socket.remove()
        for db in (self._checkpoints, self._db):
            if db is not None:
                db.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while (payload := await read_frame(reader, protocol.MAX_FRAME)) is not None:
                match protocol.decode_request(payload):
                    case Append() as append:
                        self._queue.append(_Pending(append, writer))
                        self._queued.set()
                    case StatsQuery(id=request_id):
                        writer.write(protocol.encode(Stats(id=request_id, stats=self.stats)))
        except ProtocolError as exc:
            log.warning("dropping ledger client", extra=error_fields(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _commit_loop(self) -> None:
        """One commit at a time; what arrives meanwhile waits for the next, all together."""
        while not (self._stopping and not self._queue):
            await self._queued.wait()
            self._queued.clear()
            group, self._queue = self._queue, []
            if not group:
                continue
            # In the loop's own thread: the frames that arrive meanwhile wait in the socket
            # for the next commit anyway, and a hand-off to a thread and back would cost two
            # wake-ups of a process per commit, each up to a scheduler tick on a busy host.
            # (An fsync of the WAL in a thread while the next group commits was measured too:
            # slower, docs/performance.md.)
            answers = self._commit(group)
            for (append, writer), answer in zip(group, answers, strict=True):
                if not writer.is_closing():
                    writer.write(protocol.encode(answer(append.id)))
            if self._catch_up:
                self._catch_up = False
                self._checkpoint(self._connection())

    async def _checkpoint_loop(self) -> None:
        """Copy the WAL into the file now and then: most of it in a thread, never inside a
        commit, then what was committed meanwhile between two commits (``_catch_up``).

        SQLite starts the WAL again from its beginning only at a commit that finds all of it
        copied. Under unbroken load a checkpoint in the thread always ends behind the commits
        made while it ran, and the WAL grew without end (200 MB in 8 s of a load test); the
        rest, a few commits' pages, is copied on the writer's own connection, between two.
        """
        connection = self._checkpoints
        assert connection is not None
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            in_thread = asyncio.ensure_future(asyncio.to_thread(self._checkpoint, connection))
            self._checkpoint_in_thread = in_thread
            if await asyncio.shield(in_thread):  # close() waits for the thread, not this task
                self._catch_up = True

    async def _retention_loop(self) -> None:
        """Delete the records past retention once a minute, from the file and from the shared
        ledger; a run that deletes says so."""
        while True:
            await asyncio.sleep(RETENTION_INTERVAL)
            before_ns = time.time_ns() - self.retention_days * 86_400 * 10**9
            try:
                await self.expire(before_ns)
            except sqlite3.Error as exc:  # a full disk, say: the next run tries again
                log.warning("ledger retention failed", extra=error_fields(exc))
            if self._shared_retention is not None:
                await self._shared_retention.expire(before_ns)

    async def expire(self, before_ns: int) -> int:
        """Delete every record issued before ``before_ns``, one small batch at a time on the
        writer's connection, between commits; the records deleted."""
        records = batches = 0
        slowest = 0.0
        try:
            while True:
                # In the loop's own thread, like a commit: the two never overlap, so a batch
                # holds up a commit by its own length at most, and never waits for a lock.
                started = time.perf_counter()
                # Records not yet in the shared ledger stay (they are its only copy).
                forwarder = self._forwarder
                kept_from = self._next_issue_id if forwarder is None else forwarder.forwarded + 1
                expired = retention.expire_batch(self._connection(), before_ns, kept_from)
                took = time.perf_counter() - started
                if not (expired.records or expired.requests):
                    return records
                records += expired.records
                batches += 1
                slowest = max(slowest, took)
                self.stats.records_expired_total += expired.records
                # As long again for the commits: a backlog takes at most half the loop.
                await asyncio.sleep(took)
        finally:
            if records:  # also when a batch failed, or the writer stops, after some were gone
                log.info(
                    "ledger records expired",
                    extra={
                        "tracking.ledger.records_expired": records,
                        "tracking.ledger.retention_days": self.retention_days,
                        "tracking.ledger.batches": batches,
                        "tracking.ledger.slowest_batch_seconds": round(slowest, 4),
                    },
                )

    @staticmethod
    def _checkpoint(db: sqlite3.Connection) -> bool:
        """Copy the WAL into the file through ``db``; False when it cannot now."""
        try:
            sqlite.checkpoint(db)
            return True
        except sqlite3.Error as exc:  # a full disk, say: the WAL waits for the next one
            log.warning("ledger checkpoint failed", extra=error_fields(exc))
            return False

    def _commit(self, group: list[_Pending]) -> list[Answer]:
        """Commit ``group`` as one transaction, else frame by frame to find the frames that
        cannot be committed; the answer to each frame."""
        started = time.perf_counter()
        try:
            answers = self._commit_together([pending.append for pending in group])
        except sqlite3.Error as exc:
            answers = [self._failure(exc)] * len(group)
        seconds = time.perf_counter() - started
        written = sum(
            len(issue.numbers)
            for pending, answer in zip(group, answers, strict=True)
            if answer is _committed
            for issue in pending.append.issues
        )
        if written:
            stats = self.stats
            stats.records_written_total += written
            stats.commits_total += 1
            stats.commit_seconds.observe(seconds, COMMIT_BUCKETS)
            stats.batch_records.observe(written, BATCH_BUCKETS)
            stats.last_error = None
        return answers

    def _commit_together(self, appends: list[Append]) -> list[Answer]:
        keys = [self._key_id(append.key) for append in appends]  # before: a rollback keeps them
        try:
            self._insert(list(zip(keys, appends, strict=True)))
            return [_committed] * len(appends)
        except sqlite3.IntegrityError:
            if len(appends) == 1:
                return [self._violation(keys[0], appends[0])]
        # A frame's counter is recorded already: commit the others without it.
        answers = []
        for key, append in zip(keys, appends, strict=True):
            try:
                self._insert([(key, append)])
                answers.append(_committed)
            except sqlite3.IntegrityError:
                answers.append(self._violation(key, append))
        return answers

    def _insert(self, frames: list[tuple[int, Append]]) -> None:
        """Commit ``frames`` in one transaction; the issues' ids are given back if it fails."""
        db, next_id = self._connection(), self._next_issue_id
        with sqlite.transaction(db):
            for key, append in frames:
                next_id = sqlite.insert(db, key, next_id, append.issues)
        self._next_issue_id = next_id

    def _violation(self, key: int, append: Append) -> Answer:
        """Name the numbers that collide, and count it: this must never happen."""
        db = self._connection()
        seen: dict[int, str] = {}
        for issue in append.issues:
            for counter, number in issue.numbers:
                earlier = seen.get(counter) or sqlite.recorded_number(db, key, counter)
                seen[counter] = number
                if earlier is None:
                    continue
                self.stats.uniqueness_violations_total += 1
                log.error(
                    "uniqueness violation: a counter has a record already; the request fails",
                    extra={
                        "tracking.counter": counter,
                        "tracking.number": number,
                        "tracking.recorded_number": earlier,
                        "http.request.id": issue.correlation_id,
                    },
                )
        reason = "a counter of these records has a record already"
        return lambda request_id: NotCommitted(id=request_id, reason=reason, violation=True)

    def _failure(self, exc: sqlite3.Error) -> Answer:
        reason = f"cannot commit the records: {exc}"
        if self.stats.last_error != reason:  # once per new fault, not once per commit
            log.error("ledger commit failed", extra=error_fields(exc))
        self.stats.commit_failures_total += 1
        self.stats.last_error = reason
        return lambda request_id: NotCommitted(id=request_id, reason=reason)

    def _key_id(self, digest: bytes) -> int:
        found = self._key_ids.get(digest)
        if found is None:
            found = self._key_ids[digest] = sqlite.key_id(self._connection(), digest)
        return found

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the ledger is not open")
        return self._db


def _committed(request_id: int) -> protocol.Message:
    return Committed(id=request_id)


async def serve(config: Config, ready: Callable[[], None] = lambda: None) -> None:
    """Run the writer until SIGTERM, or until the supervisor disappears."""
    parent_pid = os.getppid()
    shared = config.store if config.store.startswith(POSTGRES_URLS) else None
    writer = LedgerWriter(
        config.ledger_path, config.ledger_socket, shared, config.ledger_retention_days
    )
    try:
        await writer.start()
        log.info(
            "ledger writer listening",
            extra={
                "tracking.socket": config.ledger_socket,
                "tracking.ledger_file": config.ledger_path,
            },
        )
        ready()
        await until_stop_requested(parent_pid)
    finally:
        await writer.close()
        stats = writer.stats
        log.info(
            "ledger writer stopped",
            extra={
                "tracking.ledger.records": stats.records_written_total,
                "tracking.ledger.commits": stats.commits_total,
                "tracking.ledger.commit_seconds": round(stats.commit_seconds.total, 3),
            },
        )


def main(config: Config, ready: Callable[[], None]) -> None:
    """The writer process: the supervisor's child target."""
    logs.configure(config.log_level)
    lifecycle.run(serve(config, ready), config.event_loop)
