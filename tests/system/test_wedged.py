"""Wedged children on the real run.py: a worker or the allocator whose event loop stops (SIGSTOP
here; a bug, a stuck system call or a CPU-bound loop alike) is alive but serves nobody. The
supervisor notices the silence of its heartbeat and replaces it within ``heartbeat_timeout``;
the replacement is logged and counted in /metrics, and no number is issued twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import (
    Outcome,
    Service,
    alive,
    check_unsurprising,
    counters_of,
    load,
    sqlite_state,
)
from tests.system.test_run import assert_valid

TIMEOUT = 2.0  # --heartbeat-timeout
# What a replacement may take beyond TIMEOUT on a loaded 2-core machine: noticing, the SIGKILL,
# the restart's back-off, the new child's start. A bound for waiting, not a measurement.
SLACK = 20.0
FRESH = 32  # the fresh connections that must all be answered


def wedged_lines(service: Service, child: str) -> list[dict[str, Any]]:
    return [
        line
        for line in service.log_lines()
        if line.get("message") == "child wedged; killing" and line.get("tracking.child") == child
    ]


async def wedged_restarts(service: Service) -> dict[str, float]:
    """tracking_supervisor_wedged_restarts_total by child, from the real /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(service.url + "/metrics") as response,
    ):
        assert response.status == 200, await response.text()
        text = await response.text()
    found = re.findall(
        r'^tracking_supervisor_wedged_restarts_total\{child="(\w+)"\} (\S+)$', text, re.M
    )
    return {child: float(value) for child, value in found}


async def fresh_round(service: Service, outcome: Outcome) -> bool:
    """FRESH requests at once, each on a new connection; True if every one got a number."""
    before = len(outcome.numbers)
    await load(service.url, FRESH, FRESH, outcome=outcome, fresh_connections=True)
    return len(outcome.numbers) - before == FRESH


def answered_by(service: Service, pid: int, start: int) -> bool:
    return any(line.get("process.pid") == pid for line in service.access_lines(start))


async def first_to_answer(service: Service) -> int:
    """The pid of the worker that answered the first request in the access log."""
    async with asyncio.timeout(SLACK):  # the access log is written within 50 ms
        while not (lines := service.access_lines()):  # noqa: ASYNC110  polled: the log file
            await asyncio.sleep(0.02)
    return lines[0]["process.pid"]


def answered_503(service: Service, start: int) -> set[int]:
    return {
        line["process.pid"]
        for line in service.access_lines(start)
        if line["url.path"] == "/next-tracking-number" and line["http.response.status_code"] == 503
    }


