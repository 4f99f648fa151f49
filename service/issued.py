"""What is made of issued numbers: the answer's body, and the ledger's records.

Shared by the hot path (service/views.py) and idempotent requests (service/idempotency.py).
"""

from __future__ import annotations

import datetime
import socket

import msgspec
from aiohttp import web

from allocator.series import DEFAULT_SERIES, s10_series
from ledger.records import Issue, Issued
from service.keys import CLIENT, LEDGER
from service.params import TrackingRequest

# The host that issued a number, in its record: hosts sharing a PostgreSQL store differ.
HOST = socket.gethostname()


class RequestMetadata(msgspec.Struct):
    origin_country: str
    destination_country: str
    weight_kg: str
    customer_slug: str


class IssuedNumber(msgspec.Struct):
    tracking_number: str
    created_at: datetime.datetime
    correlation_id: str
    request_metadata: RequestMetadata


class IssuedNumbers(IssuedNumber):
    """The answer to a request with a ``count``: the first number, and all of them."""

    tracking_numbers: list[str]


_encoder = msgspec.json.Encoder()
_zones: dict[str, datetime.timezone] = {}


def _zone_of(timestamp: str) -> datetime.timezone:
    """The UTC offset at the end of a validated RFC 3339 timestamp, as a timezone."""
    offset = "Z" if timestamp[-1] in "Zz" else timestamp[-6:]
    zone = _zones.get(offset)
    if zone is None:
        if offset == "Z":
            zone = datetime.UTC
        else:
            sign = -1 if offset[0] == "-" else 1
            delta = datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            zone = datetime.timezone(sign * delta)
        _zones[offset] = zone  # at most 24 * 60 * 2 + 1 entries
    return zone


def microseconds(ns: int) -> int:
    """A time of issue as it is shown: truncated to the microsecond, so that a record is never
    shown after it was issued (a listing from its shown time, ``issued_from``, then holds it).
    A whole number of microseconds as a float of seconds reads back exactly (checked to 2191)."""
    return ns // 1000


def body_for(
    query: TrackingRequest, numbers: list[str], correlation_id: str, issued_at_ns: int
) -> bytes:
    """The JSON answer; with a ``count``, it also lists every number."""
    metadata = RequestMetadata(
        query.origin_country_id, query.destination_country_id, query.weight, query.customer_slug
    )
    issued_at = datetime.datetime.fromtimestamp(
        microseconds(issued_at_ns) / 1e6, _zone_of(query.created_at)
    )
    if query.count is None:
        return _encoder.encode(IssuedNumber(numbers[0], issued_at, correlation_id, metadata))
    return _encoder.encode(IssuedNumbers(numbers[0], issued_at, correlation_id, metadata, numbers))


def issue_for(
    query: TrackingRequest,
    issued: list[Issued],
    correlation_id: str,
    issued_at_ns: int,
    idempotency_key_digest: bytes | None = None,
) -> Issue:
    """What the ledger keeps of a request that issued numbers: every field, and the numbers."""
    return Issue(
        issued_at_ns,
        query.origin_country_id,
        query.destination_country_id,
        query.weight,
        query.created_at,
        query.customer_id,
        query.customer_name,
        query.customer_slug,
        correlation_id,
        HOST,
        idempotency_key_digest,
        issued,
    )


def series_of(query: TrackingRequest) -> str:
    """The counter that made the numbers of ``query``: an S10 series, or our own."""
    if query.service_indicator is None:
        return DEFAULT_SERIES
    return s10_series(query.service_indicator, query.origin_country_id)


async def recorded(
    app: web.Application,
    query: TrackingRequest,
    issued: list[Issued],
    correlation_id: str,
    issued_at_ns: int,
    idempotency_key_digest: bytes | None = None,
) -> None:
    """Return once the records of ``issued`` are durable (at once with the ledger off); raises
    LedgerError when they cannot be, and the numbers must not be delivered."""
    ledger = app[LEDGER]
    if ledger is not None:
        key = app[CLIENT].key
        assert key is not None  # the numbers were made with it
        issue = issue_for(query, issued, correlation_id, issued_at_ns, idempotency_key_digest)
        await ledger.record(key, issue, series_of(query))
