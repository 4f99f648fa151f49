"""The ledger's writer and its client, on a real SQLite file and a real Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time

import msgspec
import pytest

from config.settings import Config
from ledger import sqlite as ledger_sqlite
from ledger.client import LedgerClient
from ledger.errors import LedgerUnavailable, UniquenessViolation
from ledger.records import Issue, Issued, Record, key_digest
from ledger.sqlite import read_record
from ledger.writer import LedgerWriter

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def issue(*counters: int, **fields: object) -> Issue:
    """A request's issue of ``counters``, with made-up numbers."""
    values: dict[str, object] = {
        "issued_at_ns": 1_800_000_000_000_000_000 + counters[0],
        "origin": "MY",
        "destination": "ID",
        "weight": "1.234",
        "created_at": "2026-12-06T10:00:00+08:00",
        "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
        "customer_name": "RedBox Logistics",
        "customer_slug": "redbox-logistics",
        "correlation_id": f"request-{counters[0]}",
        "host": "host-a",
        "idempotency_key_digest": None,
        "numbers": [Issued(counter, f"MYID{counter:011d}X") for counter in counters],
    }
    values.update(fields)
    return Issue(**values)  # type: ignore[arg-type]


def rows(path: str) -> list[tuple[object, ...]]:
    """Every number's record in the file, read by a connection and a query of the test's own:
    (key digest, counter, number, the request's fields...)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT k.digest, n.counter, n.number, i.issued_at_ns, i.origin, i.destination,"
            " i.weight, i.created_at, i.customer_id, i.customer_name, i.customer_slug,"
            " i.correlation_id, i.host, i.idempotency_key_digest"
            " FROM issued_number n JOIN issue i ON i.id = n.issue_id"
            " JOIN ledger_key k ON k.id = n.key_id ORDER BY k.id, n.counter"
        ).fetchall()


def expected_rows(key: bytes, *issues: Issue) -> list[tuple[object, ...]]:
    return [
        (key_digest(key), counter, number, *msgspec.structs.astuple(issue)[:-1])
        for issue in issues
        for counter, number in issue.numbers
    ]


@pytest.fixture
async def ledger(config: Config, ledger_writer: LedgerWriter) -> LedgerClient:
    client = LedgerClient(config.ledger_socket, timeout=5.0)
    yield client  # type: ignore[misc]
    await client.close()


async def test_records_are_in_the_file_with_every_field_once_the_future_is_done(
    config: Config, ledger: LedgerClient
) -> None:
    digest = b"\x01" * 32
    batch = issue(7, 8, 9, idempotency_key_digest=digest, customer_name="Zoë 物流")
    single = issue(10)
    await asyncio.gather(ledger.record(KEY, batch), ledger.record(KEY, single))
    assert rows(config.ledger_path) == expected_rows(KEY, batch, single)
    found = await read_record(config.ledger_path, KEY, 8)
    assert found == Record(8, batch.numbers[1].number, *msgspec.structs.astuple(batch)[:-1])
    assert await read_record(config.ledger_path, OTHER_KEY, 8) is None  # another key's counter


async def test_the_records_of_one_turn_go_in_one_frame_and_frames_meet_in_one_commit(
    config: Config, ledger_writer: LedgerWriter
) -> None:
    clients = [LedgerClient(config.ledger_socket, timeout=5.0) for _ in range(4)]
    try:
        # 4 workers, 50 turns each of 10 requests: 200 frames, 2,000 records.
        async def worker(client: LedgerClient, n: int) -> None:
            for turn in range(50):
                base = (n * 50 + turn) * 10
                await asyncio.gather(*(client.record(KEY, issue(base + i)) for i in range(10)))

        await asyncio.gather(*(worker(client, n) for n, client in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    stats = ledger_writer.stats
    assert stats.records_written_total == len(rows(config.ledger_path)) == 2000
    # One commit per frame at most (200), fewer when frames of several workers meet.
    assert stats.commits_total <= 200
    assert stats.batch_records.total == 2000


async def test_a_counter_recorded_twice_fails_its_request_names_both_numbers_and_counts(
    config: Config,
    ledger: LedgerClient,
    ledger_writer: LedgerWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await ledger.record(KEY, issue(41, 42))
    twin = issue(43, numbers=[Issued(43, "MYID43"), Issued(42, "CAUS00000000042Y")])
    innocent = LedgerClient(config.ledger_socket, timeout=5.0)
    try:
        # The twin and an innocent frame in the same group: the innocent one still commits.
        results = await asyncio.gather(
            ledger.record(KEY, twin),
            innocent.record(KEY, issue(44)),
            return_exceptions=True,
        )
    finally:
        await innocent.close()
    assert isinstance(results[0], UniquenessViolation)
    assert results[1] is None
    assert [row[1] for row in rows(config.ledger_path)] == [41, 42, 44]  # 43 went with its frame
    (line,) = [r for r in caplog.records if r.getMessage().startswith("uniqueness violation")]
    assert line.levelno == logging.ERROR
    assert getattr(line, "tracking.number") == "CAUS00000000042Y"
    assert getattr(line, "tracking.recorded_number") == issue(42).numbers[0].number
    assert getattr(line, "tracking.counter") == 42
    assert ledger_writer.stats.uniqueness_violations_total == 1
    # The same counter under another key is another number: no violation.
    await ledger.record(OTHER_KEY, issue(42))
    assert key_digest(KEY) != key_digest(OTHER_KEY)


async def test_without_a_writer_a_record_fails_at_once_rather_than_at_the_timeout(
    config: Config,
) -> None:
    client = LedgerClient(config.ledger_socket, timeout=60.0)
    try:
        async with asyncio.timeout(10):  # far below the client's own 60 s
            with pytest.raises(LedgerUnavailable):
                await client.record(KEY, issue(1))
    finally:
        await client.close()


async def test_a_writer_that_does_not_answer_fails_the_requests_at_the_timeout(
    config: Config,
) -> None:
    # A peer that reads every frame and answers none: a writer wedged in a commit.
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()
        hung_up.set()

    os.makedirs(config.runtime_dir, mode=0o700, exist_ok=True)
    server = await asyncio.start_unix_server(silent, config.ledger_socket)
    client = LedgerClient(config.ledger_socket, timeout=0.5)
    try:
        with pytest.raises(LedgerUnavailable, match="in time"):
            await client.record(KEY, issue(1))
    finally:
        await client.close()
        server.close()
    await hung_up.wait()


async def test_a_full_disk_fails_the_commit_and_the_next_one_succeeds_once_there_is_room(
    config: Config, ledger: LedgerClient, ledger_writer: LedgerWriter
) -> None:
    await ledger.record(KEY, issue(1))
    db = ledger_writer._connection()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    # SQLite's own limit on the file's size: the same error as a full disk.
    db.execute(f"PRAGMA max_page_count={pages}")
    many = issue(*range(100, 2100))
    with pytest.raises(Exception, match="full") as refused:
        await ledger.record(KEY, many)
    assert type(refused.value).__name__ == "NotRecorded"
    assert ledger_writer.stats.commit_failures_total == 1
    assert ledger_writer.stats.last_error is not None
    db.execute("PRAGMA max_page_count=1073741823")
    await ledger.record(KEY, many)
    assert len(rows(config.ledger_path)) == 2001
    assert ledger_writer.stats.last_error is None


def test_the_ledger_file_and_its_wal_are_private(config: Config) -> None:
    db = ledger_sqlite.open_for_writing(config.ledger_path)
    try:
        with ledger_sqlite.transaction(db):
            key = ledger_sqlite.key_id(db, key_digest(KEY))
            ledger_sqlite.insert(db, key, ledger_sqlite.next_issue_id(db), [issue(1)])
        for path in (config.ledger_path, config.ledger_path + "-wal"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    finally:
        db.close()


def wal_salt(path: str) -> bytes:
    """The WAL header's salts: SQLite changes them each time the WAL starts again from its
    beginning (https://sqlite.org/fileformat2.html#walformat)."""
    with open(path + "-wal", "rb") as wal:
        return wal.read(32)[16:24]


async def test_the_wal_starts_again_from_its_beginning_under_unbroken_load(
    config: Config, ledger: LedgerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits that never pause must not keep the WAL from being reused: a checkpoint from the
    checkpointer's thread alone always ends behind the commits made meanwhile, and then the WAL
    grew without end (200 MB in 8 s under a load test)."""
    monkeypatch.setattr("ledger.writer.CHECKPOINT_INTERVAL", 0.5)
    counters = iter(range(10**9))
    stop = asyncio.Event()

    async def keep_recording() -> None:
        while not stop.is_set():
            await ledger.record(KEY, issue(next(counters)))

    load = [asyncio.create_task(keep_recording()) for _ in range(16)]
    try:
        await ledger.record(KEY, issue(next(counters)))
        salts = {wal_salt(config.ledger_path)}
        async with asyncio.timeout(30):
            while len(salts) < 3:  # started again twice while the load went on
                await asyncio.sleep(0.01)
                salts.add(wal_salt(config.ledger_path))
    finally:
        stop.set()
        await asyncio.gather(*load)


async def test_closing_waits_for_a_checkpoint_in_its_thread(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer's thread cannot be cancelled: a close that closed its connection under
    it crashed the process (a segmentation fault inside SQLite, seen in the test suite)."""
    monkeypatch.setattr("ledger.writer.CHECKPOINT_INTERVAL", 0.01)
    entered, left = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    real_checkpoint = ledger_sqlite.checkpoint

    def slow_checkpoint(db: sqlite3.Connection) -> None:
        if threading.current_thread() is threading.main_thread():
            return real_checkpoint(db)  # the writer's own catch-up, between commits
        entered.set()
        # Until close() has closed this connection, or half a second: the first without the
        # fix, within milliseconds; with it, close() waits for this thread instead.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and is_open(db):
            time.sleep(0.005)
        try:
            real_checkpoint(db)
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            left.set()

    monkeypatch.setattr("ledger.writer.sqlite.checkpoint", slow_checkpoint)
    writer = LedgerWriter(config.ledger_path, config.ledger_socket)
    await writer.start()
    await asyncio.to_thread(entered.wait, 10)
    await writer.close()
    assert await asyncio.to_thread(left.wait, 10)

    assert failures == []


def is_open(db: sqlite3.Connection) -> bool:
    try:
        db.total_changes  # noqa: B018 (raises on a closed connection)
    except sqlite3.ProgrammingError:
        return False
    return True