def test_a_stopped_worker_is_killed_and_replaced_and_its_clients_are_served_again(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 2, "--heartbeat-timeout", str(TIMEOUT))
    pooled, fresh = Outcome(), Outcome()

    async def run() -> tuple[int, int]:
        # A keep-alive pool: its connections stay with the worker that accepted them, which
        # is where a wedged worker hurts (new connections go to whichever worker accepts).
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(service.url, connector=connector) as session:

            async def one() -> None:
                async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as r:
                    assert r.status == 200, await r.text()
                    pooled.numbers.append((await r.json())["tracking_number"])

            # The pool keeps the connections of this first round: the worker that answered
            # one of them is the one to stop. (Waiting for worker-1 to answer could wait for
            # ever: when it accepted none of them, no later round opens a new connection.)
            await asyncio.gather(*(one() for _ in range(16)))
            stopped = await first_to_answer(service)
            name = next(n for n in ("worker-1", "worker-2") if stopped in service.child_pids(n))
            os.kill(stopped, signal.SIGSTOP)
            try:
                stopped_at = time.monotonic()
                # Every pooled connection is used: those on the stopped worker hang until it
                # is killed, then are reset, and aiohttp sends the GET again on a new one.
                async with asyncio.timeout(TIMEOUT + SLACK):
                    await asyncio.gather(*(one() for _ in range(16)))
                pool_answered = time.monotonic() - stopped_at
                # A fresh set of connections, all answered; and its replacement serves too.
                replacement = service.wait_for_child(name, 2, SLACK)
                log_start = len(service.log().encode())
                async with asyncio.timeout(TIMEOUT + SLACK - (time.monotonic() - stopped_at)):
                    while not (  # noqa: ASYNC110  polled: a condition of the service
                        await fresh_round(service, fresh)
                        and answered_by(service, replacement, log_start)
                    ):
                        await asyncio.sleep(0.1)
                replacement_served = time.monotonic() - stopped_at
            finally:
                if alive(stopped):  # the supervisor did not kill it: let it go
                    os.kill(stopped, signal.SIGCONT)
        # Figures, not assertions: how long clients waited on this machine.
        print(
            f"\nworker wedged: pooled requests all answered {pool_answered:.2f} s after SIGSTOP, "
            f"the replacement serving fresh connections after {replacement_served:.2f} s"
        )
        return stopped, name, replacement

    try:
        service.start()
        stopped, name, replacement = asyncio.run(run())
        counted = asyncio.run(wedged_restarts(service))
        assert service.stop() == 0
    finally:
        service.kill()

    assert not alive(stopped)
    (line,) = wedged_lines(service, name)
    assert line["tracking.child_pid"] == stopped
    assert line["log.level"] == "error"
    assert line["tracking.silent_seconds"] >= TIMEOUT
    assert line["tracking.heartbeat_timeout"] == TIMEOUT
    death = next(
        x
        for x in service.log_lines()
        if x.get("message") == "child died; restarting" and x.get("tracking.child_pid") == stopped
    )
    assert death["process.exit_code"] == -signal.SIGKILL
    # Every wedged restart is counted (a loaded machine could starve another child too).
    workers_wedged = len(wedged_lines(service, "worker-1") + wedged_lines(service, "worker-2"))
    assert counted == {
        "allocator": len(wedged_lines(service, "allocator")),
        "ledger": len(wedged_lines(service, "ledger")),
        "worker": workers_wedged,
    }
    assert replacement != stopped
    check_unsurprising(fresh)
    numbers = pooled.numbers + fresh.numbers
    assert len(set(numbers)) == len(numbers)
    assert_valid(numbers)


