"""The ledger's SQLite file: its tables, a batch's insert, and the reads of one record.

The file is the ledger's own, beside the store's (docs/architecture.md says why): WAL with
``synchronous=FULL``, the counter's durability, so a committed record survives a power cut.
The writer process owns the one connection that writes; workers read through connections of
their own, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator

import msgspec

from allocator.files import private_database_file
from ledger.errors import LedgerError
from ledger.records import ISSUE_COLUMNS, RECORD_COLUMNS, Issue, Record, key_digest

SCHEMA = (
    # One row per permutation key the ledger has seen: a rebuilt store with a new key starts
    # its counter at 0 again, and its numbers differ from the old key's.
    "CREATE TABLE IF NOT EXISTS ledger_key ( id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE)",
    # One row per request that issued numbers: what it declared, once however many numbers.
    "CREATE TABLE IF NOT EXISTS issue ("
    " id INTEGER PRIMARY KEY,"
    " issued_at_ns INTEGER NOT NULL,"
    " origin TEXT NOT NULL,"
    " destination TEXT NOT NULL,"
    " weight TEXT NOT NULL,"
    " created_at TEXT NOT NULL,"
    " customer_id TEXT NOT NULL,"
    " customer_name TEXT NOT NULL,"
    " customer_slug TEXT NOT NULL,"
    " correlation_id TEXT NOT NULL,"
    " host TEXT NOT NULL,"
    " idempotency_key_digest BLOB)",
    # By customer id and slug: a listing walks one of these newest first (ledger/listing.py),
    # since an index on a column keeps the row's id after it. Not by correlation id: random
    # values, each insert a page of its own, halved the writer's rate of single numbers; nor by
    # time: retention walks the requests in id order (ledger/retention.py), and every index is
    # an insert more in each commit (docs/performance.md).
    "CREATE INDEX IF NOT EXISTS issue_by_customer_id ON issue (customer_id)",
    "CREATE INDEX IF NOT EXISTS issue_by_slug ON issue (customer_slug)",
    # One row per number. Its primary key is the second line against duplicates: one record per
    # counter and key. WITHOUT ROWID: the table is that key's B-tree, so it costs no index.
    "CREATE TABLE IF NOT EXISTS issued_number ("
    " key_id INTEGER NOT NULL REFERENCES ledger_key (id),"
    " counter INTEGER NOT NULL,"
    " issue_id INTEGER NOT NULL REFERENCES issue (id),"
    " number TEXT NOT NULL,"
    " PRIMARY KEY (key_id, counter)) WITHOUT ROWID",
    # An issue's numbers, in counter order: a listing's records (ledger/listing.py), the
    # forwarder's batches (ledger/spool.py), retention's deletes (ledger/retention.py).
    "CREATE INDEX IF NOT EXISTS issued_number_by_issue ON issued_number (issue_id, counter)",
)
INSERT_ISSUE = (
    f"INSERT INTO issue (id, {', '.join(ISSUE_COLUMNS)})"
    f" VALUES ({', '.join('?' * (len(ISSUE_COLUMNS) + 1))})"
)
INSERT_NUMBER = "INSERT INTO issued_number (key_id, counter, issue_id, number) VALUES (?, ?, ?, ?)"
_RECORD = ", ".join(f"n.{c}" if c in ("counter", "number") else f"i.{c}" for c in RECORD_COLUMNS)
# Every record with its issue's id first, for a listing (ledger/listing.py) to add conditions to.
RECORD_SELECT = f"SELECT i.id, {_RECORD} FROM issue i JOIN issued_number n ON n.issue_id = i.id"
SELECT_ONE = (
    f"SELECT {_RECORD} FROM issued_number n"
    " JOIN ledger_key k ON k.id = n.key_id JOIN issue i ON i.id = n.issue_id"
    " WHERE k.digest = ? AND n.counter = ?"
)


def open_for_writing(path: str) -> sqlite3.Connection:
    """The writer's connection, with the schema made and the counter's durability. The file
    holds customers' names: only this user may open it."""
    private_database_file(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk (the WAL fsynced) before COMMIT returns, and before other
        # connections see it (SQLite publishes a commit in the WAL index after its fsync): the
        # forwarder (ledger/spool.py) reads durable records only.
        db.execute("PRAGMA synchronous=FULL")
        # No checkpoint inside a commit: copying the WAL into the file and syncing it would
        # hold up every request of that group. The writer's checkpointer does it beside.
        db.execute("PRAGMA wal_autocheckpoint=0")
        # Deleted and moved bytes are zeroed, so that an erased name or an expired record is
        # gone from the file, not left in free space (ledger/erasure.py). Debian's SQLite does
        # this by default; other builds do not.
        db.execute("PRAGMA secure_delete=ON")
        for statement in SCHEMA:
            db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db


def open_for_checkpoints(path: str) -> sqlite3.Connection:
    """A second connection, which copies committed pages from the WAL into the file while the
    writer goes on (a PASSIVE checkpoint waits for no one and holds up no one)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def checkpoint(db: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the file; the WAL starts again from its beginning at the
    next commit once all of it is copied (it grows no further than the writes between two)."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def key_id(db: sqlite3.Connection, digest: bytes) -> int:
    """The ledger's id for a key, made at its first record."""
    db.execute("INSERT OR IGNORE INTO ledger_key (digest) VALUES (?)", (digest,))
    (found,) = db.execute("SELECT id FROM ledger_key WHERE digest = ?", (digest,)).fetchone()
    return int(found)


def next_issue_id(db: sqlite3.Connection) -> int:
    """The id the next issue gets: the writer, the only one that inserts, numbers them. Never
    one PostgreSQL holds already (``ledger/spool.py``), even when retention emptied the file."""
    (last,) = db.execute("SELECT coalesce(max(id), 0) FROM issue").fetchone()
    mark = None
    if _has_table(db, "ledger_spool"):
        mark = db.execute("SELECT forwarded_id FROM ledger_spool WHERE id = 1").fetchone()
    return max(int(last), int(mark[0]) if mark else 0) + 1


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (name,)).fetchone() is not None


