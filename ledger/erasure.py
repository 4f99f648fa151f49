"""Erasing one customer's personal data: the name and slug blanked in every record of theirs,
the numbers, countries, weights and times kept; and gone from the file, not only from queries.

It runs beside the service, on a connection of its own: small transactions, each waiting
(``busy_timeout``) for the writer's commit in progress and holding up the next one by a few
milliseconds. ``secure_delete`` zeroes the bytes an update frees (SQLite leaves them in the
page otherwise), and a TRUNCATE checkpoint copies the new pages into the file and empties the
WAL, which still holds the pages as they were before, name and all.
"""

from __future__ import annotations

import sqlite3
import time
from typing import NamedTuple

from ledger.errors import NotErased
from ledger.sqlite import open_existing, transaction

BATCH_REQUESTS = 500  # requests blanked a transaction: a few milliseconds of the writer's lock
CHECKPOINT_ATTEMPTS = 50  # a TRUNCATE checkpoint waits for readers of the WAL to finish
CHECKPOINT_PAUSE = 0.1

# The customer's requests not yet blanked, in the order of issue_by_customer_id (customer_id,
# then id) after a position: each batch starts where the last ended, and requests committed
# meanwhile come after it (ids only grow), so one walk finds them too.
_NEXT = (
    "SELECT id FROM issue WHERE customer_id = ? AND id > ?"
    " AND (customer_name <> '' OR customer_slug <> '') ORDER BY id LIMIT ?"
)
_BLANK = "UPDATE issue SET customer_name = '', customer_slug = '' WHERE id = ?"
# The customer's requests, then their numbers through issued_number_by_issue.
_RECORDS = (
    "SELECT count(*) FROM issued_number"
    " WHERE issue_id IN (SELECT id FROM issue WHERE customer_id = ?)"
)


class Erased(NamedTuple):
    """What was blanked: the customer's requests, and the numbers' records they hold."""

    requests: int
    records: int


def erase_customer(path: str, customer_id: str) -> Erased:
    """Blank the name and slug of every request of ``customer_id`` in the ledger at ``path``,
    then empty the WAL; NotErased if the WAL stayed in use."""
    db = open_existing(path, read_only=False)
    try:
        # Zero what an update frees, on this connection: the bytes of the old name.
        db.execute("PRAGMA secure_delete=ON")
        requests = 0
        position = 0
        while batch := db.execute(_NEXT, (customer_id, position, BATCH_REQUESTS)).fetchall():
            with transaction(db):
                db.executemany(_BLANK, batch)
            requests += len(batch)
            position = batch[-1][0]
        (records,) = db.execute(_RECORDS, (customer_id,)).fetchone()
        _empty_the_wal(db)
        return Erased(requests, int(records))
    finally:
        db.close()


def _empty_the_wal(db: sqlite3.Connection) -> None:
    """Copy every page into the file and truncate the WAL to 0 bytes, waiting for readers."""
    for _ in range(CHECKPOINT_ATTEMPTS):
        (busy, _, _) = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        time.sleep(CHECKPOINT_PAUSE)
    raise NotErased(
        "the names are blanked in the records, but the WAL stayed in use and may still hold "
        "old copies of them: run the command again"
    )
