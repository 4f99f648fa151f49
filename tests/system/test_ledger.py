"""The ledger on the real run.py: every number a client received has exactly one record.

Records are committed before the answer leaves, so a client never holds a number without a
record, whatever is killed. The converse need not hold: a number whose record was committed
but whose answer was lost (its worker killed a moment later, the client gone) has a record and
no holder. That is a gap like any other: its counter is never handed out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Outcome, Service, alive, check_unsurprising, load
from tests.system.test_faults import fill, get_json, tmpfs, until_both_workers

KILLED_IN_TURN = ("worker-1", "allocator", "ledger", "worker-2")


def records(state_dir: Path) -> list[dict[str, Any]]:
    """Every record in the ledger file, read directly."""
    with contextlib.closing(sqlite3.connect(state_dir / "ledger.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return [
            dict(row)
            for row in db.execute(
                "SELECT n.key_id, n.counter, n.number, i.* FROM issued_number n"
                " JOIN issue i ON i.id = n.issue_id"
            )
        ]


def assert_each_number_recorded_once(state_dir: Path, received: list[str]) -> None:
    """Every number received has exactly one record with the request's fields; no number and
    no counter is recorded twice."""
    found = records(state_dir)
    numbers = Counter(row["number"] for row in found)
    assert [number for number, n in numbers.items() if n > 1] == []
    counters = Counter((row["key_id"], row["counter"]) for row in found)
    assert [counter for counter, n in counters.items() if n > 1] == []
    by_number = {row["number"]: row for row in found}
    missing = [number for number in received if number not in by_number]
    assert missing == [], f"{len(missing)} numbers received without a record, e.g. {missing[:3]}"
    assert len(set(received)) == len(received), "a number was received twice"
    for number in received:
        row = by_number[number]
        assert (
            row["origin"],
            row["destination"],
            row["weight"],
            row["created_at"],
            row["customer_id"],
            row["customer_name"],
            row["customer_slug"],
        ) == (
            number[:2],
            number[2:4],
            *(CANONICAL_QUERY[name] for name in ("weight", "created_at", "customer_id")),
            CANONICAL_QUERY["customer_name"],
            CANONICAL_QUERY["customer_slug"],
        )


async def until_more_numbers(outcome: Outcome, more: int) -> None:
    target = len(outcome.numbers) + more
    async with asyncio.timeout(30):
        while len(outcome.numbers) < target:  # noqa: ASYNC110 (the load fills it)
            await asyncio.sleep(0.02)


async def kill_and_await_restart(service: Service, name: str) -> None:
    """SIGKILL the child's live incarnation, then wait until the next one has started."""
    pids = service.child_pids(name)
    os.kill(pids[-1], signal.SIGKILL)
    async with asyncio.timeout(30):
        while len(service.child_pids(name)) == len(pids) or not alive(  # noqa: ASYNC110
            service.child_pids(name)[-1]
        ):
            await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_after_sigkills_of_every_process_each_number_received_has_exactly_one_record(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 2, "--ledger")
    received: list[str] = []
    try:
        service.start()

        async def killing_in_turn() -> Outcome:
            stop, outcome = asyncio.Event(), Outcome()
            traffic = asyncio.create_task(load(service.url, 10**9, 32, stop, outcome))
            for name in KILLED_IN_TURN:
                await until_more_numbers(outcome, 500)
                await kill_and_await_restart(service, name)
            await until_more_numbers(outcome, 500)
            # Then the supervisor itself: its children stop within a second, the load fails.
            children = [service.child_pids(n)[-1] for n in ("allocator", "ledger", *WORKERS)]
            assert service.process is not None
            service.process.kill()
            async with asyncio.timeout(15):
                while any(alive(pid) for pid in children):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            stop.set()
            return await traffic

        first = asyncio.run(killing_in_turn())
        assert service.process is not None
        service.process.wait(5)
        assert first.other == []  # numbers, JSON 503s, or resets as processes died
        received += first.numbers
        service.start()  # the same state: the ledger file goes on
        second = asyncio.run(load(service.url, 2_000, 32))
        assert second.other == []
        assert second.resets == 0
        received += second.numbers
        assert service.stop() == 0
    finally:
        service.kill()
    assert len(received) > 5 * 500
    assert_each_number_recorded_once(short_tmp, received)
    # The writer committed what it was sent on the clean stop: its last line counts them.
    *_, stopped = [x for x in service.log_lines() if x.get("message") == "ledger writer stopped"]
    assert stopped["tracking.ledger.records"] >= len(second.numbers)