def insert(db: sqlite3.Connection, key: int, first_id: int, issues: Iterable[Issue]) -> int:
    """Add ``issues`` to the open transaction, numbered from ``first_id``; the next free id.
    sqlite3.IntegrityError when a counter has a record already."""
    astuple = msgspec.structs.astuple
    issue_rows, number_rows = [], []
    issue_id = first_id
    for issue in issues:
        issue_rows.append((issue_id, *astuple(issue)[:-1]))
        number_rows.extend((key, counter, issue_id, number) for counter, number in issue.numbers)
        issue_id += 1
    db.executemany(INSERT_ISSUE, issue_rows)
    db.executemany(INSERT_NUMBER, number_rows)
    return issue_id


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, committed durably, or rolled back on any failure."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def recorded_number(db: sqlite3.Connection, key: int, counter: int) -> str | None:
    """The number recorded for ``counter``, if any (to name both numbers of a violation)."""
    row = db.execute(
        "SELECT number FROM issued_number WHERE key_id = ? AND counter = ?", (key, counter)
    ).fetchone()
    return None if row is None else str(row[0])


def highest_counter(db: sqlite3.Connection, digest: bytes) -> int | None:
    """The highest counter recorded under the key of ``digest``, if any (one B-tree seek)."""
    row = db.execute(
        "SELECT max(n.counter) FROM issued_number n JOIN ledger_key k ON k.id = n.key_id"
        " WHERE k.digest = ?",
        (digest,),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def open_existing(path: str, *, read_only: bool) -> sqlite3.Connection:
    """A connection of its own to a ledger file that must exist already (never made here)."""
    mode = "ro" if read_only else "rw"
    db = sqlite3.connect(
        f"file:{urllib.parse.quote(path)}?mode={mode}",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    db.execute("PRAGMA busy_timeout=5000")
    return db


def find(db: sqlite3.Connection, digest: bytes, counter: int) -> Record | None:
    """The record of ``counter`` under the key of ``digest``, if there is one."""
    row = db.execute(SELECT_ONE, (digest, counter)).fetchone()
    return None if row is None else Record(*row)


async def read_record(path: str, key: bytes, counter: int, series: str = "") -> Record | None:
    """The record of ``counter`` under permutation ``key`` (of S10 ``series``, if any) in the
    ledger file at ``path``, read through a connection of the caller's own; LedgerError when
    the file cannot be read."""

    def read() -> Record | None:
        if not os.path.exists(path):
            return None  # no number recorded yet
        try:
            db = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
            try:
                db.execute("PRAGMA busy_timeout=5000")
                return find(db, key_digest(key, series), counter)
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger: {exc}") from exc

    return await asyncio.to_thread(read)
