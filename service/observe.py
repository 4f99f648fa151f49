"""Counting and logging each request: the access line and the metrics, in one place.

Handlers call ``record`` (the hot path, directly) or are wrapped by ``observed``; aiohttp's
own error answers are recorded by ``service.errors.JsonErrorRequestHandler``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from service.keys import ACCESS_LOG, CORRELATION_IDS, METRICS

ISSUE_ROUTE = "/next-tracking-number"
UNMATCHED_ROUTE = "unmatched"  # the metrics label of requests that matched no route
# The audit trail of issued numbers, in AccessLog.write's order: (first) number, origin,
# destination, weight, the request's created_at, customer id, customer slug, and every number
# of a request with a count. A plain tuple: a NamedTuple costs about 1 µs more per request.
Audit = tuple[str, str, str, str, str, str, str, list[str] | None]


def record(
    app: web.Application,
    request: web.BaseRequest,
    route: str,
    status: int,
    started_ns: int,
    correlation_id: str,
    path: str | None = None,
    audit: Audit | None = None,
) -> None:
    """Count a finished request and write its access line.

    ``audit`` is what the line of issued numbers carries: every request field but the
    customer's name (see ``Audit``).
    """
    elapsed = time.perf_counter_ns() - started_ns
    method = request.method
    app[METRICS].observe(route, method, status, elapsed / 1e9)
    app[ACCESS_LOG].write(
        correlation_id, method, path or request.path, status, elapsed, *audit or ()
    )


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
            name = route or route_of(request)
            record(app, request, name, response.status, started, correlation_id)
            return response

        return observed_handler

    return wrap


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
