"""Retention: records older than ``ledger_retention_days`` leave the ledger, a small batch at
a time, so that a delete never holds up a group commit for long.

The writer runs each batch on its own connection, between two commits (``LedgerWriter``): SQLite
lets one transaction write at a time, so a batch delays the next commit by its own length and
no more. Requests go in commit order (issue id), which is their order of issue give or take a
request's wait for its commit: a batch ends at the first request still within retention, so a
request committed a little out of order only waits for the next run. No index by time: it would
cost every request an index entry for the sake of this once-a-minute walk. A request's numbers
are found through the listing's ``issued_number_by_issue``.

With a PostgreSQL store the same task also deletes from the shared ledger (``SharedRetention``),
in the same bounded batches, oldest id first: a batch there holds up no commit of this host
(the file's), nor the forwarders (their new issues are not the batch's rows). One host's batch
runs at a time; another host's writer, meeting its lock, leaves the rest to it.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from typing import NamedTuple

import asyncpg

from allocator.store.postgres import DATABASE_ERRORS, describe
from config.settings import redact_url
from ledger import postgres
from ledger.protocol import LedgerStats
from ledger.sqlite import transaction

log = logging.getLogger("ledger")

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


# The hosts of a store take turns deleting from the shared ledger.
_SHARED_LOCK = int.from_bytes(b"tnexpire", "big")
_SHARED_OLDEST = "SELECT id, issued_at_ns FROM ledger_issue ORDER BY id LIMIT $1"
# The requests are named one by one, not as a range of ids: PostgreSQL hands out an id when a
# forwarder inserts, so another host's issue may join the range, committed since, and recent.
_SHARED_DELETE_NUMBERS = (
    "DELETE FROM ledger_number WHERE (key_digest, counter) IN ("
    " SELECT key_digest, counter FROM ledger_number WHERE issue_id = ANY($1::bigint[]) LIMIT $2)"
)
_SHARED_DELETE_REQUESTS = (
    "DELETE FROM ledger_issue i WHERE id = ANY($1::bigint[])"
    " AND NOT EXISTS (SELECT 1 FROM ledger_number n WHERE n.issue_id = i.id)"
)


async def expire_shared_batch(db: asyncpg.Connection, before_ns: int) -> Expired:
    """Delete, in one transaction, one batch of the shared ledger's oldest records issued before
    ``before_ns``; nothing when there is none, or another host's batch runs."""
    async with db.transaction():
        if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SHARED_LOCK):
            return Expired(0, 0)
        oldest = await db.fetch(_SHARED_OLDEST, BATCH_REQUESTS)
        expired = [row[0] for row in itertools.takewhile(lambda row: row[1] < before_ns, oldest)]
        if not expired:
            return Expired(0, 0)
        records = await db.execute(_SHARED_DELETE_NUMBERS, expired, BATCH_RECORDS)
        requests = await db.execute(_SHARED_DELETE_REQUESTS, expired)
    return Expired(int(records.split()[-1]), int(requests.split()[-1]))


class SharedRetention:
    """Deletes the shared ledger's records past retention for the writer's retention task, on a
    connection of its own for each run; counts them in ``stats``."""

    def __init__(self, url: str, stats: LedgerStats) -> None:
        self.url = url
        self.location = redact_url(url)
        self.stats = stats
        self._failing = False  # since a run failed, until one succeeds

    async def expire(self, before_ns: int) -> int:
        """Delete every record issued before ``before_ns``, a batch at a time; the records
        deleted. While PostgreSQL is away the rest waits for the next run (logged once)."""
        records = batches = 0
        try:
            db = await postgres.connect(self.url)
            try:
                while True:
                    expired = await expire_shared_batch(db, before_ns)
                    if not (expired.records or expired.requests):
                        break
                    records += expired.records
                    batches += 1
                    self.stats.records_expired_total += expired.records
            finally:
                db.terminate()
        except asyncpg.UndefinedTableError:
            pass  # no host has forwarded a record yet
        except (*DATABASE_ERRORS, ValueError) as exc:
            if not self._failing:
                log.warning(
                    "shared ledger retention failed; it runs again in a minute",
                    extra={
                        "tracking.store_location": self.location,
                        "error.message": describe(exc),
                    },
                )
            self._failing = True
            return records
        finally:
            if records:
                log.info(
                    "shared ledger records expired",
                    extra={
                        "tracking.ledger.records_expired": records,
                        "tracking.ledger.batches": batches,
                        "tracking.store_location": self.location,
                    },
                )
        self._failing = False
        return records
