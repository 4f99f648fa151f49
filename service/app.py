"""The application factory: ``create_app(config)`` builds what every worker serves."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from allocator.client import AllocatorClient
from config.settings import Config
from service import views
from service.correlation import CorrelationIds
from service.issuer import Issuer
from service.keys import CONFIG, CORRELATION_IDS, ISSUER
from service.openapi import openapi

ROUTES = (
    ("/next-tracking-number", views.next_tracking_number),
    ("/health", views.health),
    ("/openapi.json", openapi),
)


def create_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[CORRELATION_IDS] = CorrelationIds()
    app.cleanup_ctx.append(_issuer)
    # Errors are routes too, not a middleware: a middleware would cost every request a
    # coroutine (see service/views.py).
    for path, handler in ROUTES:
        app.router.add_get(path, handler)
        app.router.add_route("*", path, views.method_not_allowed)
    app.router.add_route("*", "/{tail:.*}", views.not_found)
    return app


async def _issuer(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    issuer = Issuer(
        AllocatorClient(config.allocator_socket, config.lease_timeout), config.lease_timeout
    )
    app[ISSUER] = issuer
    issuer.prefetch()
    yield
    await issuer.close()
