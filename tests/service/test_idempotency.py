"""Idempotency-Key: a retry gets the first answer, durably, and consumes no numbers."""

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from allocator.store import Remembered
from config.settings import Config
from service.idempotency import FULL, FULL_RETRY_AFTER_SECONDS, KEY_RULE, MISMATCH
from service.keys import ACCESS_LOG, ISSUER
from tests.conftest import CANONICAL_QUERY, Allocators
from tests.service.conftest import ClientFactory

PATH = "/next-tracking-number"


async def request(
    client: TestClient, key: str, **overrides: str
) -> tuple[int, dict[str, str], dict]:
    response = await client.get(
        PATH, params={**CANONICAL_QUERY, **overrides}, headers={"Idempotency-Key": key}
    )
    return response.status, dict(response.headers), await response.json()


async def test_a_retry_gets_the_same_answer_without_consuming_numbers(
    client: TestClient,
) -> None:
    status, headers, first = await request(client, '"order-4711"')
    assert status == 200
    assert "Idempotent-Replayed" not in headers
    issuer = client.server.app[ISSUER]
    in_hand = issuer.buffered

    status, headers, again = await request(client, '"order-4711"')
    assert status == 200
    assert again == first  # the same numbers, the same correlation id, the same time
    assert headers["Idempotent-Replayed"] == "true"
    assert issuer.buffered == in_hand


async def test_normalised_parameters_are_the_same_parameters(client: TestClient) -> None:
    _, _, first = await request(client, "k-norm")
    status, _, again = await request(
        client, "k-norm", origin_country_id="my", customer_name="  RedBox Logistics "
    )
    assert status == 200
    assert again == first


async def test_the_same_key_with_other_parameters_is_a_422(client: TestClient) -> None:
    await request(client, "k-reuse")
    status, _, body = await request(client, "k-reuse", weight="9.5")
    assert status == 422
    assert body["error"] == MISMATCH


async def test_different_keys_get_different_numbers(client: TestClient) -> None:
    _, _, first = await request(client, "k-a")
    _, _, second = await request(client, "k-b")
    assert first["tracking_number"] != second["tracking_number"]


async def test_a_batch_is_replayed_whole(client: TestClient) -> None:
    _, _, first = await request(client, "k-batch", count="30")
    _, _, again = await request(client, "k-batch", count="30")
    assert again["tracking_numbers"] == first["tracking_numbers"]
    assert len(first["tracking_numbers"]) == 30
    status, _, _ = await request(client, "k-batch", count="31")
    assert status == 422


@pytest.mark.parametrize("key", ['""', "has space", 'with"quote', "x" * 256, "é"])
async def test_a_malformed_key_is_a_bad_request(client: TestClient, key: str) -> None:
    status, _, body = await request(client, key)
    assert status == 400
    assert body["details"] == {"Idempotency-Key": [KEY_RULE]}


async def test_racing_twins_both_get_the_first_answer(client: TestClient) -> None:
    results = await asyncio.gather(*(request(client, "k-race") for _ in range(8)))
    bodies = [body for status, _, body in results if status == 200]
    assert len(bodies) == 8
    assert all(body == bodies[0] for body in bodies)


async def test_an_answer_survives_an_allocator_restart(
    allocators: Allocators, config: Config, make_client: ClientFactory
) -> None:
    allocator = await allocators.start()
    client = await make_client(config)
    _, _, first = await request(client, "k-restart")
    await allocators.stop(allocator)
    await allocators.start()
    status, headers, again = await request(client, "k-restart")
    assert status == 200
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"


async def test_an_answer_expires(
    allocators: Allocators, config: Config, make_client: ClientFactory
) -> None:
    await allocators.start(idempotency_ttl=0.3)
    client = await make_client(config)
    _, _, first = await request(client, "k-ttl")
    await asyncio.sleep(0.4)
    status, headers, later = await request(client, "k-ttl")
    assert status == 200
    assert "Idempotent-Replayed" not in headers
    assert later["tracking_number"] != first["tracking_number"]


async def test_without_an_allocator_an_idempotent_request_is_a_503(
    make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--lease-timeout", "0.3"))
    status, headers, _ = await request(client, "k-down")
    assert status == 503
    assert headers["Retry-After"] == "1"


async def issued_total(client: TestClient, at_least: int) -> float:
    """tracking_numbers_issued_total, once it has reached ``at_least`` (workers report each
    second) or after a few reports."""
    deadline = time.monotonic() + 5
    while True:
        response = await client.get("/metrics")
        text = await response.text()
        total = float(re.search(r"^tracking_numbers_issued_total (\S+)$", text, re.M)[1])
        if total >= at_least or time.monotonic() > deadline:
            return total
        await asyncio.sleep(0.05)


async def test_an_answer_kept_after_the_worker_gave_up_is_audited_once_by_its_retry(
    allocators: Allocators,
    make_config: Callable[..., Config],
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    allocator = await allocators.start()
    client = await make_client(make_config("--lease-timeout", "0.5"))
    store = allocator.store
    remember, release = store.remember, asyncio.Event()

    async def commits_then_answers_late(*args: Any, **kwargs: Any) -> Remembered:
        kept = await remember(*args, **kwargs)
        await release.wait()  # committed, but the worker gives up waiting
        return kept

    monkeypatch.setattr(store, "remember", commits_then_answers_late)
    try:
        status, _, _ = await request(client, "k-late", count="3")
        assert status == 503
    finally:
        release.set()
    monkeypatch.undo()

    status, headers, body = await request(client, "k-late", count="3")
    assert status == 200
    assert headers["Idempotent-Replayed"] == "true"  # kept by the first request
    numbers = body["tracking_numbers"]
    assert await issued_total(client, 3) == 3  # counted once its numbers reach a client
    status, _, again = await request(client, "k-late", count="3")
    assert again == body
    client.server.app[ACCESS_LOG].flush()
    lines = [line for line in capfd.readouterr().out.splitlines() if numbers[0] in line]
    assert len(lines) == 1  # audited once: by the retry that delivered it
    assert all(number in lines[0] for number in numbers)
    plain = await client.get(PATH, params=CANONICAL_QUERY)
    assert plain.status == 200
    assert await issued_total(client, 4) == 4  # the replay counted nothing more


async def test_past_the_cap_a_new_key_is_a_503_and_the_rest_goes_on(
    allocators: Allocators, config: Config, make_client: ClientFactory
) -> None:
    await allocators.start(idempotency_max_bytes=70_000)  # 64 KiB for the largest answer
    client = await make_client(config)
    status, _, first = await request(client, "k-first")
    assert status == 200
    for n in range(100):
        status, headers, body = await request(client, f"k-{n}", count="100")
        if status != 200:
            break
    assert status == 503
    assert headers["Retry-After"] == str(FULL_RETRY_AFTER_SECONDS)
    assert body == {"error": FULL, "correlation_id": headers["X-Request-ID"]}
    status, headers, again = await request(client, "k-first")  # a replay
    assert (status, again, headers["Idempotent-Replayed"]) == (200, first, "true")
    plain = await client.get(PATH, params=CANONICAL_QUERY)  # no key
    assert plain.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "tracking_idempotency_refusals_total 1.0" in metrics
    assert "tracking_idempotency_max_bytes 70000.0" in metrics
