"""What retention costs: ``python -m tests.benchmark.retention``.

For each traffic shape of ``tests.benchmark.ledger``: a ledger built by the writer's own insert,
then every record deleted by ``ledger.retention.expire_batch``, batch by batch
as the writer does: how long a batch holds the writer's connection (the time it may hold up
a group commit), and records deleted a second.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time

from ledger import retention
from ledger import sqlite as ledger_sqlite
from tests.benchmark.ledger import NUMBERS, SHAPES, ingest


def expire_all(path: str) -> tuple[float, float, float]:
    """p50 and max ms of a batch, records deleted a second."""
    db = ledger_sqlite.open_for_writing(path)
    try:
        batches, deleted = [], 0
        began = time.perf_counter()
        while True:
            started = time.perf_counter()
            expired = retention.expire_batch(db, time.time_ns() + 1, 2**62)
            if not (expired.records or expired.requests):
                break
            batches.append((time.perf_counter() - started) * 1000)
            deleted += expired.records
            if len(batches) % 10 == 0:
                ledger_sqlite.checkpoint(db)  # as the writer's checkpointer does
        seconds = time.perf_counter() - began
        assert deleted == NUMBERS, deleted
    finally:
        db.close()
    batches.sort()
    return batches[len(batches) // 2], batches[-1], deleted / seconds


def main() -> None:
    directory = tempfile.mkdtemp(prefix="tn-retention-bench-", dir="/tmp")
    os.chmod(directory, 0o700)
    try:
        print(
            f"{NUMBERS:,} numbers per shape, SQLite {sqlite3.sqlite_version}; batches of at most"
            f" {retention.BATCH_REQUESTS:,} requests and {retention.BATCH_RECORDS:,} records"
        )
        for shape in SHAPES:
            path, *_ = ingest(directory, shape, NUMBERS)
            p50, slowest, rate = expire_all(path)
            print(
                f"{shape.name}: a batch p50 {p50:.1f} ms, max {slowest:.1f} ms;"
                f" {rate:,.0f} records deleted/s"
            )
            os.unlink(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
