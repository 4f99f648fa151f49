"""The request handlers.

``next_tracking_number`` is the hot path. It deliberately does in one function what
middlewares would otherwise do (correlation id, error mapping, metrics, the access log),
because a middleware costs every request a coroutine; see docs/performance.md. The other
handlers get the same through the ``observed`` decorator.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from allocator.errors import AllocatorError, SeriesExhausted
from ledger.errors import LedgerError
from service import errors, idempotency, labels
from service.issued import body_for, recorded
from service.keys import CORRELATION_IDS, ISSUER, METRICS, S10_ISSUER
from service.observe import ISSUE_ROUTE, UNMATCHED_ROUTE, finish, observed, route_of
from service.params import Invalid, validate
from service.server.answers import JsonAnswer

if TYPE_CHECKING:
    from service.blocks import Issuer
    from service.s10_blocks import S10Issuer


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    buffered_numbers: int
    allocator_connected: bool
    correlation_id: str
    error: str | None = None


_encoder = msgspec.json.Encoder()


async def next_tracking_number(request: web.Request) -> web.StreamResponse:
    """The hot path, in order: parameters, blocks and number, record, answer, access line."""
    started = time.perf_counter_ns()
    app = request.app
    correlation_id = app[CORRELATION_IDS].of(request.headers)
    url = request.rel_url
    query = validate(url.raw_query_string, url.query)
    numbers = None  # those the answer delivers
    # Invalid is a NamedTuple, not a msgspec Struct: isinstance against a Struct goes through
    # its metaclass on every valid request (docs/performance.md).
    if isinstance(query, Invalid):
        response = errors.invalid_parameters(query.problems, correlation_id)
    elif query.service_indicator is not None and (
        refused := app[S10_ISSUER].refusal(query.service_indicator)
    ):
        # Before the Idempotency-Key's path too: an indicator the operator does not issue
        # gets no number, whichever path would issue it.
        response = errors.invalid_parameters({"service_indicator": [refused]}, correlation_id)
    elif idempotency.HEADER in request.headers:
        response, numbers = await idempotency.answer(request, query, correlation_id)
    else:
        origin, indicator = query.origin_country_id, query.service_indicator
        # Ours, of the two countries; or UPU S10's, of the indicator and the origin country.
        issuer: Issuer | S10Issuer
        if indicator is None:
            issuer, numbers_of = app[ISSUER], (origin, query.destination_country_id)
        else:
            issuer, numbers_of = app[S10_ISSUER], (indicator, origin)
        try:
            # One number, most often from the blocks in hand: no await.
            one = issuer.issue_nowait(*numbers_of) if query.count is None else None
            issued = (
                [one] if one is not None else await issuer.issue_many(*numbers_of, query.how_many)
            )
        except SeriesExhausted as exc:
            response = errors.series_exhausted(exc.series, correlation_id)
        except AllocatorError:
            app[METRICS].lease_failed()
            response = errors.unavailable(correlation_id)
        else:
            issued_at_ns = time.time_ns()
            try:
                await recorded(app, query, issued, correlation_id, issued_at_ns)
            except LedgerError:
                response = errors.unavailable(correlation_id)  # the numbers become gaps
            else:
                numbers = [number for _, number in issued]
                body = body_for(query, numbers, correlation_id, issued_at_ns)
                if query.label is not None:
                    body = await labels.labelled_body(app, query, body, numbers, issued_at_ns)
                response = JsonAnswer(body, correlation_id)
    return finish(request, response, started, correlation_id, query, numbers)


@observed()
async def health(request: web.Request, correlation_id: str) -> web.StreamResponse:
    issuer = request.app[ISSUER]
    issuer.prefetch()  # a probe may be the only traffic: let it find out about the allocator
    body = Health(
        status="ok",
        buffered_numbers=issuer.buffered,
        allocator_connected=issuer.connected,
        correlation_id=correlation_id,
    )
    if issuer.can_issue:
        return JsonAnswer(_encoder.encode(body), correlation_id)
    body.status = "unavailable"
    body.error = "No numbers in hand and the allocator cannot be reached"
    return JsonAnswer(
        _encoder.encode(body),
        correlation_id,
        status=503,
        headers={"Retry-After": str(errors.RETRY_AFTER_SECONDS)},
    )


@observed(UNMATCHED_ROUTE)
async def not_found(request: web.Request, correlation_id: str) -> web.StreamResponse:
    return errors.not_found(correlation_id)


@observed()
async def method_not_allowed(request: web.Request, correlation_id: str) -> web.StreamResponse:
    # HEAD of the issuing route would consume numbers (service/app.py).
    allowed = "GET" if route_of(request) == ISSUE_ROUTE else "GET, HEAD"
    return errors.method_not_allowed(allowed, correlation_id)
