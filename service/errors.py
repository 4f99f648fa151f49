"""Everything a client sees when something is wrong: one JSON shape, for every status.

This is the one place where failures become HTTP statuses: validation → 400, unknown path →
404, wrong method → 405, anything from the allocator → 503 with ``Retry-After``, a bug → 500
(the stack trace goes to the log, never to the client). aiohttp's own errors (malformed
requests, oversized headers) are answered in the same shape by ``JsonErrorRequestHandler``.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.answers import JsonAnswer
from service.dispatch import issuing_first
from service.keys import CORRELATION_IDS
from service.limits import HeaderTimeoutRequestHandler
from service.observe import record, route_of

RETRY_AFTER_SECONDS = 1
INVALID_PARAMETERS = "Invalid request parameters"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    details: dict[str, list[str]] | None = None
    correlation_id: str = ""


_encoder = msgspec.json.Encoder()


def json_error(
    status: int,
    message: str,
    correlation_id: str,
    *,
    details: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JsonAnswer:
    body = _encoder.encode(ErrorBody(message, details, correlation_id))
    return JsonAnswer(body, correlation_id, status=status, headers=headers)


def invalid_parameters(details: dict[str, list[str]], correlation_id: str) -> JsonAnswer:
    return json_error(400, INVALID_PARAMETERS, correlation_id, details=details)


def unavailable(correlation_id: str) -> JsonAnswer:
    """Any AllocatorError: no number can be issued right now; retry shortly."""
    return json_error(
        503,
        "No tracking number can be issued right now; retry shortly",
        correlation_id,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def unauthorized(correlation_id: str) -> JsonAnswer:
    return json_error(
        401,
        "A valid admin bearer token is required",
        correlation_id,
        headers={"WWW-Authenticate": 'Bearer realm="tracking-numbers"'},
    )


def forbidden(correlation_id: str) -> JsonAnswer:
    return json_error(403, "Operator endpoints answer loopback clients only", correlation_id)


def not_found(correlation_id: str) -> JsonAnswer:
    return json_error(404, "Not found", correlation_id)


def method_not_allowed(allowed: str, correlation_id: str) -> JsonAnswer:
    return json_error(405, "Method not allowed", correlation_id, headers={"Allow": allowed})


# The base bounds how long a request head may take (service/limits.py): slow clients.
class JsonErrorRequestHandler(HeaderTimeoutRequestHandler):
    """aiohttp's connection handler, with its plain-text and HTML error pages made JSON."""

    app: web.Application

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp logs the error and refuses if part of a response was already sent.
        super().handle_error(request, status, exc, message)
        phrase = "Internal server error" if status >= 500 else HTTPStatus(status).phrase
        response = self._recorded(request, status, phrase)
        response.force_close()
        return response

    def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        # aiohttp's own HTTP exceptions reach the client as text/plain: the router raises
        # HTTPNotFound for a target that no route can match ("OPTIONS *", "CONNECT host:443",
        # "GET http://host" with no path). Our handlers never raise them, so the hot path pays
        # one attribute test (aiohttp's own mark: isinstance would go through ABCMeta, 1 µs);
        # a plain def (not async) adds no coroutine per request.
        if getattr(resp, "__http_exception__", False):
            allow = resp.headers.get("Allow")
            resp = self._recorded(
                request,
                resp.status,
                HTTPStatus(resp.status).phrase,
                headers={"Allow": allow} if allow is not None else None,
            )
        if self._manager.draining:  # type: ignore[union-attr]
            # The worker is stopping: say so, so that the client opens its next connection to
            # another worker (or the next instance) rather than reusing this one.
            resp.force_close()
        return super().finish_response(request, resp, start_time)

    def _recorded(
        self,
        request: BaseRequest,
        status: int,
        phrase: str,
        headers: dict[str, str] | None = None,
    ) -> JsonAnswer:
        """One of aiohttp's own answers in our JSON shape, counted and logged like ours.
        aiohttp keeps to itself when such a request began: its access line says 0 ns."""
        correlation_id = self.app[CORRELATION_IDS].of(request.headers)
        started = time.perf_counter_ns()
        record(
            self.app,
            request,
            route=route_of(request),
            status=status,
            started_ns=started,
            correlation_id=correlation_id,
        )
        return json_error(status, phrase, correlation_id, headers=headers)


class JsonErrorServer(web.Server):
    def __init__(self, app: web.Application, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        self.draining = False  # set by the worker when it stops: every answer closes

    def awaiting_a_first_request(self) -> int:
        """Connections that have not sent a request yet (aiohttp's private ``_request_count``
        and ``_connections``; tests/system/test_restarts.py fails if they change)."""
        return sum(1 for handler in self._connections if handler._request_count == 0)

    def __call__(self) -> RequestHandler:
        handler = JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.app = self.app
        return handler


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own errors in JSON, and the
    issuing route before the router (service/dispatch.py)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = server._kwargs
        return JsonErrorServer(
            self.app,
            issuing_first(self.app, server.request_handler),
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **kwargs,
        )
