"""issuing_first: which requests take the shortcut, and that they get what the router gives."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from service.observe import ISSUE_ROUTE, route_of
from service.params import REQUIRED
from service.server.dispatch import issuing_first

ROUTER = web.Response(text="router")
NAME = web.AppKey("name", str)


async def _issue(request: web.Request) -> web.Response:
    return web.Response(text=f"issued {route_of(request)} {request.app[NAME]}")


def _app(*middlewares: web.middleware) -> web.Application:
    app = web.Application(middlewares=middlewares)
    app[NAME] = "app"
    app.router.add_get(ISSUE_ROUTE, _issue)
    app.router.add_get("/other", _issue)
    app.freeze()
    return app


async def _router(request: web.Request) -> web.StreamResponse:
    return ROUTER


async def _answer(app: web.Application, method: str, target: str, **headers: str) -> str:
    request = make_mocked_request(method, target, headers=headers, app=app)
    response = await issuing_first(app, _router, ISSUE_ROUTE)(request)
    return "router" if response is ROUTER else response.text or ""


@pytest.mark.parametrize(
    "target", [ISSUE_ROUTE, ISSUE_ROUTE + "?origin_country_id=MY", "/next%2Dtracking-number"]
)
async def test_get_of_the_issuing_route_takes_the_shortcut(target: str) -> None:
    # With the match info the router would give: the route's path, and the app.
    assert await _answer(_app(), "GET", target) == f"issued {ISSUE_ROUTE} app"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("HEAD", ISSUE_ROUTE, {}),
        ("POST", ISSUE_ROUTE, {}),
        ("GET", ISSUE_ROUTE + "/", {}),
        ("GET", "/other", {}),
        ("GET", ISSUE_ROUTE, {"Expect": "100-continue"}),
    ],
)
async def test_every_other_request_goes_to_the_router(
    method: str, target: str, headers: dict[str, str]
) -> None:
    assert await _answer(_app(), method, target, **headers) == "router"


async def test_an_app_with_middlewares_gets_no_shortcut() -> None:
    @web.middleware
    async def passing(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        return await handler(request)

    assert await _answer(_app(passing), "GET", ISSUE_ROUTE) == "router"


async def test_the_shortcut_serves_what_the_router_serves(client: TestClient) -> None:
    # With an Expect header the same request goes through the router: both must carry the
    # same headers.
    query = "?origin_country_id=MY"
    shortcut = await client.get(ISSUE_ROUTE + query)
    routed = await client.get(ISSUE_ROUTE + query, expect100=True)
    assert shortcut.status == routed.status == 400
    assert shortcut.headers["Content-Type"] == routed.headers["Content-Type"]
    assert "X-Request-ID" in routed.headers
    assert (await shortcut.json())["details"].keys() == set(REQUIRED) - {"origin_country_id"}
