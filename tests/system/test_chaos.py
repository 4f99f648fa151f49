"""Chaos under load: SIGKILL the allocator and the workers at random moments, and count.

A real run.py with 2 workers serves 48 concurrent clients for 32 seconds while a driver
SIGKILLs the allocator 5 times and a random worker 5 times, at random moments. Every number
that came back with a 200 is kept; none may repeat. Every other answer must be a JSON 503 with
Retry-After, or a connection reset by a killed worker (counted apart). Then a clean SIGTERM, a
restart on the same state, more numbers, and still no duplicate.

The seed is printed, so a failing run can be replayed: TRACKING_CHAOS_SEED=N make test.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.system.conftest import Outcome, Service, alive, counters_of, load, sqlite_state
from tests.system.test_run import assert_valid

DURATION = 32.0  # seconds of load
CLIENTS = 48
KILLS = {"allocator": 5, "worker": 5}
WORKERS = ("worker-1", "worker-2")


async def kill_at_random(service: Service, rng: random.Random, kills: Counter[str]) -> None:
    """SIGKILL each target at a random moment within the load, its last incarnation each time."""
    targets = ["allocator"] * KILLS["allocator"] + [
        rng.choice(WORKERS) for _ in range(KILLS["worker"])
    ]
    rng.shuffle(targets)
    moments = sorted(rng.uniform(1.0, DURATION - 3.0) for _ in targets)
    began = time.monotonic()
    for moment, name in zip(moments, targets, strict=True):
        await asyncio.sleep(max(0.0, began + moment - time.monotonic()))
        # A child killed a moment ago may still be waiting for its restart (back-off): wait
        # for the new one, so that every kill hits a live process.
        starts = kills[name] + 1
        async with asyncio.timeout(20):
            # Polling: restarts show only in the supervisor's log and in /proc.
            while len(service.child_pids(name)) < starts or not alive(  # noqa: ASYNC110
                pid := service.child_pids(name)[starts - 1]
            ):
                await asyncio.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        kills[name] += 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkills_under_load_never_make_a_duplicate(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("TRACKING_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    print(f"chaos seed: {seed}")  # shown if the test fails before its totals
    service = Service(short_tmp, 2, "--no-access-log")
    kills: Counter[str] = Counter()
    chaos = Outcome()

    async def run() -> None:
        stop = asyncio.Event()
        traffic = asyncio.create_task(
            load(service.url, 10**9, CLIENTS, stop, chaos, retry_resets=False)
        )
        killer = asyncio.create_task(kill_at_random(service, rng, kills))
        await asyncio.sleep(DURATION)
        stop.set()
        await asyncio.gather(traffic, killer)

    try:
        service.start()
        asyncio.run(run())
        # The supervisor brought every victim back.
        for name in ("allocator", *WORKERS):
            service.wait_for_child(name, kills[name] + 1)
        began = time.monotonic()
        assert service.stop(timeout=30) == 0
        stop_seconds = time.monotonic() - began
        service.start()  # the same state directory
        after = asyncio.run(load(service.url, 5_000, CLIENTS))
        assert service.stop() == 0
    finally:
        service.kill()

    allocator_kills = kills["allocator"]
    worker_kills = sum(kills[name] for name in WORKERS)
    with capsys.disabled():  # the totals are the point of the run: shown even when it passes
        print(
            f"\nchaos (seed {seed}): numbers={len(chaos.numbers)} "
            f"kills={allocator_kills + worker_kills} (allocator={allocator_kills}, "
            f"workers={worker_kills}) 503s={chaos.unavailable} resets={chaos.resets} "
            f"{dict(Counter(e.split('(')[0] for e in chaos.reset_errors))}; after a clean "
            f"stop ({stop_seconds:.1f} s) and a restart: numbers={len(after.numbers)}"
        )
    assert allocator_kills == KILLS["allocator"]
    assert worker_kills == KILLS["worker"]
    # Every answer was a number, a JSON 503 with Retry-After, or a reset by a killed worker.
    assert chaos.other == [], chaos.other[:5]
    assert len(chaos.numbers) > 10_000  # the service served through it all
    assert (len(after.numbers), after.unavailable, after.resets, after.other) == (5_000, 0, 0, [])

    numbers = chaos.numbers + after.numbers
    duplicates = [number for number, n in Counter(numbers).items() if n > 1]
    assert duplicates == [], f"{len(duplicates)} numbers issued twice, e.g. {duplicates[:5]}"
    assert_valid(numbers)
    # Every counter lies below the durable mark: nothing was granted from beyond it.
    key, mark = sqlite_state(short_tmp / "tracking.sqlite3")
    counters_of(key, numbers, mark)
