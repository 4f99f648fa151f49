"""UPU S10 series through the real service: each series is a counter of its own, unique under
concurrency, across a SIGKILLed allocator, and used up exactly once, then refused by name.

Every number is decoded back to its series' counter through the series' permutation (the key
is in the store), so the tests also check that each counter lies below the series' durable
mark, as the store holds it after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest

from service import s10
from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import REPO, Outcome, Service, check_unsurprising, load

# Three series and our own numbers, at once.
SERIES = (("RR", "GB"), ("EE", "FR"), ("CP", "MY"))


def s10_query(indicator: str, country: str, **extra: str) -> dict[str, str]:
    return {
        **CANONICAL_QUERY,
        "origin_country_id": country,
        "scheme": "s10",
        "service_indicator": indicator,
        **extra,
    }


def store_state(state_dir: Path) -> tuple[bytes, dict[str, tuple[str, int, int]]]:
    """The key, and each series' (order, size, mark), read from the SQLite store directly."""
    with contextlib.closing(sqlite3.connect(state_dir / "tracking.sqlite3")) as db:
        (key,) = db.execute("SELECT key FROM counter").fetchone()
        rows = db.execute("SELECT name, ordering, size, reserved FROM series").fetchall()
    return bytes(key), {name: (order, size, mark) for name, order, size, mark in rows}


def series_counters(key: bytes, series: dict[str, tuple[str, int, int]], numbers: list[str]) -> (
    dict[str, list[int]]
):  # fmt: skip
    """Each number's series counter, by series; every number valid, every counter below its
    series' mark."""
    counters: dict[str, list[int]] = defaultdict(list)
    permutations: dict[str, s10.SeriesPermutation] = {}
    for number in numbers:
        indicator, serial8, check, country = number[:2], number[2:10], number[10], number[11:]
        assert len(number) == 13, number
        assert check == s10.check_digit(serial8), number
        name = f"s10:{indicator}:{country}"
        order, size, mark = series[name]
        if name not in permutations:
            permutations[name] = s10.SeriesPermutation(key, indicator, country, order, size)
        counter = permutations[name].invert(int(serial8))
        assert counter < mark, (number, counter, mark)
        counters[name].append(counter)
    return counters


def test_series_are_unique_under_concurrency_and_across_a_sigkilled_allocator(
    short_tmp: Path,
) -> None:
    # A small step: the series reserve many times in the run, and the kill lands between.
    service = Service(short_tmp, 2, "--reserve-step", "300", "--no-access-log")
    service.start()
    try:

        async def run() -> list[Outcome]:
            stop = asyncio.Event()
            outcomes = [Outcome() for _ in range(len(SERIES) + 1)]
            queries = [s10_query(i, c) for i, c in SERIES] + [CANONICAL_QUERY]
            tasks = [
                asyncio.create_task(
                    load(service.url, 10**9, 8, stop, outcome, fresh_connections=True, params=q)
                )
                for outcome, q in zip(outcomes, queries, strict=True)
            ]
            # Wait for numbers from every series, then kill the allocator under load.
            async with asyncio.timeout(30):
                while min(len(o.numbers) for o in outcomes) < 300:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            (allocator_pid,) = service.child_pids("allocator")
            os.kill(allocator_pid, signal.SIGKILL)
            before = [len(o.numbers) for o in outcomes]
            # And go on until every series has issued again since the restart.
            async with asyncio.timeout(30):
                while any(  # noqa: ASYNC110
                    len(o.numbers) < n + 300 for o, n in zip(outcomes, before, strict=True)
                ):
                    await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)
            return outcomes

        outcomes = asyncio.run(run())
        assert len(service.child_pids("allocator")) == 2, service.log()
        assert service.stop(timeout=30) == 0
    finally:
        service.kill()
    for outcome in outcomes:
        check_unsurprising(outcome)
    numbers = [n for outcome in outcomes[:-1] for n in outcome.numbers]
    assert len(set(numbers)) == len(numbers), "an S10 number was issued twice"
    key, series = store_state(short_tmp)
    counters = series_counters(key, series, numbers)
    assert set(counters) == {f"s10:{i}:{c}" for i, c in SERIES}
    for name, values in counters.items():
        assert len(set(values)) == len(values), name
    # Our own numbers are 16 characters, and unique too.
    ours = outcomes[-1].numbers
    assert all(len(n) == 16 for n in ours)
    assert len(set(ours)) == len(ours)


async def issue_until_exhausted(url: str, query: dict[str, str], size: int) -> list[str]:
    """Requests from 32 clients at once until ``size`` numbers came back (503s allowed while
    another worker still holds the last ones); the numbers."""
    numbers: list[str] = []
    async with asyncio.timeout(60):
        while len(numbers) < size:
            outcome = await load(url, 200, 32, fresh_connections=True, params=query)
            check_unsurprising(outcome)
            numbers += outcome.numbers
    return numbers


