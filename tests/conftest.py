"""Shared fixtures: short temporary directories, configs, a real in-process allocator."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings as hypothesis_settings

from allocator.actor import Allocator
from allocator.server import AllocatorServer
from allocator.store import open_store
from config import settings
from config.settings import Config
from ledger.writer import LedgerWriter

if TYPE_CHECKING:  # tests.system.conftest imports this module
    from tests.system.conftest import PostgresServer

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

# TRACKING_TEST_PLAIN_AIOHTTP=1: the configs the tests make serve on plain aiohttp
# (aiohttp_shortcuts = false); .ci/run runs tests/service a second time so.
PLAIN_AIOHTTP = os.environ.get("TRACKING_TEST_PLAIN_AIOHTTP") == "1"

# A Hypothesis failure must show up again when the run is repeated (docs/reliability.md,
# "The evidence"). In CI (CI is set; .ci/run sets it) every run draws the same examples: a failure
# there fails every rerun, and HYPOTHESIS_PROFILE=ci repeats it on any machine. Elsewhere the
# examples vary from run to run, and a failing one is kept in .hypothesis/ (git-ignored) and
# tried first on the next run. Both print the failure's @reproduce_failure blob.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


# How long the threads a run leaves behind get to end on their own before the process ends
# without them.
LEFTOVER_THREADS_GRACE = 5.0
_exit_status = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # The first cleanup registered runs last: after every report has been written.
    config.add_cleanup(lambda: _end_despite_leftover_threads(config))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_exit_status] = exitstatus


def _end_despite_leftover_threads(config: pytest.Config) -> None:
    """End the process even if a test left a non-daemon thread running, which Python would
    wait for at exit, forever: aiosqlite's thread of a store a failed test never closed.

    The per-test timeout cannot help there, after the last test. The run fails, naming the
    threads, rather than hang CI until its own limit.
    """
    leftover = [
        thread
        for thread in threading.enumerate()
        if not thread.daemon and thread is not threading.main_thread()
    ]
    deadline = time.monotonic() + LEFTOVER_THREADS_GRACE
    for thread in leftover:
        thread.join(max(0.0, deadline - time.monotonic()))
    leftover = [thread for thread in leftover if thread.is_alive()]
    if not leftover:
        return
    names = ", ".join(thread.name for thread in leftover)
    print(
        f"pytest: {len(leftover)} thread(s) left running ({names}); a test did not close a store"
        " or a connection. Ending the process without them.",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash.get(_exit_status, 0) or pytest.ExitCode.TESTS_FAILED)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_config(short_tmp: Path) -> Callable[..., Config]:
    """A Config whose state lives in the test's temporary directory, with the ledger on (as it
    will be by default once it meets the performance floor; ``--no-ledger`` turns it off)."""

    plain = ("--no-aiohttp-shortcuts",) if PLAIN_AIOHTTP else ()

    def make(*flags: str, env: dict[str, str] | None = None) -> Config:
        return settings.load(
            ["--config", "/dev/null", "--state-dir", str(short_tmp), "--ledger", *plain, *flags],
            env=env or {},
        )

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


class Allocators:
    """Starts real allocators for a test and stops every one of them afterwards, even when
    the test fails (a store left open would keep its SQLite thread, and pytest, alive)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._running: dict[Allocator, AllocatorServer | None] = {}

    async def start(
        self,
        *,
        store: str | None = None,
        reserve_step: int = 0,
        serve: bool = True,
        idempotency_ttl: float | None = None,
        idempotency_max_bytes: int | None = None,
        series_size: int | None = None,
    ) -> Allocator:
        """An allocator on ``store`` (the config's by default), serving on the config's
        socket unless ``serve`` is False; ``series_size``: its new S10 series' size."""
        allocator = Allocator(
            open_store(store or self.config.store),
            reserve_step,
            series_size or self.config.s10_series_size,
        )
        await allocator.start()
        server = None
        if serve:
            server = AllocatorServer(
                allocator,
                self.config.allocator_socket,
                idempotency_ttl or self.config.idempotency_ttl,
                idempotency_max_bytes or self.config.idempotency_max_bytes,
            )
            await server.start()
        self._running[allocator] = server
        return allocator

    def server(self, allocator: Allocator) -> AllocatorServer:
        """The socket server of a running allocator."""
        server = self._running[allocator]
        assert server is not None
        return server

    async def stop(self, allocator: Allocator) -> None:
        """A clean stop: hang up on clients, final checkpoint, close the store."""
        server = self._running.pop(allocator)
        if server is not None:
            await server.close()
        await allocator.stop()

    async def stop_all(self) -> None:
        for allocator in list(self._running):
            await self.stop(allocator)


@pytest.fixture
async def allocators(config: Config) -> AsyncIterator[Allocators]:
    running = Allocators(config)
    yield running
    await running.stop_all()


@pytest.fixture
async def allocator(allocators: Allocators) -> Allocator:
    """A real allocator on a real SQLite file, serving on a real Unix socket."""
    return await allocators.start()


@pytest.fixture
async def ledger_writer(config: Config) -> AsyncIterator[LedgerWriter]:
    """A real ledger writer on the config's ledger file, serving on its Unix socket."""
    writer = LedgerWriter(config.ledger_path, config.ledger_socket)
    await writer.start()
    yield writer
    await writer.close()


@pytest.fixture
def server() -> PostgresServer:
    """The PostgreSQL server ``.ci/postgres.sh`` started: the test is skipped without one (a
    failure under CI)."""
    from tests.system.conftest import PostgresServer

    return PostgresServer.from_environment()


@pytest.fixture
async def database(server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database's URL, dropped after the test."""
    name = await server.create_database()
    yield server.database_url(name)
    await server.drop_database(name)
