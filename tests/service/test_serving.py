"""The runner the app is served by: ours with the shortcuts, aiohttp's own without them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from allocator.actor import Allocator
from config.settings import Config
from service.app import app_runner, create_app
from service.server.plain import PlainAppRunner
from service.server.runner import AppRunner, JsonErrorRequestHandler, JsonErrorServer
from tests.service.conftest import ClientFactory


@pytest.mark.parametrize(
    ("flag", "runner_type", "server_type", "handler_type"),
    [
        ("--aiohttp-shortcuts", AppRunner, JsonErrorServer, JsonErrorRequestHandler),
        ("--no-aiohttp-shortcuts", PlainAppRunner, web.Server, RequestHandler),
    ],
)
async def test_the_setting_chooses_our_runner_or_aiohttps_own(
    allocator: Allocator,
    make_config: Callable[..., Config],
    flag: str,
    runner_type: type[web.AppRunner],
    server_type: type[web.Server],
    handler_type: type[RequestHandler],
) -> None:
    runner = app_runner(create_app(make_config(flag)))
    await runner.setup()
    try:
        assert type(runner) is runner_type
        # Exactly aiohttp's own server and connection handler without the shortcuts.
        assert type(runner.server) is server_type
        assert type(runner.server()) is handler_type  # type: ignore[misc]
    finally:
        await runner.cleanup()


async def test_while_draining_every_answer_closes_its_connection(
    allocator: Allocator, config: Config, make_client: ClientFactory
) -> None:
    client = await make_client(config)
    runner = client.server.runner
    assert isinstance(runner, AppRunner | PlainAppRunner)
    kept = await client.get("/health")
    assert kept.status == 200
    assert kept.headers.get("Connection") != "close"

    runner.drain()
    for path in ("/health", "/nowhere"):
        closed = await client.get(path)
        assert closed.headers["Connection"] == "close", path
        assert closed.content_type == "application/json", path
