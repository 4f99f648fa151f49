from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from allocator.actor import Allocator
from config.settings import Config
from ledger.writer import LedgerWriter
from service.app import create_app
from service.server.runner import AppRunner


class JsonErrorTestServer(TestServer):
    """A test server built with the production runner, JSON errors included."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return AppRunner(self.app, **kwargs)


ClientFactory = Callable[[Config], Awaitable[TestClient]]


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], ledger_writer: LedgerWriter
) -> ClientFactory:
    """Apps served like production, with a real ledger writer on the test's state directory."""

    async def make(config: Config) -> TestClient:
        return await aiohttp_client(JsonErrorTestServer(create_app(config)))

    return make


@pytest.fixture
async def client(allocator: Allocator, config: Config, make_client: ClientFactory) -> TestClient:
    """The app, served like production, with a real allocator and ledger writer behind it."""
    return await make_client(config)
