"""Header values that are not ASCII, sent as raw bytes on a real socket.

aiohttp's parser hands a byte >= 0x80 that is not part of valid UTF-8 to the application as a
lone surrogate, which cannot be encoded again. Every header the service reads or echoes gets
such a byte, valid UTF-8 that is not ASCII, and control characters, on every kind of request,
with CORS open to every origin and an admin token set: each answer must be a complete JSON
answer below 500, and every number the service counts as issued must have reached its client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from allocator.actor import Allocator
from config.settings import Config
from service import admin, app
from service.keys import METRICS
from service.metrics import WorkerMetrics
from tests.conftest import CANONICAL_QUERY, PLAIN_AIOHTTP
from tests.service.conftest import ClientFactory, shortcuts_only

ISSUE = "/next-tracking-number?" + urlencode(CANONICAL_QUERY)
# The request targets, and the request line of each (a preflight is an OPTIONS).
REQUESTS = {
    "issue": f"GET {ISSUE}",
    "issue with count": f"GET {ISSUE}&count=3",
    "preflight": "OPTIONS /next-tracking-number",
    "verify": "GET /tracking-numbers/MYIDI45OOV7PPDV7",
    "metrics": "GET /metrics",
    "status": "GET /allocator/status",
    "health": "GET /health",
    "not found": "GET /nowhere",
    "method not allowed": "DELETE /health",
}
# Every header the service (or aiohttp on its behalf) reads, or echoes in an answer, with a
# well-formed value that the bad bytes are put into.
HEADERS = {
    "Origin": b"https://shop.example",
    "Authorization": b"Bearer s3cret",
    "X-Request-ID": b"order-4711",
    "X-Correlation-ID": b"order-4711",
    "Idempotency-Key": b"8e03978e-40d5-43e8-bc93-6894a57f9324",
    "Access-Control-Request-Method": b"GET",
    "Access-Control-Request-Headers": b"X-Request-ID",
    "Expect": b"100-continue",
    "Host": b"tracking.example",
    "Connection": b"keep-alive",
    "Accept-Encoding": b"gzip",
    # Read by aiohttp's parser only, which must refuse them in JSON or let them be.
    "Content-Length": b"0",
    "Transfer-Encoding": b"chunked",
    "Upgrade": b"websocket",
    "Cookie": b"session=s1",
    "User-Agent": b"curl/8.0",
}
# Sent with every request (unless it is the one with bad bytes): CORS applies to all of them.
ALWAYS = ("Host", "Origin", "Access-Control-Request-Method")
# Headers whose bad value refuses the request (a 400 or a 417), so that nothing is issued.
REFUSING = ("Idempotency-Key", "Expect", "Content-Length", "Transfer-Encoding")
BAD_BYTES = {"not UTF-8": b"\xff\xfe", "UTF-8": "é€".encode(), "DEL": b"\x7f", "SOH": b"\x01"}
# Refused by aiohttp's parser before the app runs: control bytes in any header, anything but
# ASCII in the headers that frame the body.
CONTROLS = ("DEL", "SOH")
FRAMING = ("Content-Length", "Transfer-Encoding")


class CountingMetrics(WorkerMetrics):
    """Worker metrics that also keep the total of numbers issued, which reports reset."""

    total_issued = 0

    def issued(self, count: int = 1) -> None:
        self.total_issued += count
        super().issued(count)


async def exchange(client: TestClient, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a new connection: the answer's status, headers and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head)
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(": ", 1)
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value
        body = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(
            name,
            # aiohttp's expect handler fails on it (a 500): the shortcuts refuse it first.
            marks=shortcuts_only if name == "Expect" else (),
        )
        for name in HEADERS
    ],
)
async def test_non_ascii_header_bytes_get_a_json_answer_below_500(
    allocator: Allocator,
    make_config: Callable[..., Config],
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    header: str,
) -> None:
    # The test client is on loopback, where the operator endpoints never read Authorization.
    monkeypatch.setattr(admin, "_is_loopback", lambda remote: False)
    monkeypatch.setattr(app, "WorkerMetrics", CountingMetrics)
    client = await make_client(make_config("--cors-origins", "*", "--admin-token", "s3cret"))
    metrics = client.app[METRICS]
    assert isinstance(metrics, CountingMetrics)
    received = 0
    for request, line in REQUESTS.items():
        for kind, bad in BAD_BYTES.items():
            lines = [f"{line} HTTP/1.1".encode(), header.encode() + b": " + HEADERS[header] + bad]
            lines += [name.encode() + b": " + HEADERS[name] for name in ALWAYS if name != header]
            status, headers, body = await exchange(client, b"\r\n".join(lines) + b"\r\n\r\n")
            case = f"{header} with {kind} bytes on {request}"
            assert status < 500, case
            if PLAIN_AIOHTTP and (kind in CONTROLS or header in FRAMING):
                # Without the shortcuts' connection handler, aiohttp's own text answer.
                assert status == 400, case
                continue
            if header == "Origin":  # not an origin a browser sends: no CORS
                assert "access-control-allow-origin" not in headers, case
            if request == "preflight" and status == 200:
                assert body == b"", case  # a granted preflight has no body
                continue
            assert headers["content-type"] == "application/json", case
            answer = json.loads(body)
            assert ("error" in answer) == (status >= 400), case
            if request.startswith("issue") and status == 200:
                received += len(answer.get("tracking_numbers", [0]))
    if header not in REFUSING:
        assert received > 0
    assert metrics.total_issued == received
