"""The issuing route, matched before aiohttp's router.

aiohttp resolves every request through its router and application: an index lookup, a new
match-info object, its freezing, an ``Expect`` check, then the handler, all in Python. Nearly
all of our traffic is ``GET /next-tracking-number`` (the app names it when it builds its runner:
service/app.py), so that is matched first, by two string
comparisons, and given the match info the router would give it, resolved once at start-up
(it is frozen, and holds no per-request state). Everything else, ``HEAD`` of the same path
included, goes through aiohttp as usual. See docs/performance.md.

It sets ``Request._match_info``, as aiohttp's ``Application._handle`` does: it is that method's
copy for one route, so a new aiohttp's ``_handle`` must be read before the new version is
allowed (service/server/__init__.py); tests/service/test_aiohttp_private_names.py fails until
someone has.

Every request passes here first, so this is also where an ``Expect`` header that is not ASCII
is refused, before aiohttp's expect handler would fail on it (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def issuing_first(app: web.Application, handle: RequestHandler, route_path: str) -> RequestHandler:
    """``handle`` (the application's own request handler), with ``GET`` of the issuing route
    (at ``route_path``) answered before it (not with middlewares, which the shortcut would
    skip), and an ``Expect`` header that is not ASCII refused before it."""
    if app.middlewares:
        return _expect_checked(handle)
    route = next(
        route
        for route in app.router.routes()
        if route.method == hdrs.METH_GET
        and route.resource is not None
        and route.resource.canonical == route_path
    )
    match_info = UrlMappingMatchInfo({}, route)
    match_info.add_app(app)
    match_info.freeze()
    issue = route.handler
    checked = _expect_checked(handle)

    def dispatch(request: web.Request) -> Awaitable[web.StreamResponse]:
        # The router compares the same decoded path; an Expect header needs its handler.
        if (
            request.method == hdrs.METH_GET
            and request.rel_url.path_safe == route_path
            and hdrs.EXPECT not in request.headers
        ):
            request._match_info = match_info
            return issue(request)
        return checked(request)

    return dispatch


def _expect_checked(handle: RequestHandler) -> RequestHandler:
    """``handle``, but a non-ASCII ``Expect`` is a 417 (JSON, as aiohttp's own errors are).

    aiohttp's own expect handler copies an unknown expectation into its 417's text, and a byte
    that is not UTF-8 (a lone surrogate by then) makes that text fail to encode: a 500.
    """

    def checked(request: web.Request) -> Awaitable[web.StreamResponse]:
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None and not expect.isascii():
            raise web.HTTPExpectationFailed()
        return handle(request)

    return checked
