"""``GET /tracking-numbers``: listing records, served like production, with a real allocator and
ledger writer behind it."""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from allocator.actor import Allocator
from config.settings import Config
from ledger.records import Record
from service.cursor import Cursors
from service.listing import media_type
from service.listing_query import RULES, timestamp_ns
from service.openapi import build
from service.records import RecordBody
from tests.conftest import CANONICAL_QUERY
from tests.service.conftest import ClientFactory

TOKEN = "s3cret"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
OTHER_CUSTOMER = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
async def admin_client(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> TestClient:
    return await make_client(make_config("--admin-token", TOKEN))


async def issue(client: TestClient, count: int = 1, **fields: str) -> list[str]:
    response = await client.get(
        "/next-tracking-number", params={**CANONICAL_QUERY, "count": str(count), **fields}
    )
    assert response.status == 200
    return (await response.json())["tracking_numbers"]


async def listing(
    client: TestClient, headers: dict[str, str] | None = None, **params: str
) -> tuple[int, Any, dict[str, str]]:
    response = await client.get(
        "/tracking-numbers", params=params, headers={**ADMIN, **(headers or {})}
    )
    body = await response.read()
    parsed = json.loads(body) if response.content_type == "application/json" else body
    return response.status, parsed, dict(response.headers)


async def test_a_page_lists_records_newest_first_with_a_cursor_and_a_link(
    admin_client: TestClient,
) -> None:
    first = await issue(admin_client, 3)
    second = await issue(admin_client, 2, customer_id=OTHER_CUSTOMER)
    status, page, headers = await listing(admin_client, limit="4")
    assert status == 200
    # Newest request first; inside one request, the highest counter first.
    assert [item["tracking_number"] for item in page["items"]] == [*second[::-1], *first[:0:-1]]
    assert set(page["items"][0]) == set(RecordBody.__struct_fields__)
    assert page["items"][0]["customer_name"] == CANONICAL_QUERY["customer_name"]
    cursor = page["next_cursor"]
    assert headers["Link"] == f'</tracking-numbers?limit=4&cursor={cursor}>; rel="next"'
    status, rest, headers = await listing(admin_client, limit="4", cursor=cursor)
    assert [item["tracking_number"] for item in rest["items"]] == first[:1]
    assert rest["next_cursor"] is None
    assert "Link" not in headers


async def test_the_link_keeps_the_filters_and_leads_to_the_next_page(
    admin_client: TestClient,
) -> None:
    mine = await issue(admin_client, 5, customer_id=OTHER_CUSTOMER)
    await issue(admin_client, 5)
    filters = {
        "customer_id": OTHER_CUSTOMER.upper(),
        "origin_country_id": "my",
        "issued_from": "2000-01-01T08:00:00+08:00",  # a "+" that must stay one in the link
        "limit": "3",
    }
    status, page, headers = await listing(admin_client, **filters)
    assert status == 200
    link = headers["Link"]
    assert link.startswith("</tracking-numbers?")
    assert link.endswith('>; rel="next"')
    response = await admin_client.get(link[1 : link.index(">")], headers=ADMIN)
    rest = await response.json()
    listed = [item["tracking_number"] for item in page["items"] + rest["items"]]
    assert listed == mine[::-1]


async def test_a_tampered_cursor_or_one_of_another_query_is_a_400_naming_the_cursor(
    admin_client: TestClient,
) -> None:
    await issue(admin_client, 4)
    _, page, _ = await listing(admin_client, limit="2")
    cursor = page["next_cursor"]
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    foreign = Cursors(b"\x00" * 32).make((10**6, 5), _no_filters())
    for params in (
        {"limit": "2", "cursor": flipped},  # altered
        {"limit": "2", "cursor": foreign},  # another deployment's
        {"limit": "2", "cursor": cursor, "origin_country_id": "MY"},  # another query's
        {"cursor": "not-a-cursor"},
    ):
        status, body, _ = await listing(admin_client, **params)
        assert status == 400, params
        assert body["details"] == {"cursor": [RULES["cursor"]]}
    status, _, _ = await listing(admin_client, limit="3", cursor=cursor)  # the limit may change
    assert status == 200


def _no_filters() -> Any:
    from ledger.listing import Filters

    return Filters()


async def test_every_bad_field_is_listed_in_one_400(admin_client: TestClient) -> None:
    status, body, _ = await listing(
        admin_client,
        customer_id="nope",
        customer_slug="Not A Slug",
        origin_country_id="XX",
        destination_country_id="1",
        issued_from="yesterday",
        issued_to="2026-02-30T00:00:00Z",
        correlation_id="a b",
        limit="1001",
        unknown="ignored",
    )
    assert status == 400
    assert body["error"] == "Invalid request parameters"
    assert body["details"] == {
        name: [RULES[name]]
        for name in (
            "customer_id",
            "customer_slug",
            "origin_country_id",
            "destination_country_id",
            "issued_from",
            "issued_to",
            "correlation_id",
            "limit",
        )
    }
    response = await admin_client.get(
        "/tracking-numbers?limit=1&limit=2&issued_from=%ZZ", headers=ADMIN
    )
    assert response.status == 400
    assert set((await response.json())["details"]) == {"limit", "issued_from"}
    status, body, _ = await listing(
        admin_client, issued_from="2026-12-02T00:00:00Z", issued_to="2026-12-01T00:00:00Z"
    )
    assert (status, body["details"]) == (400, {"issued_to": ["must be later than issued_from"]})


async def test_records_need_the_admin_token_loopback_alone_is_not_enough(
    admin_client: TestClient, config: Config, make_client: ClientFactory
) -> None:
    await issue(admin_client)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await admin_client.get("/tracking-numbers", headers=headers)
        assert response.status == 401
        assert "error" in await response.json()
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    tokenless = await make_client(config)  # no token configured: nobody may read records
    response = await tokenless.get("/tracking-numbers", headers=ADMIN)
    assert response.status == 403
    assert "admin token" in (await response.json())["error"]


async def test_with_the_ledger_off_the_listing_is_a_404_that_says_so(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--admin-token", TOKEN, "--no-ledger"))
    response = await client.get("/tracking-numbers", headers=ADMIN)
    assert response.status == 404
    assert "ledger is off" in (await response.json())["error"]


async def test_ndjson_and_csv_stream_every_matching_record(admin_client: TestClient) -> None:
    # More than a stream reads at a time, so that it takes several pages.
    numbers = []
    for _ in range(3):
        numbers += await issue(admin_client, 1000, customer_name='Zoë "Ölçü", 物流')
    numbers += await issue(admin_client, 7)
    await issue(admin_client, 2, customer_id=OTHER_CUSTOMER)
    expected = numbers[::-1]
    query = {"customer_id": CANONICAL_QUERY["customer_id"], "limit": "5"}
    status, body, headers = await listing(
        admin_client, headers={"Accept": "application/x-ndjson"}, **query
    )
    assert (status, headers["Content-Type"]) == (200, "application/x-ndjson")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [line["tracking_number"] for line in lines] == expected
    assert lines[-1]["customer_name"] == 'Zoë "Ölçü", 物流'
    status, body, headers = await listing(admin_client, headers={"Accept": "text/csv"}, **query)
    assert (status, headers["Content-Type"]) == (200, "text/csv; charset=utf-8")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    assert [row["tracking_number"] for row in rows] == expected
    assert list(rows[0]) == list(RecordBody.__struct_fields__)
    assert {row["customer_name"] for row in rows} == {'Zoë "Ölçü", 物流', "RedBox Logistics"}
    assert rows[0]["idempotency_key_sha256"] == ""
    assert rows[0]["issued_at"] == lines[0]["issued_at"]
    # A cursor is where a stream starts.
    _, page, _ = await listing(admin_client, **query)
    status, body, _ = await listing(
        admin_client,
        headers={"Accept": "application/x-ndjson"},
        **query,
        cursor=page["next_cursor"],
    )
    assert [json.loads(line)["tracking_number"] for line in body.splitlines()] == expected[5:]


async def test_an_empty_ledger_lists_nothing(admin_client: TestClient) -> None:
    status, page, _ = await listing(admin_client)
    assert (status, page["items"], page["next_cursor"]) == (200, [], None)
    status, body, _ = await listing(admin_client, headers={"Accept": "text/csv"})
    assert body.decode().splitlines() == [",".join(RecordBody.__struct_fields__)]


async def test_filters_by_time_correlation_id_and_country(admin_client: TestClient) -> None:
    before = await issue(admin_client, 2)
    _, page, _ = await listing(admin_client)
    middle = page["items"][0]["issued_at"]
    tagged = await admin_client.get(
        "/next-tracking-number",
        params={**CANONICAL_QUERY, "destination_country_id": "SG"},
        headers={"X-Request-ID": "order-42"},
    )
    number = (await tagged.json())["tracking_number"]
    for params, expected in (
        ({"correlation_id": "order-42"}, [number]),
        ({"destination_country_id": "sg"}, [number]),
        ({"issued_to": middle}, []),
        ({"issued_from": middle, "destination_country_id": "ID"}, before[::-1]),
        # Beyond SQLite's integers (found by schemathesis: a 500), and before datetime's year 1.
        ({"issued_from": "3740-06-07T11:20:08Z"}, []),
        ({"issued_to": "0000-01-01T00:00:00Z"}, []),
        ({"issued_from": "0000-01-01T00:00:00Z", "destination_country_id": "SG"}, [number]),
    ):
        status, page, _ = await listing(admin_client, **params)
        assert status == 200
        assert [item["tracking_number"] for item in page["items"]] == expected, params


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("application/x-ndjson, application/json;q=0.5", "application/x-ndjson"),
        ("application/json, text/csv;q=0.9", "application/json"),
        ("text/csv;q=0", "application/json"),
        ("TEXT/CSV; charset=utf-8", "text/csv"),
    ],
)
def test_the_accept_header_picks_the_media_type(accept: str, expected: str) -> None:
    assert media_type(accept) == expected


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01t00:00:01.5z", 1_500_000_000),
        ("1970-01-01T08:00:00.000000001+08:00", 1),
        ("1970-01-01T00:00:00.1234567891Z", 123_456_789),
        ("1998-12-31T23:59:60Z", 915_148_800 * 10**9),
        ("2024-02-29T23:30:00-00:30", 1_709_251_200 * 10**9),
        ("1969-12-31T23:59:59Z", -(10**9)),
        ("0000-03-01T00:00:00Z", -(2**63)),  # year 0 (RFC 3339's calendar), beyond SQLite
        ("9999-12-31T23:59:59Z", 2**63 - 1),
    ],
)
def test_timestamps_are_read_to_the_nanosecond(text: str, ns: int) -> None:
    assert timestamp_ns(text) == ns


