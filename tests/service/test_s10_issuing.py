"""GET /next-tracking-number?scheme=s10&service_indicator=XX: UPU S10 numbers from the series
of the indicator and the origin country, through the real app, allocator and ledger writer."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from urllib.parse import urlencode

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from allocator.actor import Allocator
from config.settings import Config
from service import s10
from service.idempotency import fingerprint
from service.keys import S10_ISSUER
from service.params import TrackingRequest, validate
from tests.conftest import CANONICAL_QUERY, Allocators
from tests.service.conftest import ClientFactory

S10_QUERY = {**CANONICAL_QUERY, "origin_country_id": "GB", "scheme": "s10"}
S10_NUMBER = re.compile(r"^RR[0-9]{9}GB\Z")


def serial_of(number: str) -> int:
    assert number[10] == s10.check_digit(number[2:10]), number
    return int(number[2:10])


async def issue(client: TestClient, indicator: str = "RR", **extra: str) -> tuple[int, dict]:
    query = {**S10_QUERY, "service_indicator": indicator, **extra}
    async with client.get("/next-tracking-number", params=query) as response:
        return response.status, await response.json()


async def test_an_s10_request_gets_a_number_of_its_series_in_the_usual_shape(
    client: TestClient, allocator: Allocator
) -> None:
    status, body = await issue(client)
    assert status == 200, body
    assert S10_NUMBER.match(body["tracking_number"])
    assert set(body) == {"tracking_number", "created_at", "correlation_id", "request_metadata"}
    assert body["request_metadata"]["origin_country"] == "GB"

    status, batch = await issue(client, count="50")
    assert status == 200, batch
    numbers = batch["tracking_numbers"]
    assert len(numbers) == 50
    assert all(S10_NUMBER.match(number) for number in numbers)
    # The series' counters, through its own permutation: distinct, and below its mark.
    permute = s10.SeriesPermutation(allocator.key, "RR", "GB", "permuted")
    counters = {permute.invert(serial_of(n)) for n in [body["tracking_number"], *numbers]}
    assert len(counters) == 51
    assert max(counters) < allocator.series["s10:RR:GB"].reserved


async def test_a_lower_case_indicator_is_upper_cased(client: TestClient) -> None:
    status, body = await issue(client, "ee", origin_country_id="fr")
    assert status == 200, body
    assert re.match(r"^EE[0-9]{9}FR\Z", body["tracking_number"])


@pytest.mark.parametrize(
    ("indicator", "words"),
    [("JA", "reserved"), ("BA", "domestic or bilateral"), ("R1", "two letters")],
)
async def test_an_indicator_not_issued_here_is_a_400_that_says_why(
    client: TestClient, indicator: str, words: str
) -> None:
    status, body = await issue(client, indicator)
    assert status == 400
    assert words in body["details"]["service_indicator"][0]


async def test_the_s10_fields_come_together(client: TestClient) -> None:
    async with client.get("/next-tracking-number", params=S10_QUERY) as response:
        assert response.status == 400
        assert "service_indicator" in (await response.json())["details"]
    query = {**CANONICAL_QUERY, "service_indicator": "RR"}
    async with client.get("/next-tracking-number", params=query) as response:
        assert response.status == 400
        assert "scheme=s10" in (await response.json())["details"]["service_indicator"][0]


async def test_an_exhausted_series_is_a_503_that_names_it_and_others_go_on(
    allocators: Allocators, config: Config, make_client: ClientFactory
) -> None:
    await allocators.start(series_size=30)
    client = await make_client(config)
    answers = await asyncio.gather(*(issue(client) for _ in range(40)))
    numbers = [body["tracking_number"] for status, body in answers if status == 200]
    refused = [body for status, body in answers if status == 503]
    # Never a number twice; what the worker still holds comes after the first 503s.
    assert len(set(numbers)) == len(numbers)
    assert len(numbers) + len(refused) == 40
    while len(numbers) < 30:
        status, body = await issue(client)
        assert status == 200, body
        numbers.append(body["tracking_number"])
    # A series of 30 permutes its 30 serials among themselves: each of them once.
    assert sorted(map(serial_of, numbers)) == list(range(30))
    status, body = await issue(client)
    assert status == 503
    assert "s10:RR:GB" in body["error"]
    assert "exhausted" in body["error"]
    # Another series and our own numbers are not affected.
    assert (await issue(client, "EE"))[0] == 200
    async with client.get("/next-tracking-number", params=CANONICAL_QUERY) as response:
        assert response.status == 200


async def test_a_series_keeps_its_stored_order_whatever_the_setting(
    allocators: Allocators, make_config: object, make_client: ClientFactory
) -> None:
    config = make_config("--s10-order", "permuted")  # type: ignore[operator]
    allocator = await allocators.start()
    # The series was made sequential (an earlier setting, or another host's).
    await allocator.lease_series("s10:RR:GB", "sequential", 3)
    client = await make_client(config)
    status, body = await issue(client, count="5")
    assert status == 200, body
    serials = [serial_of(number) for number in body["tracking_numbers"]]
    assert serials == list(range(serials[0], serials[0] + 5))
    assert serials[0] >= 3


async def test_a_new_series_takes_the_setting_s_order(
    allocators: Allocators, make_config: object, make_client: ClientFactory
) -> None:
    config = make_config("--s10-order", "sequential")  # type: ignore[operator]
    allocator = await allocators.start()
    client = await make_client(config)
    status, body = await issue(client, count="5")
    assert status == 200, body
    assert [serial_of(n) for n in body["tracking_numbers"]] == [0, 1, 2, 3, 4]
    assert allocator.series_made["s10:RR:GB"].order == "sequential"


async def test_an_idempotent_s10_request_is_answered_again_from_its_series(
    client: TestClient,
) -> None:
    headers = {"Idempotency-Key": "s10-once"}
    query = {**S10_QUERY, "service_indicator": "RR"}
    async with client.get("/next-tracking-number", params=query, headers=headers) as first:
        assert first.status == 200
        number = (await first.json())["tracking_number"]
    async with client.get("/next-tracking-number", params=query, headers=headers) as again:
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert (await again.json())["tracking_number"] == number
    assert S10_NUMBER.match(number)


@pytest.mark.parametrize("indicator", ["JA", "BA"])
async def test_an_idempotent_request_for_an_indicator_not_issued_here_is_a_400_too(
    client: TestClient, allocator: Allocator, indicator: str
) -> None:
    headers = {"Idempotency-Key": f"s10-{indicator}"}
    query = {**S10_QUERY, "service_indicator": indicator}
    async with client.get("/next-tracking-number", params=query, headers=headers) as response:
        assert response.status == 400, await response.text()
        assert "service_indicator" in (await response.json())["details"]
    assert f"s10:{indicator}:GB" not in allocator.series  # no series made, no number taken


async def test_a_worker_holds_no_blocks_of_series_asked_for_now_and_then(
    client: TestClient,
) -> None:
    """Each series once: leased exactly, no block held (tests/service/test_s10_blocks.py has
    the hot series')."""
    for country in ("GB", "FR", "DE", "NL", "IT"):
        status, body = await issue(client, origin_country_id=country, count="2")
        assert status == 200, body
        assert all(number.endswith(country) for number in body["tracking_numbers"])
    assert client.app[S10_ISSUER].held == 0


def test_our_own_requests_keep_the_fingerprint_they_had_before_s10() -> None:
    """A retry across the upgrade, with the same Idempotency-Key, must still match."""
    query = validate(urlencode(CANONICAL_QUERY))
    assert isinstance(query, TrackingRequest)
    # What fingerprint() hashed before the S10 fields: the seven fields and the count.
    before = {name: getattr(query, name) for name in (*CANONICAL_QUERY, "count")}
    assert fingerprint(query) == hashlib.sha256(msgspec.msgpack.encode(before)).digest()
    s10_query = msgspec.structs.replace(query, scheme="s10", service_indicator="RR")
    assert fingerprint(s10_query) != fingerprint(query)
    # A label changes no number, and a replayed answer carries none.
    assert fingerprint(msgspec.structs.replace(query, label="pdf")) == fingerprint(query)


async def test_status_and_metrics_show_each_series_use_and_forecast(
    allocators: Allocators, config: Config, make_client: ClientFactory
) -> None:
    await allocators.start(series_size=100_000)
    client = await make_client(config)
    status, body = await issue(client, count="100")
    assert status == 200, body
    async with client.get("/allocator/status") as response:
        assert response.status == 200
        (series,) = (await response.json())["series"]
    assert series["name"] == "s10:RR:GB"
    assert series["size"] == 100_000
    assert 100 <= series["next"] <= series["reserved"]  # leased: issued, and the block in hand
    assert series["numbers_left"] == 100_000 - series["next"]
    assert series["used_ratio"] == series["next"] / 100_000
    assert series["seconds_to_exhaustion"] > 0
    async with client.get("/metrics") as response:
        text = await response.text()
    used = f'tracking_s10_series_used_ratio{{series="s10:RR:GB"}} {series["next"] / 100_000}'
    assert used in text
    assert 'tracking_s10_series_seconds_to_exhaustion{series="s10:RR:GB"}' in text
    assert 'tracking_s10_series_reservations_total{series="s10:RR:GB"}' in text


# --- the ledger: S10 numbers are recorded like ours, each series a counter of its own --------


async def test_s10_numbers_are_recorded_and_vouched_for_beside_ours(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    """A series counts from 0 like our own counter: without a line of its own in the ledger,
    its records collided with ours (a uniqueness violation, a 503)."""
    client = await make_client(make_config("--admin-token", "s3cret", "--ledger"))
    token = {"Authorization": "Bearer s3cret"}
    ours = await client.get("/next-tracking-number", params={**CANONICAL_QUERY, "count": "20"})
    assert ours.status == 200, await ours.text()
    answers = [await issue(client, count="20"), await issue(client, "EE", count="20")]
    assert [status for status, _ in answers] == [200, 200], answers
    rr, ee = answers[0][1]["tracking_numbers"], answers[1][1]["tracking_numbers"]

    async with client.get(f"/tracking-numbers/{rr[3]}", headers=token) as response:
        verdict = await response.json()
    assert verdict["issued"] is True, verdict
    permute = s10.SeriesPermutation(allocator.key, "RR", "GB", "permuted")
    assert verdict["record"]["tracking_number"] == rr[3]
    assert verdict["record"]["counter"] == permute.invert(serial_of(rr[3]))
    assert verdict["record"]["origin_country"] == "GB"
    # The same serial in a series of another indicator: valid, and never issued.
    other = "CC" + rr[3][2:]
    async with client.get(f"/tracking-numbers/{other}", headers=token) as response:
        verdict = await response.json()
    assert verdict["valid"] is True
    assert verdict["issued"] is False
    assert "record" not in verdict
    # Every S10 number is in the listing, with ours.
    async with client.get("/tracking-numbers", params={"limit": "100"}, headers=token) as listed:
        numbers = {item["tracking_number"] for item in (await listed.json())["items"]}
    assert set(rr) | set(ee) <= numbers
    assert len(numbers) == 60


async def test_an_s10_label_is_drawn_from_its_record(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--admin-token", "s3cret", "--ledger"))
    status, body = await issue(client)
    assert status == 200, body
    number = body["tracking_number"]
    token = {"Authorization": "Bearer s3cret"}
    async with client.get(f"/tracking-numbers/{number}/label", headers=token) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/pdf"
        assert (await response.read()).startswith(b"%PDF-")
    # A valid S10 number of the same series that was not issued has no label.
    unissued = s10.format_number("RR", (serial_of(number) + 1) % s10.SERIES_SIZE, "GB")
    async with client.get(f"/tracking-numbers/{unissued}/label", headers=token) as response:
        assert response.status == 404
