"""The ledger's PostgreSQL tests: a fresh database of the server ``.ci/postgres.sh`` started
(skipped without one, a failure under CI), as the store's PostgreSQL tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from config.settings import Config
from ledger.postgres import SharedReads
from tests.ledger.test_forwarder import Forwarding


@pytest.fixture
async def reads(database: str) -> AsyncIterator[SharedReads]:
    """A worker's connections for reading the fresh database's shared ledger."""
    shared = SharedReads(database)
    await shared.start()
    yield shared
    await shared.close()


@pytest.fixture
async def forwarding(config: Config, database: str) -> AsyncIterator[Forwarding]:
    """A writer forwarding to a fresh database, and a client of it."""
    running = Forwarding(config, database)
    await running.start()
    yield running
    await running.client.close()
    await running.stop()
