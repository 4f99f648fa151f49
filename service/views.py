"""The request handlers.

``next_tracking_number`` is the hot path. It deliberately does in one function what
middlewares would otherwise do (correlation id, error mapping, metrics, the access log),
because a middleware costs every request a coroutine; see docs/performance.md. The other
handlers get the same through the ``observed`` decorator.
"""

from __future__ import annotations

import datetime
import time

import msgspec
from aiohttp import web

from allocator.protocol import AllocatorError
from service import errors
from service.keys import CORRELATION_IDS, ISSUER, METRICS
from service.observe import ISSUE_ROUTE, UNMATCHED_ROUTE, observed, record
from service.params import TrackingRequest, validate

JSON = "application/json"


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


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    buffered_numbers: int
    allocator_connected: bool
    correlation_id: str
    error: str | None = None


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


async def next_tracking_number(request: web.Request) -> web.Response:
    """The hot path. It records its own metrics and access line (see the module docstring)."""
    started = time.perf_counter_ns()
    app = request.app
    correlation_id = app[CORRELATION_IDS].of(request.headers)
    url = request.rel_url
    query = validate(url.raw_query_string, url.query)
    if not isinstance(query, TrackingRequest):
        response = errors.invalid_parameters(query, correlation_id)
        record(app, request, ISSUE_ROUTE, 400, started, correlation_id, ISSUE_ROUTE)
        return response
    origin, destination = query.origin_country_id, query.destination_country_id
    issuer = app[ISSUER]
    number = issuer.issue_nowait(origin, destination)
    if number is None:
        try:
            number = await issuer.issue(origin, destination)
        except AllocatorError:
            app[METRICS].lease_failed()
            record(app, request, ISSUE_ROUTE, 503, started, correlation_id, ISSUE_ROUTE)
            return errors.unavailable(correlation_id)
    body = _encoder.encode(
        IssuedNumber(
            number,
            datetime.datetime.now(_zone_of(query.created_at)),
            correlation_id,
            RequestMetadata(origin, destination, query.weight, query.customer_slug),
        )
    )
    app[METRICS].issued()
    record(
        app,
        request,
        ISSUE_ROUTE,
        200,
        started,
        correlation_id,
        ISSUE_ROUTE,
        (number, origin, destination, query.customer_id, query.customer_slug),
    )
    response = web.Response(body=body, content_type=JSON)
    response.headers["X-Request-ID"] = correlation_id  # cheaper than a headers= dict
    return response


@observed()
async def health(request: web.Request, correlation_id: str) -> web.Response:
    issuer = request.app[ISSUER]
    issuer.prefetch()  # a probe may be the only traffic: let it find out about the allocator
    body = Health(
        status="ok",
        buffered_numbers=issuer.buffered,
        allocator_connected=issuer.connected,
        correlation_id=correlation_id,
    )
    headers = {"X-Request-ID": correlation_id}
    if issuer.can_issue:
        return web.Response(body=_encoder.encode(body), content_type=JSON, headers=headers)
    body.status = "unavailable"
    body.error = "No numbers in hand and the allocator cannot be reached"
    headers["Retry-After"] = str(errors.RETRY_AFTER_SECONDS)
    return web.Response(status=503, body=_encoder.encode(body), content_type=JSON, headers=headers)


@observed(UNMATCHED_ROUTE)
async def not_found(request: web.Request, correlation_id: str) -> web.Response:
    return errors.not_found(correlation_id)


@observed()
async def method_not_allowed(request: web.Request, correlation_id: str) -> web.Response:
    return errors.method_not_allowed("GET, HEAD", correlation_id)
