from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from allocator.actor import Allocator
from config.settings import Config
from ledger.writer import LedgerWriter
from service.app import app_runner, create_app
from tests.conftest import PLAIN_AIOHTTP

# For the tests of what only the shortcuts do (service/server/), or of their aiohttp
# internals: with TRACKING_TEST_PLAIN_AIOHTTP=1, aiohttp's own runner serves instead.
shortcuts_only = pytest.mark.skipif(
    PLAIN_AIOHTTP, reason="tests the shortcuts past aiohttp's internals, off in this run"
)


# For the tests of a malformed request head: aiohttp's connection handler refuses it before the
# app runs, and only the shortcuts' handler (service/server/runner.py) answers that in JSON.
head_refused_by_aiohttp = pytest.mark.skipif(
    PLAIN_AIOHTTP,
    reason="with the shortcuts off, aiohttp refuses a malformed request head in its own text",
)


class JsonErrorTestServer(TestServer):
    """A test server built with the production runner (the app's config chooses it)."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return app_runner(self.app, **kwargs)


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
