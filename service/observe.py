"""Counting and logging each request: the access line and the metrics, in one place.

The issuing route's handler ends with ``finish``; the other handlers are wrapped by
``observed``; aiohttp's own errors are answered and recorded by ``aiohttp_error``, which the app
hands to its runner (service/server/). All of them go through ``record``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from service.access_log import Audit
from service.errors import json_error
from service.keys import ACCESS_LOG, CORRELATION_IDS, METRICS
from service.params import Invalid, TrackingRequest

ISSUE_ROUTE = "/next-tracking-number"
UNMATCHED_ROUTE = "unmatched"  # the metrics label of requests that matched no route
Answer = TypeVar("Answer", bound=web.StreamResponse)


def record(
    app: web.Application,
    request: web.BaseRequest,
    *,
    route: str,
    status: int,
    started_ns: int,
    correlation_id: str,
    path: str | None = None,
    audit: Audit | None = None,
) -> None:
    """Count a finished request and write its access line.

    ``route`` is its metrics label, ``path`` its ``url.path`` (the request's by default), and
    ``audit`` the line's record of the numbers it delivered.
    """
    elapsed = time.perf_counter_ns() - started_ns
    method = request.method
    app[METRICS].observe(route, method, status, elapsed / 1e9)
    app[ACCESS_LOG].write(
        request_id=correlation_id,
        method=method,
        path=path or request.path,
        status=status,
        duration_ns=elapsed,
        audit=audit,
    )


def finish(
    request: web.Request,
    response: Answer,
    started_ns: int,
    correlation_id: str,
    query: TrackingRequest | Invalid,
    numbers: list[str] | None,
) -> Answer:
    """Record an answer of the issuing route, and return it.

    ``numbers`` are those the answer delivers for the first time (None if it delivers none): they
    are counted as issued, and the access line audits them with the valid ``query`` they answer.
    """
    app = request.app
    audit = None
    if numbers is not None:
        assert isinstance(query, TrackingRequest), "numbers answer a valid query only"
        app[METRICS].issued(len(numbers))
        audit = Audit(
            number=numbers[0],
            origin=query.origin_country_id,
            destination=query.destination_country_id,
            weight=query.weight,
            created_at=query.created_at,
            customer_id=query.customer_id,
            customer_slug=query.customer_slug,
            numbers=None if query.count is None else numbers,
        )
    record(
        app,
        request,
        route=ISSUE_ROUTE,
        status=response.status,
        started_ns=started_ns,
        correlation_id=correlation_id,
        path=ISSUE_ROUTE,  # the route's own: cheaper than the request's, and the same
        audit=audit,
    )
    return response


Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def observed(route: str | None = None) -> Callable[[Handler], AiohttpHandler]:
    """Give a handler its correlation id, and count and log what it answers.

    ``route`` names the route in metrics; by default, the matched resource's path.
    """

    def wrap(handler: Handler) -> AiohttpHandler:
        @functools.wraps(handler)
        async def observed_handler(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter_ns()
            app = request.app
            correlation_id = app[CORRELATION_IDS].of(request.headers)
            response = await handler(request, correlation_id)
            record(
                app,
                request,
                route=route or route_of(request),
                status=response.status,
                started_ns=started,
                correlation_id=correlation_id,
            )
            return response

        return observed_handler

    return wrap


def aiohttp_error(
    app: web.Application,
    request: web.BaseRequest,
    status: int,
    phrase: str,
    headers: dict[str, str] | None,
) -> web.StreamResponse:
    """One of aiohttp's own errors in our JSON shape, counted and logged like ours.
    aiohttp keeps to itself when such a request began: its access line says 0 ns."""
    correlation_id = app[CORRELATION_IDS].of(request.headers)
    record(
        app,
        request,
        route=route_of(request),
        status=status,
        started_ns=time.perf_counter_ns(),
        correlation_id=correlation_id,
    )
    return json_error(status, phrase, correlation_id, headers=headers)


def route_of(request: web.BaseRequest) -> str:
    """The metrics label of a request: its route's path template, or ``unmatched``."""
    try:
        match_info = request.match_info  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # a malformed request never reached the router
        return UNMATCHED_ROUTE
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical
