import asyncio
import datetime
import json
import re
import uuid
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient

from allocator.actor import Allocator
from config.settings import Config
from service import params, views
from service.keys import ISSUER
from tests.conftest import CANONICAL_QUERY, NUMBER_PATTERN, Allocators
from tests.service.conftest import ClientFactory, head_refused_by_aiohttp

PATH = "/next-tracking-number"


async def get_number(client: TestClient, **overrides: str) -> dict:
    response = await client.get(PATH, params={**CANONICAL_QUERY, **overrides})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_a_valid_request_gets_a_number_in_the_documented_shape(client: TestClient) -> None:
    response = await client.get(PATH, params=CANONICAL_QUERY)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"tracking_number", "created_at", "correlation_id", "request_metadata"}
    assert re.match(NUMBER_PATTERN, body["tracking_number"])
    assert len(body["tracking_number"]) == 16
    assert body["tracking_number"].startswith("MYID")
    assert body["request_metadata"] == {
        "origin_country": "MY",
        "destination_country": "ID",
        "weight_kg": "1.234",
        "customer_slug": "redbox-logistics",
    }
    assert response.headers["X-Request-ID"] == body["correlation_id"]
    assert uuid.UUID(body["correlation_id"]).version == 8


@pytest.mark.parametrize(
    ("created_at", "suffix", "offset"),
    [
        ("2018-11-20T19:29:32+08:00", "+08:00", datetime.timedelta(hours=8)),
        ("2018-11-20T19:29:32Z", "Z", datetime.timedelta(0)),
        ("2018-11-20T19:29:32-05:30", "-05:30", -datetime.timedelta(hours=5, minutes=30)),
    ],
)
async def test_created_at_is_the_issue_time_in_the_requests_offset(
    client: TestClient, created_at: str, suffix: str, offset: datetime.timedelta
) -> None:
    before = datetime.datetime.now(datetime.UTC)
    body = await get_number(client, created_at=created_at)
    issued = datetime.datetime.fromisoformat(body["created_at"])
    assert body["created_at"].endswith(suffix)
    assert issued.utcoffset() == offset
    assert before <= issued <= datetime.datetime.now(datetime.UTC)


async def test_lower_case_countries_come_back_upper_cased(client: TestClient) -> None:
    body = await get_number(client, origin_country_id="sg", destination_country_id="th")
    assert body["tracking_number"].startswith("SGTH")
    assert body["request_metadata"]["origin_country"] == "SG"


async def test_concurrent_requests_get_distinct_numbers(client: TestClient) -> None:
    bodies = await asyncio.gather(*(get_number(client) for _ in range(500)))
    numbers = [body["tracking_number"] for body in bodies]
    assert len(set(numbers)) == 500
    assert len({body["correlation_id"] for body in bodies}) == 500


async def test_a_sane_request_id_is_echoed(client: TestClient) -> None:
    response = await client.get(
        PATH, params=CANONICAL_QUERY, headers={"X-Request-ID": "req-42.a:b_c"}
    )
    assert response.headers["X-Request-ID"] == "req-42.a:b_c"
    assert (await response.json())["correlation_id"] == "req-42.a:b_c"


async def test_x_correlation_id_is_honoured_too(client: TestClient) -> None:
    response = await client.get(PATH, params=CANONICAL_QUERY, headers={"X-Correlation-ID": "c-1"})
    assert (await response.json())["correlation_id"] == "c-1"


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", "<script>"])
async def test_an_insane_request_id_is_replaced_by_a_uuid(client: TestClient, bad: str) -> None:
    response = await client.get(PATH, params=CANONICAL_QUERY, headers={"X-Request-ID": bad})
    correlation_id = (await response.json())["correlation_id"]
    assert correlation_id != bad
    assert uuid.UUID(correlation_id)


async def test_bad_requests_list_every_bad_field_in_the_documented_shape(
    client: TestClient,
) -> None:
    query = {**CANONICAL_QUERY, "weight": "-1", "customer_id": "nope"}
    del query["customer_slug"]
    response = await client.get(PATH, params=query, headers={"X-Request-ID": "bad-1"})
    assert response.status == 400
    assert response.content_type == "application/json"
    body = await response.json()
    assert body == {
        "error": "Invalid request parameters",
        "details": {
            "weight": [params.RULES["weight"]],
            "customer_id": [params.RULES["customer_id"]],
            "customer_slug": [params.MISSING],
        },
        "correlation_id": "bad-1",
    }


async def test_a_repeated_parameter_is_a_bad_request(client: TestClient) -> None:
    query = "&".join(f"{k}={v}" for k, v in CANONICAL_QUERY.items() if k != "created_at")
    response = await client.get(f"{PATH}?{query}&weight=2&created_at=2018-11-20T19:29:32Z")
    assert response.status == 400
    assert (await response.json())["details"] == {"weight": [params.REPEATED]}


