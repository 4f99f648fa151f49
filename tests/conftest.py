"""Shared fixtures: short temporary directories, configs, a real in-process allocator."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from allocator.server import Allocator, AllocatorServer
from allocator.store import open_store
from config import settings
from config.settings import Config

CANONICAL_QUERY = {
    "origin_country_id": "MY",
    "destination_country_id": "ID",
    "weight": "1.234",
    "created_at": "2018-11-20T19:29:32+08:00",
    "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
    "customer_name": "RedBox Logistics",
    "customer_slug": "redbox-logistics",
}
NUMBER_PATTERN = r"^[A-Z0-9]{1,16}$"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_config(short_tmp: Path) -> Callable[..., Config]:
    """A Config whose state lives in the test's temporary directory."""

    def make(*flags: str, env: dict[str, str] | None = None) -> Config:
        return settings.load(
            ["--config", "/dev/null", "--state-dir", str(short_tmp), *flags], env=env or {}
        )

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@pytest.fixture
async def allocator(config: Config) -> AsyncIterator[Allocator]:
    """A real allocator on a real SQLite file, serving on a real Unix socket."""
    allocator = Allocator(open_store(config.store))
    await allocator.start()
    server = AllocatorServer(allocator, config.allocator_socket)
    await server.start()
    yield allocator
    await server.close()
    await allocator.stop()
