"""The body of the answer that carries issued numbers.

Shared by the hot path (service/views.py) and idempotent requests (service/idempotency.py).
"""

from __future__ import annotations

import datetime

import msgspec

from service.params import TrackingRequest


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


def body_for(query: TrackingRequest, numbers: list[str], correlation_id: str) -> bytes:
    """The JSON answer; with a ``count``, it also lists every number."""
    metadata = RequestMetadata(
        query.origin_country_id, query.destination_country_id, query.weight, query.customer_slug
    )
    issued_at = datetime.datetime.now(_zone_of(query.created_at))
    if query.count is None:
        return _encoder.encode(IssuedNumber(numbers[0], issued_at, correlation_id, metadata))
    return _encoder.encode(IssuedNumbers(numbers[0], issued_at, correlation_id, metadata, numbers))
