"""What the ledger says of a number someone looks up: whether its record holds this very
number, and the record as the API shows it. For both kinds of number (``service.verify``,
``service.verify_s10``) and for labels (``service.labels``).
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

import msgspec
from aiohttp import web

from config.settings import Config
from config.urls import POSTGRES_URLS
from ledger import postgres, sqlite
from ledger.records import Record
from service.admin import reads_records
from service.issued import microseconds
from service.keys import CONFIG, SHARED_READS


class RecordBody(msgspec.Struct):
    """A ledger record as the API shows it."""

    tracking_number: str
    counter: int
    issued_at: datetime.datetime  # server time, UTC
    origin_country: str
    destination_country: str
    weight_kg: str
    created_at: str  # the client's timestamp, with its offset, as it was sent
    customer_id: str
    customer_name: str
    customer_slug: str
    correlation_id: str
    host: str
    idempotency_key_sha256: str | None  # hex, when the request carried an Idempotency-Key

    @classmethod
    def of(cls, record: Record) -> RecordBody:
        digest = record.idempotency_key_digest
        return cls(
            record.number,
            record.counter,
            datetime.datetime.fromtimestamp(microseconds(record.issued_at_ns) / 1e6, datetime.UTC),
            record.origin,
            record.destination,
            record.weight,
            record.created_at,
            record.customer_id,
            record.customer_name,
            record.customer_slug,
            record.correlation_id,
            record.host,
            None if digest is None else digest.hex(),
        )


NOT_RECORDED = (
    "its counter was handed out, but the ledger holds no record of this number: it was issued "
    "before the ledger was on, its record is past retention, or it was never delivered"
)


async def read_record(
    app: web.Application, key: bytes, counter: int, series: str = ""
) -> Record | None:
    """The record of ``counter`` (of S10 ``series``, if any): from the shared ledger with a
    PostgreSQL store (any host's numbers), else from this host's ledger file."""
    config, shared = app[CONFIG], app[SHARED_READS]
    if shared is not None:
        return await postgres.read_record(shared, config.ledger_path, key, counter, series)
    return await sqlite.read_record(config.ledger_path, key, counter, series)


def shared_ledger(config: Config) -> bool:
    """Whether the hosts of this store share one ledger (a PostgreSQL store)."""
    return config.store.startswith(POSTGRES_URLS)


class Vouched(NamedTuple):
    """The operator's part of a verdict: issued, why not when its counter was handed out,
    and the record (to clients with the admin token)."""

    issued: bool
    note: str | None = None
    record: RecordBody | None = None


async def vouch(
    request: web.Request,
    key: bytes,
    counter: int,
    series: str,
    number: str,
    leased: bool,
    valid: bool,
) -> Vouched:
    """Whether ``number``, whose serial is ``counter`` of ``series`` under ``key``, was issued:
    with the ledger off, when its counter was ``leased`` (below the allocator's ``next``); with
    it on, when the counter's record holds this very number (the same serial with other
    country codes was never issued). LedgerError when the ledger cannot be read."""
    config = request.app[CONFIG]
    if not config.ledger:
        return Vouched(leased)
    # ``next`` is this host's: another host's counters may lie above it, and only the shared
    # ledger knows them.
    if not (leased or (valid and shared_ledger(config))):
        return Vouched(False)
    found = await read_record(request.app, key, counter, series)
    if found is None or found.number != number:
        return Vouched(False, NOT_RECORDED if leased else None)
    return Vouched(True, None, RecordBody.of(found) if reads_records(request) else None)
