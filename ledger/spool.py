"""The local ledger file as the spool of the shared ledger (a PostgreSQL store).

Every host commits its records to its own SQLite file first (``ledger/sqlite.py``), and the
forwarder (``ledger/forwarder.py``) copies them to PostgreSQL in issue id order. This module is
the file's side of that: the file's identity, how far forwarding got (the high-water mark), and
the reads of the next batch and of the spool's depth. The writer's tables are not changed.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any, NamedTuple

from ledger.records import ISSUE_COLUMNS

# An issue row: (local id, the issue's columns in ``ISSUE_COLUMNS`` order). A number row:
# (key digest, counter, local issue id, number).
IssueRow = tuple[Any, ...]
NumberRow = tuple[bytes, int, int, str]

SCHEMA = (
    # One row: the file's identity in the shared ledger (its records are (spool_id, local id)
    # there), and the last local issue id that PostgreSQL has committed.
    "CREATE TABLE IF NOT EXISTS ledger_spool ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " spool_id TEXT NOT NULL,"
    " forwarded_id INTEGER NOT NULL)",
)
_ISSUES = f"SELECT id, {', '.join(ISSUE_COLUMNS)} FROM issue WHERE id > ? ORDER BY id LIMIT ?"
_NUMBERS = (
    "SELECT k.digest, n.counter, n.issue_id, n.number FROM issued_number n"
    " JOIN ledger_key k ON k.id = n.key_id WHERE n.issue_id BETWEEN ? AND ?"
)


class Batch(NamedTuple):
    """The next issues to forward, and the spool behind them.

    ``records_after``, ``oldest_after_ns``: the spool once this batch is forwarded (its record
    count, the time of issue of its oldest issue, or None when it is empty).
    """

    issues: list[IssueRow]
    numbers: list[NumberRow]
    records_after: int
    oldest_after_ns: int | None

    @property
    def last_id(self) -> int:
        return int(self.issues[-1][0])

    @property
    def oldest_ns(self) -> int | None:
        """The time of issue of the oldest record of the spool, this batch included."""
        return int(self.issues[0][1]) if self.issues else self.oldest_after_ns


def open_spool(path: str) -> tuple[sqlite3.Connection, uuid.UUID, int]:
    """The forwarder's connection to the ledger file (made by the writer), the file's identity
    (made at its first use as a spool) and its high-water mark."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        # NORMAL: the mark's update is not fsynced (the writer's next commit syncs it with its
        # own); a mark lost in a power cut only sends a batch again, which PostgreSQL ignores.
        # WAL stays consistent either way. No checkpoint from here: the writer's checkpointer
        # does them, never a commit.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        for statement in SCHEMA:
            db.execute(statement)
        db.execute(
            "INSERT OR IGNORE INTO ledger_spool (id, spool_id, forwarded_id) VALUES (1, ?, 0)",
            (str(uuid.uuid4()),),
        )
        spool_id, forwarded = db.execute(
            "SELECT spool_id, forwarded_id FROM ledger_spool WHERE id = 1"
        ).fetchone()
    except BaseException:
        db.close()
        raise
    return db, uuid.UUID(spool_id), int(forwarded)


def read_batch(db: sqlite3.Connection, after: int, max_issues: int, max_numbers: int) -> Batch:
    """The issues after local id ``after`` (at most ``max_issues``, and no more whole issues
    than fit ``max_numbers`` numbers, but at least one), with their numbers, in one read
    transaction, so the spool's figures agree with the batch. Committed means durable: the
    writer's ``synchronous=FULL`` publishes a commit after its fsync."""
    db.execute("BEGIN")
    try:
        issues = db.execute(_ISSUES, (after, max_issues)).fetchall()
        numbers: list[NumberRow] = []
        if issues:
            numbers = db.execute(_NUMBERS, (issues[0][0], issues[-1][0])).fetchall()
            if len(numbers) > max_numbers:
                issues, numbers = _trimmed(issues, numbers, max_numbers)
        last = issues[-1][0] if issues else after
        (records_after,) = db.execute(
            "SELECT count(*) FROM issued_number WHERE issue_id > ?", (last,)
        ).fetchone()
        oldest = db.execute(
            "SELECT issued_at_ns FROM issue WHERE id > ? ORDER BY id LIMIT 1", (last,)
        ).fetchone()
    finally:
        db.execute("COMMIT")
    return Batch(issues, numbers, int(records_after), None if oldest is None else int(oldest[0]))


def _trimmed(
    issues: list[IssueRow], numbers: list[NumberRow], most: int
) -> tuple[list[IssueRow], list[NumberRow]]:
    """The first issues whose numbers fit ``most`` (at least one issue), and their numbers."""
    per_issue: dict[int, int] = {}
    for row in numbers:
        per_issue[row[2]] = per_issue.get(row[2], 0) + 1
    kept, total = 0, 0
    for issue in issues:
        total += per_issue.get(issue[0], 0)
        if kept and total > most:
            break
        kept += 1
    last = issues[kept - 1][0]
    return issues[:kept], [row for row in numbers if row[2] <= last]


def forwarded_mark(db: sqlite3.Connection) -> int | None:
    """The last local issue id that PostgreSQL has committed; None when the file was never
    forwarded (the forwarder reads it after any change made now)."""
    try:
        row = db.execute("SELECT forwarded_id FROM ledger_spool WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # no such table: the forwarder never started
        return None
    return None if row is None else int(row[0])


def set_forwarded(db: sqlite3.Connection, last_id: int) -> None:
    """Remember that PostgreSQL holds every issue up to local id ``last_id``."""
    db.execute("UPDATE ledger_spool SET forwarded_id = ? WHERE id = 1", (last_id,))
