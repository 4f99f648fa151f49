"""GET /tracking-numbers/{number}: checking a number someone typed or scanned."""

import datetime
import hashlib
import socket
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient
from stdnum.iso7064 import mod_37_36

from allocator.actor import Allocator
from allocator.counter import COUNTER_LIMIT, SCHEME_FEISTEL4, SCHEME_FF1
from config.settings import Config
from service.numbers import NumberFormatter, parse, permutation
from service.verify import problems, suggestion
from tests.allocator.old_stores import make_a_store_from_before_schemes
from tests.conftest import CANONICAL_QUERY, Allocators
from tests.service.conftest import ClientFactory


async def issue(client: TestClient) -> str:
    response = await client.get("/next-tracking-number", params=CANONICAL_QUERY)
    assert response.status == 200
    return (await response.json())["tracking_number"]


async def verify(client: TestClient, number: str, **headers: str) -> tuple[int, dict]:
    response = await client.get(f"/tracking-numbers/{number}", headers=headers)
    assert response.content_type == "application/json"
    return response.status, await response.json()


def with_check(body: str) -> str:
    return body + mod_37_36.calc_check_digit(body)


async def test_an_issued_number_is_valid_and_known_to_operators(client: TestClient) -> None:
    number = await issue(client)
    status, verdict = await verify(client, number, **{"X-Request-ID": "v-1"})
    assert status == 200
    assert verdict == {
        "tracking_number": number,
        "valid": True,
        "origin_country": "MY",
        "destination_country": "ID",
        "correlation_id": "v-1",
        "issued": True,  # the test client is a loopback client: an operator
    }


async def test_a_forged_number_with_a_real_serial_is_not_issued(client: TestClient) -> None:
    number = await issue(client)
    # The same serial with other country codes, and the public check character recomputed.
    forged = with_check("SG" + "FR" + number[4:15])
    status, verdict = await verify(client, forged)
    assert status == 200
    assert verdict["valid"] is True
    assert verdict["issued"] is False
    assert "no record of this number" in verdict["note"]
    assert "record" not in verdict


async def test_the_record_is_shown_to_the_admin_token_only_never_to_loopback_alone(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--admin-token", "s3cret", "--ledger"))
    response = await client.get(
        "/next-tracking-number",
        params={**CANONICAL_QUERY, "count": "2"},
        headers={"X-Request-ID": "issuing-1", "Idempotency-Key": "k-1"},
    )
    answer = await response.json()
    number = answer["tracking_numbers"][1]
    status, verdict = await verify(client, number)  # loopback, no token
    assert status == 200
    assert verdict["issued"] is True
    assert "record" not in verdict
    status, verdict = await verify(client, number, Authorization="Bearer wrong")
    assert "record" not in verdict
    status, verdict = await verify(client, number, Authorization="Bearer s3cret")
    record = verdict["record"]
    counter = permutation(allocator.key, allocator.scheme).invert(parse(number).serial)
    assert record == {
        "tracking_number": number,
        "counter": counter,
        "issued_at": record["issued_at"],
        "origin_country": "MY",
        "destination_country": "ID",
        "weight_kg": CANONICAL_QUERY["weight"],
        "created_at": CANONICAL_QUERY["created_at"],
        "customer_id": CANONICAL_QUERY["customer_id"],
        "customer_name": CANONICAL_QUERY["customer_name"],
        "customer_slug": CANONICAL_QUERY["customer_slug"],
        "correlation_id": "issuing-1",
        "host": socket.gethostname(),
        "idempotency_key_sha256": hashlib.sha256(b"k-1").hexdigest(),
    }
    # The server's time of issue, in UTC; the answer gave the same instant in the client's offset.
    issued_at = datetime.datetime.fromisoformat(record["issued_at"])
    assert issued_at.utcoffset() == datetime.timedelta(0)
    assert issued_at == datetime.datetime.fromisoformat(answer["created_at"])


async def test_a_counter_handed_out_without_a_record_is_not_issued_and_says_why(
    client: TestClient, allocator: Allocator
) -> None:
    await issue(client)
    # The worker's block holds counters nobody asked for yet: leased, never recorded.
    unused = NumberFormatter(allocator.key, allocator.scheme).format("MY", "ID", allocator.next - 1)
    _status, verdict = await verify(client, unused)
    assert verdict["valid"] is True
    assert verdict["issued"] is False
    assert "handed out" in verdict["note"]


async def test_with_the_ledger_off_a_leased_counter_counts_as_issued(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--no-ledger"))
    number = await issue(client)
    assert (await verify(client, number))[1]["issued"] is True
    unused = NumberFormatter(allocator.key, allocator.scheme).format("MY", "ID", allocator.next - 1)
    assert (await verify(client, unused))[1]["issued"] is True


async def test_lower_case_is_read_as_upper_case(client: TestClient) -> None:
    number = await issue(client)
    status, verdict = await verify(client, number.lower())
    assert status == 200
    assert verdict["tracking_number"] == number
    assert verdict["valid"] is True


async def test_a_valid_number_this_service_never_issued_is_not_issued(
    client: TestClient, allocator: Allocator
) -> None:
    await issue(client)
    # The serial of a counter far beyond anything leased, with the service's own key.
    never = NumberFormatter(allocator.key, allocator.scheme).format(
        "MY", "ID", allocator.next + 10**9
    )
    status, verdict = await verify(client, never)
    assert status == 200
    assert verdict["valid"] is True
    assert verdict["issued"] is False


async def test_a_store_made_before_the_scheme_issues_and_verifies_with_four_rounds(
    config: Config, allocators: Allocators, make_client: ClientFactory
) -> None:
    old_key = bytes(range(100, 132))
    await make_a_store_from_before_schemes(config.store, old_key, mark=70_000)
    allocator = await allocators.start()
    client = await make_client(config)
    number = await issue(client)
    # Issued under the old scheme: its serial inverts, with four rounds, to a leased counter.
    counter = permutation(old_key, SCHEME_FEISTEL4).invert(parse(number).serial)
    assert 70_000 <= counter < allocator.next
    assert NumberFormatter(old_key, SCHEME_FEISTEL4).format("MY", "ID", counter) == number
    status, verdict = await verify(client, number)
    assert status == 200
    assert verdict["issued"] is True
    never = NumberFormatter(old_key, SCHEME_FEISTEL4).format("MY", "ID", allocator.next + 10**9)
    status, verdict = await verify(client, never)
    assert status == 200
    assert verdict["valid"] is True
    assert verdict["issued"] is False


async def test_a_wrong_check_character_is_invalid_not_malformed(client: TestClient) -> None:
    number = await issue(client)
    wrong = number[:15] + ("A" if number[15] != "A" else "B")
    status, verdict = await verify(client, wrong)
    assert status == 200
    assert verdict["valid"] is False
    assert verdict["issued"] is False
    assert verdict["problems"] == ["the check character (the last) does not match the other 15"]


async def test_a_lookalike_typo_gets_the_fix_suggested(client: TestClient) -> None:
    valid = with_check("MYIDAAAAAAA0AAA")  # its only lookalike character is the 0
    typo = valid[:11] + "O" + valid[12:]
    status, verdict = await verify(client, typo)
    assert status == 200
    assert verdict["valid"] is False
    assert verdict["suggestion"] == valid
    assert verdict["issued"] is False


def test_a_suggestion_is_made_only_when_exactly_one_lookalike_fix_exists() -> None:
    # Built so that the only lookalike characters are where we put them.
    valid = with_check("MYIDAAAAAAA0AAA")
    typo = valid[:11] + "O" + valid[12:]
    assert suggestion(typo) == valid
    assert suggestion(valid[:15] + ("M" if valid[15] != "M" else "N")) in (None, valid)
    # Nothing to swap: no suggestion, whatever is wrong.
    plain = with_check("MYIDAAAAAAAAAAA")
    assert suggestion(plain[:15] + ("X" if plain[15] != "X" else "Y")) is None


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        ("MYID123", "16 characters"),
        ("MYID0123456789ABCD", "16 characters"),
        ("MYID0123-456789A", "letters A-Z and the digits"),
        ("MYIDÄ123456789AB", "letters A-Z and the digits"),
    ],
)
async def test_a_malformed_number_is_a_400_that_says_what_is_wrong(
    client: TestClient, number: str, problem: str
) -> None:
    status, body = await verify(client, number)
    assert status == 400
    assert body["error"] == "Malformed tracking number"
    assert any(problem in message for message in body["details"]["number"])


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        (with_check("XXID0123456789A"), "characters 1 and 2"),
        (with_check("MYZZ0123456789A"), "characters 3 and 4"),
    ],
)
async def test_a_number_we_could_never_issue_is_invalid_and_says_why(
    client: TestClient, number: str, problem: str
) -> None:
    status, verdict = await verify(client, number)
    assert status == 200
    assert verdict["valid"] is False
    assert verdict["issued"] is False
    assert any(problem in message for message in verdict["problems"])
    assert not any("check character" in message for message in verdict["problems"])


