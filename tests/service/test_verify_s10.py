"""GET /tracking-numbers/{number} with a 13-character UPU S10 number (service/verify_s10.py)."""

import re
from collections.abc import Callable
from types import SimpleNamespace

import jsonschema
import pytest
from aiohttp.test_utils import TestClient

from allocator.actor import Allocator
from config.indicators import DEFAULT_S10_INDICATORS
from config.settings import Config
from service.s10 import SeriesPermutation, format_number
from service.verify_s10 import SeriesMark, problems, series_counter, series_mark, suggestion
from tests.conftest import CANONICAL_QUERY
from tests.service.conftest import ClientFactory
from tests.service.test_openapi import fetch_document, response_schema

KEY = bytes(range(32))
DEFAULT = DEFAULT_S10_INDICATORS
VALID = "RR473124829GB"


async def verify(client: TestClient, number: str) -> tuple[int, dict]:
    response = await client.get(f"/tracking-numbers/{number}", headers={"X-Request-ID": "v-1"})
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def test_a_valid_s10_number_gets_its_parts_and_for_operators_whether_issued(
    client: TestClient,
) -> None:
    status, verdict = await verify(client, VALID.lower())

    assert status == 200
    assert verdict == {
        "tracking_number": VALID,
        "scheme": "s10",
        "valid": True,
        "service_indicator": "RR",
        "service_indicator_use": "international",
        "service_indicator_allowed": True,
        "country": "GB",
        "correlation_id": "v-1",
        # The test client is loopback, an operator; no RR GB series was ever leased here.
        "issued": False,
    }


@pytest.mark.parametrize(
    ("number", "use", "problem"),
    [
        ("RR473124828GB", "international", "the check digit (character 11) does not match"),
        (
            "CP473124829GB",
            "international",
            "characters 1 and 2: CP (for international use) is not among the indicators",
        ),
        ("AV473124829GB", "domestic", "AV (for domestic or bilateral use) is not among"),
        ("SA473124829GB", "reserved", "SA is reserved by UPU S10"),
        ("QZ473124829GB", "unknown", "'QZ' is not a UPU S10 service indicator"),
        ("RR473124829ZZ", "international", "characters 12 and 13 are not an assigned ISO"),
        ("1R473124829GB", "unknown", "characters 1 and 2 (the service indicator) must be"),
        ("RR47312A829GB", "international", "characters 3 to 10 (the serial) must be digits"),
        ("RR47312482XGB", "international", "character 11 (the check digit) must be a digit"),
        ("RR4731248291B", "international", "characters 12 and 13 (the country) must be"),
    ],
)
async def test_an_s10_number_we_could_not_issue_says_why(
    make_config: Callable[..., Config],
    allocator: Allocator,
    make_client: ClientFactory,
    number: str,
    use: str,
    problem: str,
) -> None:
    client = await make_client(make_config("--s10-indicators", "RR,EE"))

    status, verdict = await verify(client, number)

    assert status == 200
    assert verdict["valid"] is False
    assert verdict["service_indicator_use"] == use
    assert [p for p in verdict["problems"] if problem in p], verdict["problems"]
    assert len(verdict["problems"]) == 1, verdict["problems"]
    assert verdict["issued"] is False


async def test_a_domestic_indicator_is_valid_where_the_operator_lists_it(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    number = format_number("AV", 47312482, "GB")
    client = await make_client(make_config("--s10-indicators", "RR,AV-AZ"))

    status, verdict = await verify(client, number)

    assert status == 200
    assert verdict["valid"] is True
    assert verdict["service_indicator_use"] == "domestic"
    assert verdict["service_indicator_allowed"] is True


@pytest.mark.parametrize(
    ("typo", "fixed"),
    [
        ("RR473I24829GB", VALID),  # a capital I for the digit 1, in the serial
        ("RR00000000SGB", "RR000000005GB"),  # an S for the check digit 5
        ("RR473124829G8", VALID),  # an 8 for the B of the country
        ("RR473124828GB", None),  # a wrong digit with no lookalike: nothing to suggest
        # E0, the digit zero for a letter: EO, EQ and ED are all valid, so none is suggested.
        ("E0471108151FR", None),
    ],
)
async def test_a_lookalike_typo_gets_the_one_fix_suggested(
    client: TestClient, typo: str, fixed: str | None
) -> None:
    status, verdict = await verify(client, typo)

    assert status == 200
    assert verdict["valid"] is False
    assert verdict.get("suggestion") == fixed


def test_a_suggestion_follows_the_operators_indicators() -> None:
    # Of the fixes EO, EQ and ED, only those the operator lists are valid.
    assert suggestion("E0471108151FR", ("EO",)) == "EO471108151FR"
    assert suggestion("E0471108151FR", ("EO", "ED")) is None
    assert suggestion("E0471108151FR", ("RR",)) is None


def test_problems_of_a_valid_number_are_none() -> None:
    for number in ("RR473124829GB", "EE471108151FR", "EB000717618HK", "RR287043775IN"):
        assert problems(number, DEFAULT) == []


# --- issued: the series' counter ---------------------------------------------------------------


@pytest.mark.parametrize("order", ["permuted", "sequential"])
def test_a_number_is_turned_back_into_its_series_counter_in_the_series_order(order: str) -> None:
    permutation = SeriesPermutation(KEY, "RR", "GB", order, size=1000)
    mark = SeriesMark(order, 1000, next=10)
    numbers = [format_number("RR", permutation(counter), "GB") for counter in range(1000)]

    assert [series_counter(KEY, number, mark) for number in numbers] == list(range(1000))


def test_a_serial_beyond_the_series_or_a_series_never_leased_has_no_counter() -> None:
    mark = SeriesMark("permuted", 1000, next=1000)

    assert series_counter(KEY, format_number("RR", 1000, "GB"), mark) is None
    assert series_counter(KEY, format_number("RR", 0, "GB"), None) is None


def test_the_series_mark_is_read_from_the_allocator_status() -> None:
    series = [
        SimpleNamespace(name="s10:RR:FR", order="sequential", size=10**8, next=5),
        SimpleNamespace(name="s10:RR:GB", order="permuted", size=10**8, next=7),
    ]
    status = SimpleNamespace(series=series)

    assert series_mark(status, "RR", "GB") == SeriesMark("permuted", 10**8, 7)
    assert series_mark(status, "EE", "GB") is None
    # An allocator without named counters reports no series: nothing was issued.
    assert series_mark(SimpleNamespace(), "RR", "GB") is None


async def test_both_kinds_of_verdict_match_the_documented_schema(client: TestClient) -> None:
    document = await fetch_document(client)
    path = "/tracking-numbers/{number}"
    schema = response_schema(document, path, "200")
    issued = await client.get("/next-tracking-number", params=CANONICAL_QUERY)
    ours = (await issued.json())["tracking_number"]

    for number in (ours, VALID, "RR473I24829GB", "SA473124828ZZ"):
        status, verdict = await verify(client, number)
        assert status == 200
        jsonschema.validate(verdict, schema)  # oneOf: each matches exactly one of the two
    status, body = await verify(client, "RR47312482")
    assert status == 400
    jsonschema.validate(body, response_schema(document, path, "400"))
    assert re.fullmatch(document["paths"][path]["get"]["parameters"][1]["schema"]["pattern"], VALID)