@given(st.datetimes(timezones=st.just(datetime.UTC)), st.integers(0, 999))
def test_timestamps_are_read_as_datetime_reads_them(moment: datetime.datetime, ns: int) -> None:
    text = f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S.%f") + f"{ns:03d}+05:45"
    expected = (moment - EPOCH) // datetime.timedelta(microseconds=1) * 1000 + ns
    expected -= (5 * 3600 + 45 * 60) * 10**9
    assert timestamp_ns(text) == min(max(expected, -(2**63)), 2**63 - 1)


def test_a_record_shows_its_time_of_issue_truncated_so_a_window_from_it_holds_it() -> None:
    # A float would round .999999999 up to the next second, after the record.
    issued_at_ns = 1_800_000_000_999_999_999
    record = Record(1, "MYID00000000001X", issued_at_ns, *["x"] * 9, None)
    shown = json.loads(msgspec.json.encode(RecordBody.of(record)))["issued_at"]
    assert shown == "2027-01-15T08:00:00.999999Z"
    assert timestamp_ns(shown) <= issued_at_ns


async def test_pages_and_refusals_match_the_documented_schemas(admin_client: TestClient) -> None:
    await issue(admin_client, 3)
    document = build()
    responses = document["paths"]["/tracking-numbers"]["get"]["responses"]
    for params, headers, status in (
        ({"limit": "2"}, ADMIN, "200"),
        ({"limit": "0"}, ADMIN, "400"),
        ({}, {}, "401"),
    ):
        response = await admin_client.get("/tracking-numbers", params=params, headers=headers)
        assert str(response.status) == status
        schema = responses[status]["content"]["application/json"]["schema"]
        jsonschema.validate(await response.json(), {**schema, **document})
    for parameter in document["paths"]["/tracking-numbers"]["get"]["parameters"]:
        if "example" in parameter:
            jsonschema.validate(parameter["example"], parameter["schema"])


async def test_a_ledger_file_that_cannot_be_read_is_a_503_with_retry_after(
    make_config: Callable[..., Config],
    config: Config,
    allocator: Allocator,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    (tmp_path / "ledger.sqlite3").write_bytes(b"not a database, " * 512)
    # The allocator's runtime directory, and a state directory whose ledger file is garbage.
    flags = ("--state-dir", str(tmp_path), "--runtime-dir", config.runtime_dir)
    client = await make_client(make_config("--admin-token", TOKEN, *flags))
    for accept in ("application/json", "text/csv"):
        response = await client.get("/tracking-numbers", headers={**ADMIN, "Accept": accept})
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "ledger cannot be read" in (await response.json())["error"]
