"""The server assembly: aiohttp's runner, server and connection handler, made ours.

``AppRunner`` is ``web.AppRunner`` whose server puts the issuing route before the router
(dispatch.py) and whose connections bound each request head's time (header_timeout.py) and
answer aiohttp's own errors through the ``AnswerError`` the app hands it (the service's JSON
shape, counted and logged like its own answers). While the worker drains, every answer closes
its connection (service/worker.py).

aiohttp builds its server in ``AppRunner._make_server`` and its connection handlers in
``Server.__call__``; this rebuilds the one and overrides the other, reading the private names
that tests/service/test_aiohttp_private_names.py lists.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.server.dispatch import issuing_first
from service.server.header_timeout import HeaderTimeoutRequestHandler

AnswerError = Callable[[BaseRequest, int, str, "dict[str, str] | None"], web.StreamResponse]
"""Answers one of aiohttp's own errors (the request, its status, the status's phrase, extra
headers) in the service's shape, counted and logged: the app hands it to the runner."""


# The base bounds how long a request head may take (header_timeout.py): slow clients.
class JsonErrorRequestHandler(HeaderTimeoutRequestHandler):
    """aiohttp's connection handler, with its plain-text and HTML error pages made JSON."""

    answer_error: AnswerError  # set by the server that makes the handler, before it connects

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
        response = self.answer_error(request, status, phrase, None)
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
            resp = self.answer_error(
                request,
                resp.status,
                HTTPStatus(resp.status).phrase,
                {"Allow": allow} if allow is not None else None,
            )
        if self._manager.draining:  # type: ignore[union-attr]
            # The worker is stopping: say so, so that the client opens its next connection to
            # another worker (or the next instance) rather than reusing this one.
            resp.force_close()
        return super().finish_response(request, resp, start_time)


class JsonErrorServer(web.Server):
    def __init__(
        self, answer_error: AnswerError, header_timeout: float, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.answer_error = answer_error
        self.header_timeout = header_timeout
        self.draining = False  # set by the worker when it stops: every answer closes

    def __call__(self) -> RequestHandler:
        handler = JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.answer_error = self.answer_error
        handler.header_timeout = self.header_timeout
        return handler


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own errors with ``answer_error``
    and bound each request head to ``header_timeout`` seconds, and whose server answers the
    issuing route (``GET`` of ``issue_route``) before the router (dispatch.py)."""

    def __init__(
        self,
        app: web.Application,
        *,
        issue_route: str,
        answer_error: AnswerError,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._issue_route = issue_route
        self._answer_error = answer_error
        self._header_timeout = header_timeout

    def drain(self) -> None:
        """From now on, every answer closes its connection (the worker is stopping)."""
        server = self.server
        assert isinstance(server, JsonErrorServer), "the runner is not set up"
        server.draining = True

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = server._kwargs
        return JsonErrorServer(
            self._answer_error,
            self._header_timeout,
            issuing_first(self.app, server.request_handler, self._issue_route),
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **kwargs,
        )
