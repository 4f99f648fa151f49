"""The issue rate's memory stays bounded when nobody reads it.

Each worker reports once a second. The reports used to pile up until something asked for the
rate (a scrape of /metrics), so an allocator nobody scraped grew without end.
"""

from __future__ import annotations

import types

import pytest

from allocator import server as server_module
from allocator.actor import Allocator
from allocator.protocol import Report, WorkerCounters
from allocator.server import RATE_WINDOW, AllocatorServer
from config.settings import Config


class FakeClock:
    """The monotonic clock of allocator.server, moved by the test; the wall clock is real."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.time = server_module.time.time

    def monotonic(self) -> float:
        return self.now


async def test_reports_nobody_reads_take_bounded_memory(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(server_module, "time", types.SimpleNamespace(
        monotonic=clock.monotonic, time=clock.time
    ))  # fmt: skip
    allocator = Allocator(store=None, reserve_step=0)  # type: ignore[arg-type]
    server = AllocatorServer(allocator, config.allocator_socket)
    workers = 8
    for _ in range(2 * 3600):  # two hours of reports from every worker, never scraped
        for _ in range(workers):
            await server._answer(Report(id=0, counters=WorkerCounters(issued=5)), None, 0)  # type: ignore[arg-type]
        clock.now += 1.0
    assert len(server._issued) <= RATE_WINDOW + 1
    # And the rate is still right: 8 workers issuing 5 a second.
    assert server.issue_rate() == pytest.approx(workers * 5, rel=0.05)