WORKERS = ("worker-1", "worker-2")


def test_a_counter_recorded_twice_is_a_503_an_error_line_and_a_metric(short_tmp: Path) -> None:
    """The second line against duplicates, forced through the writer's own interface: a record
    for the counter the worker will issue next, sent before it does."""
    service = Service(short_tmp, 1, "--ledger")
    try:
        service.start()

        async def collide() -> tuple[list[int], str]:
            from allocator.client import AllocatorClient
            from ledger.client import LedgerClient
            from ledger.records import Issue, Issued

            async with aiohttp.ClientSession(service.url) as session:
                first = await issue(session)
                assert first[0] == 200
                allocator = AllocatorClient(str(short_tmp / "run" / "allocator.sock"), 5.0)
                key = await allocator.connect()
                await allocator.close()
                recorded = records(short_tmp)
                (row,) = recorded
                planted = Issue(
                    time.time_ns(),
                    "ZZ",
                    "ZZ",
                    "1",
                    "2026-01-01T00:00:00Z",
                    CANONICAL_QUERY["customer_id"],
                    "planted",
                    "planted",
                    "planted",
                    "test",
                    None,
                    [Issued(row["counter"] + 1, "ZZZZPLANTED00001")],
                )
                ledger = LedgerClient(str(short_tmp / "run" / "ledger.sock"), 5.0)
                try:
                    await ledger.record(key, planted)
                finally:
                    await ledger.close()
                second = await issue(session)
                async with session.get("/metrics") as response:
                    metrics = await response.text()
            return [first[0], second[0]], metrics

        statuses, metrics = asyncio.run(collide())
        assert statuses == [200, 503]
        assert "tracking_ledger_uniqueness_violations_total 1.0" in metrics.splitlines()
    finally:
        service.kill()
    (line,) = [
        line
        for line in service.log_lines()
        if str(line.get("message", "")).startswith("uniqueness violation")
    ]
    assert line["log.level"] == "error"
    assert line["tracking.recorded_number"] == "ZZZZPLANTED00001"
    assert line["tracking.number"].startswith("MYID")


async def issue(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as response:
        return response.status, json.loads(await response.read())


@pytest.fixture
def ledger_filesystem(short_tmp: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs for the state directory: room for the ledger's WAL, which grows to about
    4 MiB (1,000 pages) before a checkpoint starts it again from its beginning."""
    with tmpfs(short_tmp / "state", "32m") as mount_point:
        yield mount_point


def test_a_full_disk_under_the_ledger_gives_503s_that_lose_nothing_then_issuing_resumes(
    short_tmp: Path, ledger_filesystem: Path
) -> None:
    # The ledger (in the state directory) on a small file system; the store beside it, so
    # that only the ledger runs out of room.
    service = Service(
        short_tmp,
        2,
        "--ledger",
        "--state-dir", str(ledger_filesystem),
        "--store", f"sqlite:///{short_tmp / 'tracking.sqlite3'}",
    )  # fmt: skip
    before, during, recovering, after = Outcome(), Outcome(), Outcome(), Outcome()

    async def run() -> dict[str, Any]:
        await load(service.url, 300, 8, outcome=before)
        filler = fill(ledger_filesystem)
        log_start = len(service.log().encode())
        await until_both_workers(service, "/next-tracking-number", 503, during, log_start)
        _, refusing = await get_json(service.url + "/allocator/status")
        filler.unlink()
        recover_start = len(service.log().encode())
        await until_both_workers(service, "/next-tracking-number", 200, recovering, recover_start)
        await load(service.url, 2000, 8, outcome=after)
        return refusing

    try:
        service.start()
        refusing = asyncio.run(run())
        assert service.stop() == 0
    finally:
        service.kill()
    for outcome in (before, during, recovering, after):
        check_unsurprising(outcome)
    assert during.unavailable > 0
    assert (before.unavailable, after.unavailable, len(after.numbers)) == (0, 0, 2000)
    # Operators could see why: the writer's error, in the status and in the log.
    assert refusing["ledger"]["writer_up"] is True
    assert "full" in refusing["ledger"]["stats"]["last_error"]
    assert refusing["ledger"]["stats"]["commit_failures_total"] > 0
    assert refusing["store_up"] is True  # the counter's store never noticed
    failed = [x for x in service.log_lines() if x.get("message") == "ledger commit failed"]
    assert failed
    assert "full" in failed[0]["error.message"]
    received = before.numbers + during.numbers + recovering.numbers + after.numbers
    assert_each_number_recorded_once(ledger_filesystem, received)