async def test_an_unknown_path_is_a_json_404(client: TestClient) -> None:
    response = await client.get("/nope", headers={"Accept": "text/html"})
    assert response.status == 404
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == "Not found"
    assert uuid.UUID(body["correlation_id"])


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize(("path", "allowed"), [(PATH, "GET"), ("/health", "GET, HEAD")])
async def test_other_methods_are_a_json_405(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert response.status == 405
    assert response.content_type == "application/json"
    assert response.headers["Allow"] == allowed
    assert (await response.json())["error"] == "Method not allowed"


async def test_head_of_the_issuing_route_is_a_405_that_consumes_no_number(
    client: TestClient, allocator: Allocator
) -> None:
    await get_number(client)  # the worker has its first block: nothing moves until it is half used
    issuer = client.app[ISSUER]
    buffered, leased = issuer.buffered, allocator.next
    for query in (CANONICAL_QUERY, {**CANONICAL_QUERY, "count": "1000"}):
        response = await client.head(PATH, params=query)
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
    assert (issuer.buffered, allocator.next) == (buffered, leased)


async def test_head_answers_without_a_body(client: TestClient) -> None:
    response = await client.head("/health")
    assert response.status == 200
    assert await response.read() == b""


async def test_a_bug_is_a_json_500_without_a_stack_trace(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw_query: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views, "validate", broken)
    response = await client.get(PATH, params=CANONICAL_QUERY, headers={"Accept": "text/html"})
    assert response.status == 500
    assert response.content_type == "application/json"
    text = await response.text()
    assert "secret internals" not in text
    assert "Traceback" not in text
    assert (await response.json())["error"] == "Internal server error"


async def test_the_health_check_says_ok_while_numbers_can_be_issued(client: TestClient) -> None:
    await get_number(client)
    response = await client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert body["allocator_connected"] is True
    assert body["buffered_numbers"] > 0


async def test_without_an_allocator_requests_get_a_json_503_with_retry_after(
    make_config: object, make_client: ClientFactory
) -> None:
    config: Config = make_config("--lease-timeout", "0.5")  # type: ignore[operator]
    client = await make_client(config)
    response = await client.get(PATH, params=CANONICAL_QUERY)
    assert response.status == 503
    assert response.content_type == "application/json"
    assert response.headers["Retry-After"] == "1"
    body = await response.json()
    assert set(body) == {"error", "correlation_id"}

    health = await client.get("/health")
    assert health.status == 503
    assert health.headers["Retry-After"] == "1"
    assert (await health.json())["status"] == "unavailable"


async def raw_request(client: TestClient, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes straight to the server; the status, headers and body of its answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


async def json_error(
    client: TestClient, data: bytes, *, status: int | None = None
) -> tuple[int, dict]:
    """Send ``data`` raw; assert the answer is a JSON 4xx error of the usual shape, and return
    its status and document."""
    code, headers, body = await raw_request(client, data)
    assert 400 <= code < 500, (code, body[:200])
    if status is not None:
        assert code == status, (code, body[:200])
    assert headers["Content-Type"].startswith("application/json"), headers
    assert b"<html" not in body.lower()
    assert b"Traceback" not in body
    document = json.loads(body)
    # {"error": …, "details": …, "correlation_id": …}, details only for a 400.
    assert set(document) <= {"error", "details", "correlation_id"}, document
    assert isinstance(document["error"], str)
    assert document["error"]
    assert "details" not in document or code == 400, document
    assert document["correlation_id"] == headers["X-Request-ID"], (document, headers)
    assert int(headers["Content-Length"]) == len(body)
    return code, document


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ],
    ids=["garbage", "huge header", "huge request line", "malformed header"],
)
@head_refused_by_aiohttp
async def test_malformed_requests_get_a_json_4xx(client: TestClient, data: bytes) -> None:
    await json_error(client, data)


async def test_health_follows_the_allocator_away_and_back(
    allocators: Allocators, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    allocator = await allocators.start()
    client = await make_client(make_config("--lease-timeout", "0.5"))
    await get_number(client)
    await allocators.stop(allocator)

    # The worker serves what it holds, then answers 503 like /health does.
    for _ in range(100_000):
        response = await client.get(PATH, params=CANONICAL_QUERY)
        if response.status == 503:
            break
        assert response.status == 200
    assert response.status == 503
    health = await client.get("/health")
    assert health.status == 503
    assert (await health.json())["status"] == "unavailable"

    await allocators.start()
    for _ in range(50):
        health = await client.get("/health")
        if health.status == 200:
            break
        await asyncio.sleep(0.1)
    assert health.status == 200
    await get_number(client)


async def test_equal_weights_and_uuids_are_one_request_for_an_idempotency_key(
    client: TestClient,
) -> None:
    # The fingerprint of the key's first request is over the validated, normalised values:
    # 000001.500 kg is 1.5 kg, and a UUID's case is no difference.
    headers = {"Idempotency-Key": "k-equal"}
    first = await client.get(PATH, params={**CANONICAL_QUERY, "weight": "1.5"}, headers=headers)
    assert first.status == 200
    assert (await first.json())["request_metadata"]["weight_kg"] == "1.5"
    equal = {
        **CANONICAL_QUERY,
        "weight": "000001.500",
        "customer_id": CANONICAL_QUERY["customer_id"].upper(),
    }
    again = await client.get(PATH, params=equal, headers=headers)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
