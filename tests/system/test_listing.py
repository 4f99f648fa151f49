"""Listing the ledger's records on the real run.py (two workers, the ledger on, the admin token
the service made at start)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Outcome, Service, check_unsurprising, load

OTHER = {**CANONICAL_QUERY, "customer_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}
CUSTOMER = {"customer_id": CANONICAL_QUERY["customer_id"]}


@pytest.fixture
def running(short_tmp: Path) -> Iterator[tuple[Service, dict[str, str]]]:
    """run.py with the ledger on, and the header with the admin token it made."""
    service = Service(short_tmp, 2, "--ledger")
    try:
        service.start()
        (line,) = [x for x in service.log_lines() if "tracking.admin_token_file" in x]
        token = Path(line["tracking.admin_token_file"]).read_text().strip()
        yield service, {"Authorization": f"Bearer {token}"}
        assert service.stop() == 0
    finally:
        service.kill()


async def issue(
    session: aiohttp.ClientSession, query: dict[str, str], count: int, **headers: str
) -> list[str]:
    params = {**query, "count": str(count)}
    async with session.get("/next-tracking-number", params=params, headers=headers) as response:
        assert response.status == 200
        return (await response.json())["tracking_numbers"]


async def get(
    session: aiohttp.ClientSession, admin: dict[str, str], **params: str
) -> tuple[int, dict[str, Any]]:
    async with session.get("/tracking-numbers", params=params, headers=admin) as response:
        return response.status, await response.json()


async def numbers(
    session: aiohttp.ClientSession, admin: dict[str, str], **params: str
) -> list[str]:
    """Every number a walk through the pages lists."""
    found: list[str] = []
    cursor: dict[str, str] = {}
    while True:
        status, page = await get(session, admin, **params, **cursor)
        assert status == 200, page
        found += [item["tracking_number"] for item in page["items"]]
        if page["next_cursor"] is None:
            return found
        cursor = {"cursor": page["next_cursor"]}


def test_a_walk_through_a_customers_pages_while_numbers_are_issued_misses_and_repeats_nothing(
    running: tuple[Service, dict[str, str]],
) -> None:
    service, admin = running

    async def walk() -> tuple[list[str], list[str], list[str], Outcome, int]:
        async with aiohttp.ClientSession(service.url) as session:
            before, others = [], []
            for _ in range(10):
                before += await issue(session, CANONICAL_QUERY, 150)
                others += await issue(session, OTHER, 20)
            stop, outcome = asyncio.Event(), Outcome()
            issuing = asyncio.create_task(load(service.url, 10**9, 4, stop, outcome))
            pages, walked, cursor = 0, [], {}
            while True:
                # Numbers are issued between every two pages: the walk goes on beside them.
                target = len(outcome.numbers) + 3
                async with asyncio.timeout(30):
                    while len(outcome.numbers) < target:  # noqa: ASYNC110 (the load fills it)
                        await asyncio.sleep(0.005)
                status, page = await get(session, admin, **CUSTOMER, limit="50", **cursor)
                assert status == 200, page
                pages += 1
                walked += [item["tracking_number"] for item in page["items"]]
                if page["next_cursor"] is None:
                    break
                cursor = {"cursor": page["next_cursor"]}
            stop.set()
            await issuing
            return before, others, walked, outcome, pages

    before, others, walked, outcome, pages = asyncio.run(walk())
    check_unsurprising(outcome)
    assert pages >= len(before) // 50
    assert [number for number, n in Counter(walked).items() if n > 1] == []
    assert set(before) <= set(walked)
    # What was issued during the walk (the same customer) may be listed; another's never is.
    assert set(walked).isdisjoint(others)
    assert len(outcome.numbers) >= 3 * pages


def test_filters_cursors_streams_and_refusals(running: tuple[Service, dict[str, str]]) -> None:
    service, admin = running

    async def check() -> None:
        async with aiohttp.ClientSession(service.url) as session:
            early = await issue(session, CANONICAL_QUERY, 30)
            _, page = await get(session, admin, limit="1")
            boundary = page["items"][0]["issued_at"]
            # More than a stream reads from the file at a time.
            others = await issue(session, OTHER, 700) + await issue(session, OTHER, 700)
            late = await issue(session, {**CANONICAL_QUERY, "destination_country_id": "SG"}, 5)
            tagged = await issue(session, CANONICAL_QUERY, 2, **{"X-Request-ID": "order-77"})
            mine = early + late + tagged
            # Filters: customer, country, time, correlation id.
            assert await numbers(session, admin, **CUSTOMER, limit="7") == mine[::-1]
            assert await numbers(session, admin, destination_country_id="SG") == late[::-1]
            assert await numbers(session, admin, correlation_id="order-77") == tagged[::-1]
            assert await numbers(session, admin, issued_to=boundary) == []
            after = await numbers(session, admin, issued_from=boundary, limit="1000")
            assert after == (early + others + late + tagged)[::-1]  # early: the same instant
            # Cursors: altered, or from another query, are a 400 naming the cursor.
            _, page = await get(session, admin, **CUSTOMER, limit="5")
            cursor = page["next_cursor"]
            altered = cursor[:-1] + ("A" if cursor[-1] != "A" else "B")
            for params in (
                {**CUSTOMER, "limit": "5", "cursor": altered},
                {"customer_slug": "redbox-logistics", "limit": "5", "cursor": cursor},
            ):
                status, body = await get(session, admin, **params)
                assert status == 400
                assert list(body["details"]) == ["cursor"]
            # Every bad field in one 400.
            status, body = await get(
                session,
                admin,
                customer_id="x",
                origin_country_id="ZZ",
                issued_from="2026-13-01T00:00:00Z",
                correlation_id="no spaces",
                limit="0",
            )
            assert status == 400
            assert set(body["details"]) == {
                "customer_id",
                "origin_country_id",
                "issued_from",
                "correlation_id",
                "limit",
            }
            # Streams: every matching record, whatever the limit.
            ndjson = {**admin, "Accept": "application/x-ndjson"}
            params = {"customer_id": OTHER["customer_id"], "limit": "3"}
            async with session.get("/tracking-numbers", params=params, headers=ndjson) as r:
                assert r.headers["Content-Type"] == "application/x-ndjson"
                lines = (await r.text()).splitlines()
            assert [json.loads(line)["tracking_number"] for line in lines] == others[::-1]
            as_csv = {**admin, "Accept": "text/csv"}
            async with session.get("/tracking-numbers", headers=as_csv) as r:
                assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
                rows = list(csv.DictReader(io.StringIO(await r.text(), newline="")))
            everything = (early + others + late + tagged)[::-1]
            assert [row["tracking_number"] for row in rows] == everything
            assert {row["customer_name"] for row in rows} == {CANONICAL_QUERY["customer_name"]}
            # No token, or a wrong one: loopback alone is not enough.
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with session.get("/tracking-numbers", headers=headers) as r:
                    assert r.status == 401
                    assert "error" in await r.json()

    asyncio.run(check())
