"""Plain aiohttp: the worker served by aiohttp's own runner, router and ``prepare``.

With ``aiohttp_shortcuts = false`` none of this package's shortcuts serve: no private name of
aiohttp is read, so a newcomer debugs on documented aiohttp, and a new aiohttp can ship while
tests/service/test_aiohttp_private_names.py's fingerprints are reviewed. What the shortcuts
did for clients is done here through aiohttp's public API, with one middleware:

- the router's own errors (a target no route matches: ``OPTIONS *``) and a handler's crash are
  answered by the app's ``AnswerError``, in the service's JSON shape;
- every ``JsonAnswer`` goes aiohttp's way;
- while the worker drains, every answer closes its connection.

What aiohttp answers before any middleware runs stays aiohttp's own, text/plain: a malformed
request head (400, 413, 431), an ``Expect`` it refuses (417, and a 500 for one that is not
ASCII). And no request head has a deadline of its own (header_timeout.py): an idle or slow
connection is closed at ``keepalive_timeout``. docs/reliability.md says so.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from service.server.answers import JsonAnswer
from service.server.dispatch import RequestHandler
from service.server.runner import AnswerError

# aiohttp's own logger for a handler's crash, as its connection handler logs one.
log = logging.getLogger("aiohttp.server")


class PlainAppRunner(web.AppRunner):
    """``web.AppRunner`` itself, given the middleware that keeps the service's answers."""

    def __init__(self, app: web.Application, *, answer_error: AnswerError, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.draining = False

        @web.middleware
        async def plain_answers(
            request: web.Request, handler: RequestHandler
        ) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as refused:
                allow = refused.headers.get("Allow")
                response = answer_error(
                    request,
                    refused.status,
                    HTTPStatus(refused.status).phrase,
                    {"Allow": allow} if allow is not None else None,
                )
            except Exception:
                log.exception("Error handling request")
                response = answer_error(request, 500, "Internal server error", None)
                response.force_close()
            if isinstance(response, JsonAnswer):
                response.aiohttp_prepares = True
            if self.draining:
                response.force_close()
            return response

        app.middlewares.append(plain_answers)

    def drain(self) -> None:
        """From now on, every answer closes its connection (the worker is stopping)."""
        self.draining = True