def test_a_stopped_allocator_is_killed_and_replaced_and_reissues_nothing(short_tmp: Path) -> None:
    service = Service(short_tmp, 2, "--heartbeat-timeout", str(TIMEOUT), "--lease-timeout", "0.25")
    before, during = Outcome(), Outcome()
    served_again = 0.0

    async def run() -> int:
        # Gently: workers size their blocks to a second of the recent rate, and small blocks
        # run dry soon after the allocator stops.
        await load(service.url, 100, 2, outcome=before, fresh_connections=True)
        allocator = service.child_pids("allocator")[-1]
        workers = {service.child_pids(f"worker-{n}")[-1] for n in (1, 2)}
        log_start = len(service.log().encode())
        os.kill(allocator, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # Workers serve their blocks, then 503 (lease_timeout): both must have run dry (or
            # the allocator been replaced already), or a full round below could come from one
            # worker's block. Then, within the timeout and a restart, a fresh set of
            # connections is answered in full again.
            async with asyncio.timeout(TIMEOUT + SLACK):
                while not (
                    workers <= answered_503(service, log_start)
                    or len(service.child_pids("allocator")) > 1
                ):
                    await fresh_round(service, during)
                while not await fresh_round(service, during):  # noqa: ASYNC110  polled: a condition of the service
                    await asyncio.sleep(0.1)
            nonlocal served_again
            served_again = time.monotonic() - stopped_at
        finally:
            if alive(allocator):
                os.kill(allocator, signal.SIGCONT)
        return allocator

    try:
        service.start()
        stopped = asyncio.run(run())
        after = asyncio.run(load(service.url, 1000, 8, fresh_connections=True))
        counted = asyncio.run(wedged_restarts(service))
        assert service.stop() == 0
    finally:
        service.kill()

    assert not alive(stopped)
    first, second = service.child_pids("allocator")[:2]
    assert first == stopped
    (line,) = wedged_lines(service, "allocator")
    assert line["tracking.child_pid"] == stopped
    assert counted["allocator"] == 1
    restarted = service.wait_for_message("allocator started", 2)
    assert restarted["process.pid"] == second
    for outcome in (before, during, after):
        check_unsurprising(outcome)
    assert (before.unavailable, after.unavailable, len(after.numbers)) == (0, 0, 1000)
    numbers = before.numbers + during.numbers + after.numbers
    assert len(set(numbers)) == len(numbers)
    assert_valid(numbers)
    key, final_mark = sqlite_state(short_tmp / "tracking.sqlite3")
    # Whatever the old allocator granted lies below the mark the new one starts from: the new
    # one grants nothing below it, so nothing is issued twice.
    granted_by_the_first = counters_of(key, before.numbers, final_mark)
    assert max(granted_by_the_first) < restarted["tracking.next"]
    assert max(counters_of(key, numbers, final_mark)) < final_mark
    print(
        f"\nallocator wedged: before={len(before.numbers)} during={len(during.numbers)} "
        f"503s={during.unavailable} after={len(after.numbers)}; a fresh round all answered "
        f"{served_again:.2f} s after SIGSTOP"
    )


async def until_each_answered(service: Service, workers: set[int]) -> None:
    async with asyncio.timeout(SLACK):
        while not all(answered_by(service, pid, 0) for pid in workers):
            await load(service.url, 32, 32, fresh_connections=True)
            await asyncio.sleep(0.1)  # the access log is written within 50 ms


def test_a_pause_of_the_whole_service_kills_no_child(short_tmp: Path) -> None:
    # SIGSTOP of the whole process group (podman pause, systemctl freeze, Ctrl-Z) for longer
    # than the timeout: the supervisor wakes with every child silent for that long, but they
    # were stopped as it was, and beat again as soon as they can. Nobody is wedged.
    notify_path = str(short_tmp / "notify")
    service = Service(short_tmp, 2, "--heartbeat-timeout", str(TIMEOUT))
    service.prefix = ["setsid"]  # a process group of its own, to stop and resume whole
    service.env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
    names = ("allocator", "worker-1", "worker-2")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(notify_path)
        try:
            service.start()
            assert service.process is not None
            children = {name: service.child_pids(name) for name in names}
            # Each worker has had its first answer from the allocator (its Hello) before the
            # pause: a Hello that times out at the resumption leaves the worker answering 500s
            # for ever (allocator/client.py; reported, left to the allocator's owner).
            workers = {service.child_pids(name)[0] for name in names[1:]}
            asyncio.run(until_each_answered(service, workers))
            os.killpg(service.process.pid, signal.SIGSTOP)
            time.sleep(2 * TIMEOUT)  # the stimulus: a pause of twice the timeout
            systemd.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while systemd.recv(64):  # every ping sent before the pause
                    pass
            os.killpg(service.process.pid, signal.SIGCONT)
            # A ping vouches that every child beat within the timeout: after the pause, that
            # every child beat since it, so that none can be judged wedged any more.
            systemd.settimeout(TIMEOUT + SLACK)
            while systemd.recv(64) != b"WATCHDOG=1":
                pass
            outcome = asyncio.run(load(service.url, 200, 8, fresh_connections=True))
            assert service.stop() == 0
        finally:
            service.kill()
    assert [line for name in names for line in wedged_lines(service, name)] == []
    assert {name: service.child_pids(name) for name in names} == children
    overslept = [
        line["tracking.overslept_seconds"]
        for line in service.log_lines()
        if line.get("message") == "the supervisor overslept; children's silence counts from now"
    ]
    assert max(overslept) > TIMEOUT  # the pause (a loaded machine may add shorter ones)
    check_unsurprising(outcome)  # numbers, or a 503 where a lease was in flight at the pause
    assert outcome.numbers
