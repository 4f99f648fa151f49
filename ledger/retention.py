"""Retention: records older than ``ledger_retention_days`` leave the ledger, a small batch at
a time, so that a delete never holds up a group commit for long.

The writer runs each batch on its own connection, between two commits (``LedgerWriter``): SQLite
lets one transaction write at a time, so a batch delays the next commit by its own length and
no more. Requests go in commit order (issue id), which is their order of issue give or take a
request's wait for its commit: a batch ends at the first request still within retention, so a
request committed a little out of order only waits for the next run. No index by time: it would
cost every request an index entry for the sake of this once-a-minute walk. A request's numbers
are found through the listing's ``issued_number_by_issue``.
"""

from __future__ import annotations

import itertools
import sqlite3
from typing import NamedTuple

from ledger.sqlite import transaction

# A batch: at most this many requests, and at most this many of their numbers (a request may
# hold 1,000). Measured (python -m tests.benchmark.retention): 5 to 9 ms a batch, 19 at most,
# about a group commit's own time.
BATCH_REQUESTS = 500
BATCH_RECORDS = 5_000

_OLDEST = "SELECT id, issued_at_ns FROM issue WHERE id < ? ORDER BY id LIMIT ?"
# At most BATCH_RECORDS numbers of the requests from first to last; a request whose numbers do
# not all fit keeps the rest, and its row, for the next batch.
_DELETE_NUMBERS = (
    "DELETE FROM issued_number WHERE (key_id, counter) IN ("
    " SELECT key_id, counter FROM issued_number WHERE issue_id BETWEEN ? AND ? LIMIT ?)"
)
_DELETE_REQUESTS = (
    "DELETE FROM issue WHERE id BETWEEN ? AND ?"
    " AND NOT EXISTS (SELECT 1 FROM issued_number n WHERE n.issue_id = issue.id)"
)


class Expired(NamedTuple):
    """What one batch deleted: numbers' records, and the requests that held them."""

    records: int
    requests: int


def expire_batch(db: sqlite3.Connection, before_ns: int, kept_from: int) -> Expired:
    """Delete, in one transaction, one batch of the oldest records issued before ``before_ns``
    (ns since the epoch) whose issue id is below ``kept_from``; nothing left when both are 0."""
    oldest = db.execute(_OLDEST, (kept_from, BATCH_REQUESTS)).fetchall()
    expired = list(itertools.takewhile(lambda row: row[1] < before_ns, oldest))
    if not expired:
        return Expired(0, 0)  # no write transaction, no fsync, when there is nothing to do
    first, last = expired[0][0], expired[-1][0]
    with transaction(db):
        records = db.execute(_DELETE_NUMBERS, (first, last, BATCH_RECORDS)).rowcount
        requests = db.execute(_DELETE_REQUESTS, (first, last)).rowcount
    return Expired(records, requests)
