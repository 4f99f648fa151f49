"""The application factory: ``create_app(config)`` builds what every worker serves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp_cors
from aiohttp import hdrs, web
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

from allocator.client import AllocatorClient
from config.settings import Config
from ledger.client import LedgerClient
from ledger.postgres import SharedReads
from service import admin, console, labels, listing, verify, views
from service.access_log import AccessLog
from service.blocks import Issuer
from service.correlation import HEADERS as CORRELATION_HEADERS
from service.correlation import CorrelationIds
from service.keys import (
    ACCESS_LOG,
    CLIENT,
    CONFIG,
    CORRELATION_IDS,
    ISSUER,
    LEDGER,
    METRICS,
    S10_ISSUER,
    SHARED_READS,
)
from service.metrics import REPORT_INTERVAL, WorkerMetrics
from service.observe import ISSUE_ROUTE, aiohttp_error
from service.openapi import openapi
from service.records import shared_ledger
from service.s10_blocks import S10Issuer
from service.server.plain import PlainAppRunner
from service.server.runner import AppRunner

ROUTES = (
    (ISSUE_ROUTE, views.next_tracking_number),
    ("/health", views.health),
    ("/metrics", admin.metrics_endpoint),
    ("/allocator/status", admin.allocator_status),
    (listing.ROUTE, listing.list_records),
    (labels.LABEL_ROUTE, labels.one_label),
    (labels.LABELS_ROUTE, labels.listed_labels),
    ("/tracking-numbers/{number}", verify.verify),
    ("/openapi.json", openapi),
    # The operator console's page and files (service/console.py).
    (console.BARE_ROUTE, console.bare),
    (console.ROUTE, console.page),
    (console.ASSET_ROUTE, console.asset),
)


def create_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[CORRELATION_IDS] = CorrelationIds()
    app[ACCESS_LOG] = AccessLog(enabled=config.access_log)
    app[METRICS] = WorkerMetrics()
    # Started in this order, stopped in the reverse: the last report goes out before the
    # client closes, and the access log is flushed after everything else.
    app.cleanup_ctx.extend(
        (_flushed_access_log, _blocks, _ledger, labels.label_drawer, _metrics_reports)
    )
    for path, handler in ROUTES:
        # HEAD runs a GET handler: HEAD of the issuing route would consume numbers that nobody
        # receives, so it is a 405 (docs/reliability.md).
        app.router.add_get(path, handler, allow_head=path != ISSUE_ROUTE)
    app.router.add_post(labels.LABELS_ROUTE, labels.posted_labels)
    if config.cors_origins:
        _allow_cors(app, config.cors_origins)  # before the catch-alls, which it would refuse
    # Errors are routes too, not a middleware: a middleware would cost every request a
    # coroutine (see service/views.py).
    for path, _ in ROUTES:
        app.router.add_route("*", path, views.method_not_allowed)
    app.router.add_route("*", "/{tail:.*}", views.not_found)
    return app


def app_runner(app: web.Application, **kwargs: Any) -> AppRunner | PlainAppRunner:
    """The runner that serves ``app`` (``kwargs`` are aiohttp's): through our shortcuts past
    aiohttp's internals, or with ``aiohttp_shortcuts = false`` aiohttp's own (service/server/)."""
    config = app[CONFIG]
    answer_error = functools.partial(aiohttp_error, app)
    if not config.aiohttp_shortcuts:
        return PlainAppRunner(app, answer_error=answer_error, **kwargs)
    return AppRunner(
        app,
        issue_route=ISSUE_ROUTE,
        answer_error=answer_error,
        header_timeout=config.header_timeout,
        **kwargs,
    )


def _allow_cors(app: web.Application, origins: Sequence[str]) -> None:
    """Let browsers on ``origins`` call the API (GET only; the correlation id readable)."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        allow_headers=CORRELATION_HEADERS,
        expose_headers=("X-Request-ID", "Retry-After"),
        allow_methods=("GET",),
        max_age=3600,
    )
    defaults = dict.fromkeys(origins, options)
    cors = aiohttp_cors.CorsConfig(
        app, defaults=defaults, router_adapter=_AsciiCors(app.router, defaults)
    )
    for route in list(app.router.routes()):
        cors.add(route)


_CORS_REQUEST_HEADERS = (
    hdrs.ORIGIN,
    hdrs.ACCESS_CONTROL_REQUEST_METHOD,
    hdrs.ACCESS_CONTROL_REQUEST_HEADERS,
)


class _AsciiCors(ResourcesUrlDispatcherRouterAdapter):
    """aiohttp-cors's own router adapter, for requests whose CORS headers are ASCII only.

    aiohttp-cors copies the ``Origin`` into its answers, and the requested headers into its
    refusals. A byte that is not UTF-8 reaches it as a lone surrogate, which no answer can carry
    (the answer, and any number in it, would be lost). Browsers send only ASCII there (an
    origin's host is punycode), so such a request gets no CORS: an actual request is answered
    without CORS headers, a preflight is refused (403).
    """

    def is_cors_enabled_on_request(self, request: web.Request) -> bool:
        return _ascii_cors_headers(request) and super().is_cors_enabled_on_request(request)

    async def get_preflight_request_config(
        self, preflight_request: web.Request, origin: str, requested_method: str
    ) -> Mapping[str, Any]:
        if not _ascii_cors_headers(preflight_request):
            return {}  # "no origins are allowed": a 403
        return await super().get_preflight_request_config(
            preflight_request, origin, requested_method
        )


def _ascii_cors_headers(request: web.Request) -> bool:
    headers = request.headers
    return all(headers.get(name, "").isascii() for name in _CORS_REQUEST_HEADERS)


async def _flushed_access_log(app: web.Application) -> AsyncIterator[None]:
    """The access lines still buffered go out when the app stops."""
    yield
    app[ACCESS_LOG].flush()


async def _blocks(app: web.Application) -> AsyncIterator[None]:
    """The allocator client and the worker's blocks, the first of them asked for at once."""
    config = app[CONFIG]
    client = AllocatorClient(config.allocator_socket, config.lease_timeout)
    issuer = Issuer(client, config.lease_timeout)
    app[CLIENT] = client
    app[ISSUER] = issuer
    # S10 series' blocks: none until a series is asked for.
    app[S10_ISSUER] = s10_issuer = S10Issuer(client, config)
    issuer.prefetch()
    yield
    await s10_issuer.close()
    await issuer.close()  # and the client with it


async def _ledger(app: web.Application) -> AsyncIterator[None]:
    """The ledger's client, or None with the ledger off; and with a PostgreSQL store, the
    connections that read the shared ledger."""
    config = app[CONFIG]
    client = LedgerClient(config.ledger_socket, config.ledger_timeout) if config.ledger else None
    app[LEDGER] = client
    shared = None
    if config.ledger and shared_ledger(config):
        shared = SharedReads(config.store)
        await shared.start()
    app[SHARED_READS] = shared
    yield
    if shared is not None:
        await shared.close()
    if client is not None:
        await client.close()


async def _metrics_reports(app: web.Application) -> AsyncIterator[None]:
    """The worker's counts, sent to the allocator every second and once more at the end."""
    reporting = asyncio.create_task(_report(app))
    yield
    reporting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporting
    app[METRICS].report_to(app[CLIENT])


async def _report(app: web.Application) -> None:
    while True:
        await asyncio.sleep(REPORT_INTERVAL)
        app[METRICS].report_to(app[CLIENT])