@pytest.mark.parametrize("order", ["permuted", "sequential"])
def test_a_small_series_gives_each_of_its_numbers_once_then_503s_that_name_it(
    short_tmp: Path, order: str
) -> None:
    size = 500
    service = Service(
        short_tmp, 2, "--s10-series-size", str(size), "--s10-order", order, "--no-access-log"
    )
    service.start()
    try:

        async def run() -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
            query = s10_query("RR", "GB")
            numbers = await issue_until_exhausted(service.url, query, size)
            answers = []
            async with aiohttp.ClientSession(
                service.url, connector=aiohttp.TCPConnector(force_close=True)
            ) as session:
                for _ in range(10):  # both workers, whatever they held
                    async with session.get("/next-tracking-number", params=query) as response:
                        answers.append((response.status, await response.json()))
                other = s10_query("EE", "GB")
                async with session.get("/next-tracking-number", params=other) as response:
                    assert response.status == 200  # another series goes on
            return numbers, answers

        numbers, answers = asyncio.run(run())
        assert service.stop(timeout=30) == 0
    finally:
        service.kill()
    serials = [int(number[2:10]) for number in numbers]
    # Every serial of the series exactly once: a series of 500 uses the serials 0 to 499.
    assert sorted(serials) == list(range(size))
    for status, body in answers:
        assert status == 503, body
        assert "exhausted" in body["error"]
        assert "s10:RR:GB" in body["error"]
    key, series = store_state(short_tmp)
    assert series["s10:RR:GB"] == (order, size, size)
    counters = series_counters(key, series, numbers)["s10:RR:GB"]
    moved = sum(counter != serial for counter, serial in zip(counters, serials, strict=True))
    if order == "sequential":
        assert moved == 0  # the serial is the counter
    else:
        assert moved > 0.9 * size  # a keyed permutation moves nearly every one


def test_a_series_keeps_its_stored_order_after_the_setting_changes(short_tmp: Path) -> None:
    query = s10_query("RR", "GB", count="20")

    async def twenty(url: str) -> list[int]:
        async with (
            aiohttp.ClientSession(url) as session,
            session.get("/next-tracking-number", params=query) as response,
        ):
            assert response.status == 200
            return [int(n[2:10]) for n in (await response.json())["tracking_numbers"]]

    service = Service(short_tmp, 1, "--s10-order", "sequential")
    service.start()
    try:
        first = asyncio.run(twenty(service.url))
        assert service.stop(timeout=30) == 0
        service.extra = ("--s10-order", "permuted")
        service.start()
        second = asyncio.run(twenty(service.url))
        assert service.stop(timeout=30) == 0
    finally:
        service.kill()
    assert first == list(range(first[0], first[0] + 20))
    assert second == list(range(second[0], second[0] + 20))  # still sequential
    assert second[0] >= first[-1]
    _, series = store_state(short_tmp)
    assert series["s10:RR:GB"][0] == "sequential"


def test_a_restored_store_reissues_no_s10_number_once_its_series_marks_are_raised(
    short_tmp: Path,
) -> None:
    """A backup holds each series' old mark: raised from the logs' "series reserved" lines
    (``--raise-series-reserved-to``), nothing issued since the backup is issued again."""
    store = short_tmp / "tracking.sqlite3"
    backup = short_tmp / "backup.sqlite3"
    service = Service(short_tmp, 1, "--reserve-step", "40")
    query = s10_query("RR", "GB", count="100")

    async def hundred() -> list[str]:
        async with (
            aiohttp.ClientSession(service.url) as session,
            session.get("/next-tracking-number", params=query) as response,
        ):
            assert response.status == 200
            return list((await response.json())["tracking_numbers"])

    try:
        service.start()
        first = asyncio.run(hundred())
        assert service.stop(timeout=30) == 0
        with (
            contextlib.closing(sqlite3.connect(store)) as db,
            contextlib.closing(sqlite3.connect(backup)) as copy,
        ):
            db.backup(copy)
        service.start()
        since_backup = asyncio.run(hundred())
        assert service.stop(timeout=30) == 0
        # The restore: the backup's file back in place, and its series' marks raised above
        # the highest the logs show.
        with (
            contextlib.closing(sqlite3.connect(backup)) as copy,
            contextlib.closing(sqlite3.connect(store)) as db,
        ):
            copy.backup(db)
        marks = [
            line["tracking.reserved"]
            for line in service.log_lines()
            if line.get("message") == "series reserved"
            and line.get("tracking.series") == "s10:RR:GB"
        ]
        _, series = store_state(short_tmp)
        assert series["s10:RR:GB"][2] < max(marks)  # without the raise, numbers come again
        raised = subprocess.run(
            [sys.executable, "run.py", "--config", "/dev/null", "--state-dir", str(short_tmp),
             "--raise-series-reserved-to", f"s10:RR:GB={max(marks)}"],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert raised.returncode == 0, raised.stderr + raised.stdout
        service.start()
        after_restore = asyncio.run(hundred())
        assert service.stop(timeout=30) == 0
    finally:
        service.kill()
    numbers = first + since_backup + after_restore
    assert len(set(numbers)) == len(numbers) == 300
