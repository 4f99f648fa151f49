"""The operator's commands on the ledger, and the check that a restored ledger and store agree.

``--erase-customer`` runs in the supervisor's process (``run.py``) instead of starting the
service; ``check_below_mark`` runs there at every start, before the allocator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import time

from allocator.errors import StoreMissing
from allocator.series import DEFAULT_SERIES
from allocator.store import open_store
from config.settings import Config
from config.urls import POSTGRES_URLS
from ledger import erasure, postgres, spool
from ledger.errors import LedgerAhead, NotErased
from ledger.records import key_digest
from ledger.sqlite import highest_counter, open_existing
from process.logs import error_fields

log = logging.getLogger("ledger")

# As the issuing route stores it (service/params.py): a UUID, lower case.
_CUSTOMER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# How long erasure waits for the writer to forward what the file held when it was blanked.
SPOOL_WAIT = 60.0


async def _key_and_marks(url: str) -> tuple[bytes, dict[str, int]] | None:
    """The store's key, and the durable mark of each of its counters, by series (our own is
    ``DEFAULT_SERIES``); None when there is no store yet (never made here)."""
    store = open_store(url, create=False)
    try:
        await store.open()
        key = await store.load_key()
        marks = {DEFAULT_SERIES: await store.durable_mark()}
        marks.update((series.name, series.reserved) for series in await store.all_series())
        return key, marks
    except StoreMissing:
        return None
    finally:
        await store.close()


def erase_customer(config: Config, customer_id: str) -> int:
    """``--erase-customer``: blank one customer's names and slugs in the ledger, this host's
    file and, with a PostgreSQL store, the shared ledger; the exit status. Logs the customer id
    and the counts, never the name."""
    customer_id = customer_id.lower() if customer_id.isascii() else customer_id
    shared = config.store if config.store.startswith(POSTGRES_URLS) else None
    fields = {"tracking.customer_id": customer_id, "tracking.ledger_file": config.ledger_path}
    if not _CUSTOMER_ID.match(customer_id):
        log.error("the customer id must be a UUID", extra=fields)
        return 2
    has_file = os.path.exists(config.ledger_path)
    if not has_file and shared is None:
        log.error("there is no ledger file: nothing to erase", extra=fields)
        return 1
    counts: dict[str, int] = {}
    try:
        if has_file:
            erased = erasure.erase_customer(config.ledger_path, customer_id)
            counts["tracking.ledger.requests_erased"] = erased.requests
            counts["tracking.ledger.records_erased"] = erased.records
        if shared is not None:
            # Blanked in the file first, then forwarded, then blanked in PostgreSQL: a batch
            # the forwarder read before the file was blanked would bring the names back.
            if has_file and not _until_forwarded(config.ledger_path, SPOOL_WAIT):
                raise NotErased(
                    "the names are blanked in this host's file, but records of it older than "
                    "the command are still waiting to reach the shared ledger: run the "
                    "command again once it is reachable (tracking_ledger_spool_records)"
                )
            erased = asyncio.run(postgres.erase_customer(shared, customer_id))
            counts["tracking.ledger.shared_requests_erased"] = erased.requests
            counts["tracking.ledger.shared_records_erased"] = erased.records
    except (OSError, sqlite3.Error, NotErased, *postgres.DATABASE_ERRORS) as exc:
        log.error("cannot erase the customer's names", extra={**fields, **error_fields(exc)})
        return 1
    log.info("customer's names erased from the ledger", extra={**fields, **counts})
    return 0


def _until_forwarded(path: str, timeout: float) -> bool:
    """Wait until the shared ledger holds every issue that the file at ``path`` holds now;
    False if it does not within ``timeout`` seconds."""
    db = open_existing(path, read_only=True)
    try:
        (last,) = db.execute("SELECT coalesce(max(id), 0) FROM issue").fetchone()
        deadline = time.monotonic() + timeout
        while (forwarded := spool.forwarded_mark(db)) is not None and forwarded < last:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True
    finally:
        db.close()


def check_below_mark(config: Config) -> None:
    """LedgerAhead if the ledger holds a counter that the store's mark would hand out again.

    Run before the allocator starts, while nothing leases: every counter recorded under the
    store's key must be below its stored mark, or a restore put an older store beside a newer
    ledger. A store that does not exist yet gets a new key, which no record is under.
    """
    if not config.ledger or not os.path.exists(config.ledger_path):
        return
    stored = asyncio.run(_key_and_marks(config.store))
    if stored is None:
        return
    key, marks = stored
    db = open_existing(config.ledger_path, read_only=True)
    try:
        highest = {series: highest_counter(db, key_digest(key, series)) for series in marks}
    finally:
        db.close()
    for series, mark in marks.items():
        found = highest[series]
        if found is None or found < mark:
            continue
        counter, raise_it = (
            ("counter", f"--raise-reserved-to N with N > {found}")
            if series == DEFAULT_SERIES
            else (
                f"counter of series {series}",
                f"--raise-series-reserved-to {series}=N, N > {found}",
            )
        )
        raise LedgerAhead(
            f"the ledger holds a record of {counter} {found}, but the store's reservation mark "
            f"is {mark}: the allocator would issue counters from {mark} again. The store is "
            "older than the ledger (restored from an older backup?). Raise the mark above the "
            f"ledger and above every number issued since the store's backup: run.py {raise_it} "
            "(docs/operations.md, 'Choosing N')"
        )
