"""count: several numbers in one request, served from the worker's blocks like single ones."""

import asyncio
import re

import pytest
from aiohttp.test_utils import TestClient
from stdnum.iso7064 import mod_37_36

from allocator.actor import Allocator
from service.keys import ACCESS_LOG
from tests.conftest import CANONICAL_QUERY, NUMBER_PATTERN

PATH = "/next-tracking-number"


async def batch(client: TestClient, count: str) -> dict:
    response = await client.get(PATH, params={**CANONICAL_QUERY, "count": count})
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.parametrize("count", [1, 2, 17, 1000])
async def test_a_count_brings_that_many_distinct_valid_numbers(
    client: TestClient, count: int
) -> None:
    body = await batch(client, str(count))
    numbers = body["tracking_numbers"]
    assert len(numbers) == count
    assert len(set(numbers)) == count
    assert body["tracking_number"] == numbers[0]
    assert set(body) == {
        "tracking_number",
        "created_at",
        "correlation_id",
        "request_metadata",
        "tracking_numbers",
    }
    for number in numbers:
        assert re.match(NUMBER_PATTERN, number)
        assert number.startswith("MYID")
        assert mod_37_36.is_valid(number)


async def test_without_a_count_the_shape_is_the_single_numbers(client: TestClient) -> None:
    response = await client.get(PATH, params=CANONICAL_QUERY)
    assert "tracking_numbers" not in await response.json()


async def test_batches_and_single_requests_never_share_a_number(client: TestClient) -> None:
    async def single() -> list[str]:
        response = await client.get(PATH, params=CANONICAL_QUERY)
        return [(await response.json())["tracking_number"]]

    async def many() -> list[str]:
        return (await batch(client, "250"))["tracking_numbers"]

    results = await asyncio.gather(*(many() if i % 3 == 0 else single() for i in range(60)))
    numbers = [number for result in results for number in result]
    assert len(numbers) == 20 * 250 + 40
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("count", ["0", "1001", "-5", "2.5"])
async def test_a_count_out_of_range_is_a_bad_request(client: TestClient, count: str) -> None:
    response = await client.get(PATH, params={**CANONICAL_QUERY, "count": count})
    assert response.status == 400
    assert list((await response.json())["details"]) == ["count"]


async def test_the_access_line_of_a_batch_lists_every_number(
    client: TestClient, allocator: Allocator, capfd: pytest.CaptureFixture[str]
) -> None:
    numbers = (await batch(client, "5"))["tracking_numbers"]
    client.server.app[ACCESS_LOG].flush()
    lines = [line for line in capfd.readouterr().out.splitlines() if '"tracking.numbers"' in line]
    assert len(lines) == 1
    assert all(number in lines[0] for number in numbers)
    assert f'"tracking.number":"{numbers[0]}"' in lines[0]