async def test_on_a_feistel_store_a_serial_beyond_the_counters_is_invalid_and_says_why(
    config: Config, allocators: Allocators, make_client: ClientFactory
) -> None:
    await make_a_store_from_before_schemes(config.store, bytes(range(100, 132)), mark=70_000)
    await allocators.start()
    client = await make_client(config)
    await issue(client)  # the worker learns the store's scheme
    status, verdict = await verify(client, with_check("MYIDZZZZZZZZZZZ"))
    assert status == 200
    assert verdict["valid"] is False
    assert verdict["issued"] is False
    assert any("beyond the range" in message for message in verdict["problems"])


async def test_an_ff1_number_whose_serial_is_beyond_2_to_the_56_is_valid_and_issued(
    client: TestClient, allocator: Allocator
) -> None:
    """Scheme 3 (new stores) permutes every 11-character serial: 45% of its numbers have a
    serial of 2**56 or more, and each is as valid as the others."""
    assert allocator.scheme == SCHEME_FF1
    for _ in range(100):
        number = await issue(client)
        if parse(number).serial >= COUNTER_LIMIT:
            break
    else:
        raise AssertionError("no serial beyond 2**56 in 100 numbers")
    status, verdict = await verify(client, number)
    assert status == 200
    assert "problems" not in verdict  # none
    assert verdict["valid"] is True
    assert verdict["issued"] is True


async def test_an_ff1_serial_that_is_no_counters_is_valid_but_never_issued(
    client: TestClient, allocator: Allocator
) -> None:
    """Its inverse is 2**56 or more: beyond every counter, so not issued, without an error."""
    await issue(client)
    permute = permutation(allocator.key, allocator.scheme)
    serial = next(s for s in range(36**11 - 1, 0, -1) if permute.invert(s) >= COUNTER_LIMIT)
    status, verdict = await verify(client, with_check("MYID" + base36(serial)))
    assert status == 200
    assert verdict["valid"] is True
    assert verdict["issued"] is False


def test_serials_up_to_the_counter_limit_can_be_valid() -> None:
    assert problems(with_check("MYID" + base36(COUNTER_LIMIT - 1))) == []
    beyond = problems(with_check("MYID" + base36(COUNTER_LIMIT)))
    assert any("beyond" in problem for problem in beyond)


def base36(value: int) -> str:
    digits = ""
    while value:
        value, digit = divmod(value, 36)
        digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[digit] + digits
    return digits.rjust(11, "0")
