"""Hostile HTTP: whatever a client sends, the answer is a JSON 4xx (never a 500, never HTML).

tests/service/test_app.py covers garbage, one huge header, a huge path, a malformed header
line, the usual other methods and HEAD; this file adds the rest of issue 4's list.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from service import params
from tests.conftest import CANONICAL_QUERY
from tests.service.conftest import head_refused_by_aiohttp
from tests.service.test_app import PATH, json_error, raw_request

VALID_QUERY = urlencode(CANONICAL_QUERY)


def http_get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: x", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


@head_refused_by_aiohttp
async def test_an_oversized_query_string_is_a_json_4xx(client: TestClient) -> None:
    # aiohttp refuses a request line over 8190 bytes before any handler runs.
    padding = "&pad=" + "x" * 9000
    await json_error(client, http_get(f"{PATH}?{VALID_QUERY}{padding}"))


async def test_a_query_string_just_under_the_line_limit_still_gets_a_number(
    client: TestClient,
) -> None:
    target = f"{PATH}?{VALID_QUERY}&pad="
    target += "x" * (8000 - len(target))
    status, _, body = await raw_request(client, http_get(target))
    assert status == 200, body[:300]
    assert json.loads(body)["tracking_number"].startswith("MYID")


@head_refused_by_aiohttp
async def test_too_many_headers_are_a_json_4xx(client: TestClient) -> None:
    headers = [f"X-Filler-{n}: {n}" for n in range(300)]
    await json_error(client, http_get("/health", *headers))


@head_refused_by_aiohttp
async def test_an_oversized_header_on_the_hot_path_is_a_json_4xx(client: TestClient) -> None:
    await json_error(client, http_get(f"{PATH}?{VALID_QUERY}", "X-Request-ID: " + "r" * 9000))


async def test_hundreds_of_unknown_parameters_are_ignored(client: TestClient) -> None:
    extra = "&".join(f"p{n}=v{n}" for n in range(500))
    status, _, body = await raw_request(client, http_get(f"{PATH}?{extra}&{VALID_QUERY}"))
    assert status == 200, body[:300]


async def test_hundreds_of_repeats_of_one_parameter_are_one_json_400(client: TestClient) -> None:
    repeats = "&".join("weight=1.5" for _ in range(400))
    _, body = await json_error(client, http_get(f"{PATH}?{VALID_QUERY}&{repeats}"), status=400)
    assert body["details"] == {"weight": [params.REPEATED]}


async def test_a_parameter_repeated_under_a_percent_encoded_name_is_a_json_400(
    client: TestClient,
) -> None:
    # w%65ight decodes to weight: the same parameter, given twice.
    _, body = await json_error(client, http_get(f"{PATH}?{VALID_QUERY}&w%65ight=2.5"), status=400)
    assert body["details"] == {"weight": [params.REPEATED]}


@pytest.mark.parametrize(
    "value",
    [
        "%zz",  # not hex
        "1%2",  # truncated escape
        "%",  # a lone percent sign
        "%ff%fe",  # bytes that are never UTF-8
        "%c0%af",  # an overlong encoding of "/"
        "%ed%a0%80",  # an encoded UTF-16 surrogate
        "%e2%82",  # a truncated multi-byte sequence
    ],
)
async def test_invalid_percent_encoding_or_utf8_is_a_json_400_naming_the_field(
    client: TestClient, value: str
) -> None:
    query = VALID_QUERY.replace("customer_name=RedBox+Logistics", f"customer_name={value}")
    _, body = await json_error(client, http_get(f"{PATH}?{query}"), status=400)
    assert body["details"] == {"customer_name": [params.BAD_ENCODING]}


@head_refused_by_aiohttp
@pytest.mark.parametrize(
    "raw_byte", [b"\xff", b"\x80", b"\xc3"], ids=["ff", "continuation", "truncated"]
)
async def test_raw_bytes_that_are_not_utf8_in_the_query_are_a_json_4xx(
    client: TestClient, raw_byte: bytes
) -> None:
    data = http_get(f"{PATH}?{VALID_QUERY}&customer_name=").replace(
        b"customer_name=RedBox+Logistics&", b""
    )
    data = data.replace(b"customer_name= HTTP", b"customer_name=" + raw_byte + b" HTTP")
    await json_error(client, data)


@head_refused_by_aiohttp
async def test_a_nul_byte_in_a_header_is_a_json_4xx(client: TestClient) -> None:
    await json_error(client, http_get("/health", "X-Request-ID: a\x00b"))


@head_refused_by_aiohttp
async def test_conflicting_content_lengths_are_a_json_4xx(client: TestClient) -> None:
    await json_error(
        client,
        http_get(f"{PATH}?{VALID_QUERY}", "Content-Length: 5", "Content-Length: 6") + b"hello",
    )


@head_refused_by_aiohttp
async def test_content_length_and_chunked_together_are_a_json_4xx(client: TestClient) -> None:
    # The classic request-smuggling shape: a proxy and we might disagree on the body's end.
    await json_error(
        client,
        http_get(f"{PATH}?{VALID_QUERY}", "Content-Length: 4", "Transfer-Encoding: chunked")
        + b"0\r\n\r\n",
    )


@head_refused_by_aiohttp
async def test_a_broken_chunked_body_is_a_json_4xx(client: TestClient) -> None:
    data = b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    await json_error(client, data)


@pytest.mark.parametrize(
    ("method", "status"),
    # A method that aiohttp's parser does not know (BREW, RFC 2324) fails at parsing: 400.
    [("TRACE", 405), ("PROPFIND", 405), pytest.param("BREW", None, marks=head_refused_by_aiohttp)],
)
async def test_unusual_methods_are_a_json_4xx(
    client: TestClient, method: str, status: int | None
) -> None:
    data = f"{method} {PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    await json_error(client, data, status=status)


@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT x:443 HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "GET http://x HTTP/1.1",
        pytest.param("GET * HTTP/1.1", marks=head_refused_by_aiohttp),
    ],
)
async def test_a_target_that_no_route_can_match_is_a_json_4xx(
    client: TestClient, request_line: str
) -> None:
    # No path starting with "/": aiohttp's router raises its own plain-text 404 for these.
    data = f"{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    await json_error(client, data)


@head_refused_by_aiohttp
async def test_a_malformed_method_token_is_a_json_400(client: TestClient) -> None:
    await json_error(client, b"G(E)T /health HTTP/1.1\r\nHost: x\r\n\r\n", status=400)


@head_refused_by_aiohttp
async def test_an_unsupported_http_version_is_a_json_4xx(client: TestClient) -> None:
    await json_error(client, b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n")


@head_refused_by_aiohttp
async def test_an_http2_preface_is_a_json_4xx(client: TestClient) -> None:
    await json_error(client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


async def test_head_of_a_bad_request_is_a_400_without_a_body(client: TestClient) -> None:
    response = await client.head("/tracking-numbers/MY")  # HEAD of the issuing route: a 405
    assert response.status == 400
    assert response.content_type == "application/json"
    assert await response.read() == b""


async def test_a_bad_percent_escape_in_the_path_is_a_json_404(client: TestClient) -> None:
    await json_error(client, http_get("/next-tracking-number%zz"), status=404)
