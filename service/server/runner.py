"""The server assembly: aiohttp's runner, server and connection handler, made ours.

``AppRunner`` is ``web.AppRunner`` whose server puts the issuing route before the router
(dispatch.py) and whose connections bound each request head's time (header_timeout.py) and
answer aiohttp's own errors in our JSON shape (service/errors.py), counted and logged like
ours. While the worker drains, every answer closes its connection (service/worker.py).

aiohttp builds its server in ``AppRunner._make_server`` and its connection handlers in
``Server.__call__``; this rebuilds the one and overrides the other, reading the private names
that tests/service/test_aiohttp_private_names.py lists.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.errors import json_error
from service.keys import CORRELATION_IDS
from service.observe import record, route_of
from service.server.answers import JsonAnswer
from service.server.dispatch import issuing_first
from service.server.header_timeout import HeaderTimeoutRequestHandler


# The base bounds how long a request head may take (header_timeout.py): slow clients.
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
        # one attribute test (aiohttp's own mark: isinstance would go through ABCMeta's slower
        # check); a plain def (not async) adds no coroutine per request.
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

    def __call__(self) -> RequestHandler:
        handler = JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.app = self.app
        return handler


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own errors in JSON, and the
    issuing route before the router (dispatch.py)."""

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
