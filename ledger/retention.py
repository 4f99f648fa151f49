"""Retention: records older than ``ledger_retention_days`` leave the ledger, a small batch at
a time, so that a delete never holds up a group commit for long.

The writer runs each batch on its own connection, between two commits (``LedgerWriter``): SQLite
lets one transaction write at a time, so a batch delays the next commit by its own length and
no more. Requests go oldest first (``issue_by_time``), their numbers through
``issued_number_by_issue``, an index made only when retention is on: it costs every number an
index entry (docs/operations.md, "Retention"), which a ledger that keeps everything need not pay.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from ledger.sqlite import transaction

INDEX = "CREATE INDEX IF NOT EXISTS issued_number_by_issue ON issued_number (issue_id)"

# A batch: at most this many requests, and at most this many of their numbers (a request may
# hold 1,000). Measured (python -m tests.benchmark.retention): 5 to 9 ms a batch, 19 at most,
# about a group commit's own time.
BATCH_REQUESTS = 500
BATCH_RECORDS = 5_000

_OLDEST = (
    "SELECT id FROM issue WHERE issued_at_ns < :before AND id < :kept_from"
    " ORDER BY issued_at_ns, id LIMIT :requests"
)
# At most BATCH_RECORDS numbers of the oldest requests; a request whose numbers do not all fit
# keeps the rest, and its row, for the next batch.
_DELETE_NUMBERS = (
    "DELETE FROM issued_number WHERE (key_id, counter) IN ("
    " SELECT key_id, counter FROM issued_number"
    f" WHERE issue_id IN ({_OLDEST}) LIMIT :records)"
)
_DELETE_REQUESTS = (
    f"DELETE FROM issue WHERE id IN ({_OLDEST})"
    " AND NOT EXISTS (SELECT 1 FROM issued_number n WHERE n.issue_id = issue.id)"
)


class Expired(NamedTuple):
    """What one batch deleted: numbers' records, and the requests that held them."""

    records: int
    requests: int


def prepare(db: sqlite3.Connection) -> None:
    """Make the index that finds a request's numbers (once; it takes a while on a big ledger)."""
    db.execute(INDEX)


def expire_batch(db: sqlite3.Connection, before_ns: int, kept_from: int) -> Expired:
    """Delete, in one transaction, one batch of the records issued before ``before_ns`` (ns
    since the epoch) whose issue id is below ``kept_from``; nothing left when both are 0."""
    bounds = {
        "before": before_ns,
        "kept_from": kept_from,
        "requests": BATCH_REQUESTS,
        "records": BATCH_RECORDS,
    }
    if db.execute(_OLDEST, {**bounds, "requests": 1}).fetchone() is None:
        return Expired(0, 0)  # no write transaction, no fsync, when there is nothing to do
    with transaction(db):
        records = db.execute(_DELETE_NUMBERS, bounds).rowcount
        requests = db.execute(_DELETE_REQUESTS, bounds).rowcount
    return Expired(records, requests)
