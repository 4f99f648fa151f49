"""Faults on the real run.py: a crash inside a reservation, a store that cannot be written, and
an allocator that stops answering. Whatever happens, no number is issued twice, and nothing
is granted from beyond the durable mark (docs/reliability.md has the table)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import (
    Outcome,
    Service,
    alive,
    check_unsurprising,
    counters_of,
    load,
    sqlite_state,
    unavailable_here,
)
from tests.system.test_run import assert_valid

STEP = 500  # a small reservation step: a reservation every few hundred requests


async def sequential(session: aiohttp.ClientSession, count: int, outcome: Outcome) -> None:
    """``count`` requests one after the other, into ``outcome`` (numbers in issue order)."""
    for _ in range(count):
        async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as response:
            body = await response.read()
            if response.status == 200:
                outcome.numbers.append(json.loads(body)["tracking_number"])
            elif response.status == 503 and response.headers.get("Retry-After"):
                assert json.loads(body)["error"]
                outcome.unavailable += 1
            else:
                outcome.other.append((response.status, body.decode(errors="replace")))


def reserved_by(service: Service, pid: int) -> list[int]:
    """Every mark the allocator ``pid`` logged as reserved (durable), in order."""
    return [
        line["tracking.reserved"]
        for line in service.log_lines()
        if line.get("message") == "reserved" and line.get("process.pid") == pid
    ]


@pytest.mark.parametrize("point", ["reserve-before-commit", "reserve-after-commit"])
def test_an_allocator_killed_inside_a_reservation_never_grants_below_the_durable_mark(
    short_tmp: Path, point: str
) -> None:
    """One worker, requests one at a time: every number's counter must be above the one
    before it, across the crash. The crash comes from the store's test-only fault hook
    (TRACKING_FAULT), which SIGKILLs the allocator before or after the reservation's COMMIT,
    in either case before anything is granted from it."""
    trigger = short_tmp / "fault-armed"
    service = Service(short_tmp, 1, "--reserve-step", str(STEP), "--no-access-log")
    service.env = {"TRACKING_FAULT": f"{point}:{trigger}"}
    store = short_tmp / "tracking.sqlite3"
    outcome = Outcome()

    async def until_crash(session: aiohttp.ClientSession) -> None:
        trigger.touch()  # armed: the next reservation dies at the fault point
        for _ in range(5 * STEP):
            if not trigger.exists():
                return  # the hook removed it and killed the allocator
            await sequential(session, 1, outcome)
        raise AssertionError("no reservation reached the fault point")

    async def run(phase: str) -> None:
        async with aiohttp.ClientSession(service.url) as session:
            if phase == "before":
                await sequential(session, 2 * STEP, outcome)
                await until_crash(session)
            else:
                await sequential(session, 3 * STEP, outcome)

    try:
        service.start()
        first = service.wait_for_child("allocator", 1)
        asyncio.run(run("before"))
        issued_before_crash = len(outcome.numbers)
        # The allocator is dead or dying; the supervisor starts another on the same store.
        service.wait_for_child("allocator", 2)
        restarted = service.wait_for_message("allocator started", 2)
        # Nothing leases until we send requests again: the stored mark stands still now.
        _, mark_after_crash = sqlite_state(store)
        durable_before = max(reserved_by(service, first))
        asyncio.run(run("after"))
        assert service.stop() == 0
    finally:
        service.kill()

    (death,) = [
        line for line in service.log_lines() if line.get("message") == "child died; restarting"
    ]
    assert death["tracking.child"] == "allocator"
    assert death["process.exit_code"] == -signal.SIGKILL  # the fault hook, nothing else
    if point == "reserve-before-commit":
        assert mark_after_crash == durable_before  # the reservation never became durable
    else:
        assert mark_after_crash == durable_before + STEP  # durable, never granted from
    # The new allocator starts from the mark on disk, and so never grants below it again.
    assert restarted["tracking.next"] == mark_after_crash

    check_unsurprising(outcome)
    assert_valid(outcome.numbers)
    key, final_mark = sqlite_state(store)
    counters = counters_of(key, outcome.numbers, final_mark)
    # One worker, one request at a time: blocks are used in the order they were granted, so
    # any counter granted twice, or granted below the mark after the restart, breaks the order.
    assert all(a < b for a, b in itertools.pairwise(counters)), "order broken"
    after = counters[issued_before_crash:]
    assert any(counter >= mark_after_crash for counter in after), "no grant after the restart"
    if point == "reserve-after-commit":
        # The reservation the crash interrupted was skipped whole: a gap, never a grant.
        assert not [c for c in counters if durable_before <= c < mark_after_crash]
    assert max(counters) < final_mark
    print(
        f"\n{point}: numbers={len(outcome.numbers)} 503s={outcome.unavailable} "
        f"mark before={durable_before} after crash={mark_after_crash} final={final_mark}"
    )


# --- a store that cannot be written: a full file system ---------------------------------------


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (``4m``) at ``mount_point``, which a test can fill up.

    A real full file system, because the other ways do not reach a running process: file
    modes are checked at open, and SQLite keeps its files open (chmod changes nothing); tests
    run as root, who ignores modes anyway; and a remount read-only is refused while files are
    open for writing ("mount point is busy").
    """
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable_here(f"cannot mount a tmpfs ({exc})", "run the tests as root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False, timeout=30)


@pytest.fixture
def small_filesystem(short_tmp: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the SQLite store."""
    with tmpfs(short_tmp / "store", "4m") as mount_point:
        yield mount_point


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the file that does it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def answered_by(service: Service, path: str, status: int, start: int = 0) -> set[int]:
    """The worker pids that answered ``path`` with ``status`` (from the access log)."""
    return {
        line["process.pid"]
        for line in service.access_lines(start)
        if line["url.path"] == path and line["http.response.status_code"] == status
    }


async def until_both_workers(
    service: Service, path: str, status: int, outcome: Outcome, start: int
) -> None:
    """Send requests (fresh connections, so both workers get some) until each worker has
    answered ``path`` with ``status``."""
    workers = {service.child_pids("worker-1")[-1], service.child_pids("worker-2")[-1]}
    async with asyncio.timeout(30):
        while not workers <= answered_by(service, path, status, start):
            if path == "/next-tracking-number":
                await load(service.url, 200, 32, outcome=outcome, fresh_connections=True)
            else:
                for _ in range(10):
                    code, _ = await get_json(service.url + path)
                    assert code == status
            await asyncio.sleep(0.1)  # the access log is written within 50 ms


def test_a_full_store_grants_what_is_durable_then_refuses_then_recovers_by_itself(
    short_tmp: Path, small_filesystem: Path
) -> None:
    store = small_filesystem / "tracking.sqlite3"
    service = Service(
        short_tmp,
        2,
        "--store", f"sqlite:///{store}",  # sqlite:/// then the absolute path
        "--reserve-step", "2000",
        "--lease-timeout", "0.25",
    )  # fmt: skip
    before, during, recovering, after = Outcome(), Outcome(), Outcome(), Outcome()

    async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        # Gently: workers size their blocks to a second of the recent rate, and a burst here
        # would fill them for longer than the test needs.
        await load(service.url, 300, 4, outcome=before, fresh_connections=True)
        assert store.exists()  # on the small file system, not beside it
        _, at_fill = await get_json(service.url + "/allocator/status")
        filler = fill(small_filesystem)
        log_start = len(service.log().encode())
        # Workers' blocks, then the allocator's durable remainder, run dry: 503s from both.
        await until_both_workers(service, "/next-tracking-number", 503, during, log_start)
        await until_both_workers(service, "/health", 503, during, log_start)
        _, refusing = await get_json(service.url + "/allocator/status")
        filler.unlink()  # room again: nobody restarts anything
        recover_start = len(service.log().encode())
        await until_both_workers(service, "/next-tracking-number", 200, recovering, recover_start)
        await load(service.url, 2000, 8, outcome=after)
        _, recovered = await get_json(service.url + "/allocator/status")
        return at_fill, refusing, recovered

    try:
        service.start()
        at_fill, refusing, recovered = asyncio.run(run())
        assert service.stop() == 0
    finally:
        service.kill()

    # The allocator went on granting what was durable, and never past the mark...
    assert refusing["leased_numbers_total"] > at_fill["leased_numbers_total"]
    assert refusing["next"] == refusing["reserved"] >= at_fill["reserved"]
    assert refusing["lease_refusals_total"] > 0
    # ...and operators could see why.
    assert refusing["store_up"] is False
    assert "full" in refusing["last_store_error"], refusing["last_store_error"]
    assert refusing["reservation_errors_total"] > 0
    failures = [x for x in service.log_lines() if x.get("message") == "reservation failed"]
    assert failures
    assert "full" in failures[0]["error.message"]
    assert recovered["store_up"] is True
    assert recovered["last_store_error"] is None
    assert recovered["reserved"] > refusing["reserved"]

    for outcome in (before, during, recovering, after):
        check_unsurprising(outcome)
    assert during.unavailable > 0
    assert (before.unavailable, after.unavailable, len(after.numbers)) == (0, 0, 2000)
    numbers = before.numbers + during.numbers + recovering.numbers + after.numbers
    assert len(set(numbers)) == len(numbers)
    assert_valid(numbers)
    key, final_mark = sqlite_state(store)
    # Every counter lies below the final mark, and those issued until the refusals below the
    # mark the store held while full: nothing was granted from beyond a durable mark.
    counters_of(key, numbers, final_mark)
    counters_of(key, before.numbers + during.numbers, refusing["reserved"])
    print(
        f"\nfull store: numbers before={len(before.numbers)} while full={len(during.numbers)} "
        f"503s={during.unavailable} after={len(after.numbers)}"
    )


def test_a_stopped_allocator_leaves_workers_serving_their_buffers_then_503_then_resuming(
    short_tmp: Path,
) -> None:
    """SIGSTOP, so the supervisor sees nothing wrong and restarts nothing: an allocator that is
    alive but does not answer (a hung process, a stalled disk)."""
    service = Service(short_tmp, 2, "--lease-timeout", "0.25")
    before, during, recovering, after = Outcome(), Outcome(), Outcome(), Outcome()

    async def run() -> tuple[int, int]:
        await load(service.url, 300, 4, outcome=before, fresh_connections=True)
        allocator = service.child_pids("allocator")[-1]
        os.kill(allocator, signal.SIGSTOP)
        try:
            log_start = len(service.log().encode())
            await until_both_workers(service, "/next-tracking-number", 503, during, log_start)
            await until_both_workers(service, "/health", 503, during, log_start)
            served_while_stopped = len(during.numbers)
        finally:
            os.kill(allocator, signal.SIGCONT)
        resume_start = len(service.log().encode())
        await until_both_workers(service, "/next-tracking-number", 200, recovering, resume_start)
        await until_both_workers(service, "/health", 200, recovering, resume_start)
        await load(service.url, 1000, 8, outcome=after, fresh_connections=True)
        return served_while_stopped, allocator

    try:
        service.start()
        served_while_stopped, allocator = asyncio.run(run())
        assert service.stop() == 0
    finally:
        service.kill()

    assert service.child_pids("allocator") == [allocator]  # never restarted: it came back
    assert served_while_stopped > 0  # from the workers' buffers
    for outcome in (before, during, recovering, after):
        check_unsurprising(outcome)
    assert during.unavailable > 0
    assert (before.unavailable, after.unavailable, len(after.numbers)) == (0, 0, 1000)
    numbers = before.numbers + during.numbers + recovering.numbers + after.numbers
    assert len(set(numbers)) == len(numbers)
    assert_valid(numbers)
    print(
        f"\nallocator stopped: served from buffers={served_while_stopped} "
        f"503s={during.unavailable} after={len(after.numbers)}"
    )


def test_a_sigkilled_supervisor_takes_its_children_with_it_and_a_restart_reissues_nothing(
    short_tmp: Path,
) -> None:
    """The supervisor dies without a word (SIGKILL, the OOM killer): its children notice within
    a second that their parent is gone and stop, so nothing keeps the port or the store."""
    service = Service(short_tmp, 2)
    try:
        service.start()
        children = [service.child_pids(name)[-1] for name in ("allocator", "worker-1", "worker-2")]

        async def under_load() -> Outcome:
            stop = asyncio.Event()
            traffic = asyncio.create_task(load(service.url, 10**9, 16, stop, retry_resets=False))
            await asyncio.sleep(1.0)
            assert service.process is not None
            service.process.kill()
            await asyncio.sleep(0.5)
            stop.set()
            return await traffic

        first = asyncio.run(under_load())
        assert service.process is not None
        service.process.wait(5)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if alive(pid)], "orphans left running"

        service.start()  # same port, same state directory
        second = asyncio.run(load(service.url, 3_000, 16))
        assert service.stop() == 0
    finally:
        service.kill()

    assert first.other == []  # a 200, a JSON 503, or a reset as the service went away
    assert len(first.numbers) > 100
    check_unsurprising(second)
    assert len(second.numbers) == 3_000
    numbers = first.numbers + second.numbers
    assert len(set(numbers)) == len(numbers)
    assert_valid(numbers)
    key, mark = sqlite_state(short_tmp / "tracking.sqlite3")
    counters_of(key, numbers, mark)  # every counter lies below the durable mark
