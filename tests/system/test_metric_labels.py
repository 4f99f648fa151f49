"""Metric labels are a fixed set: what a client sends never becomes a new label.

Under the pure-Python HTTP parser (``AIOHTTP_NO_EXTENSIONS``, which aiohttp also falls back to
where its C parser is not built) any token is a method. Counted under its own label, a few
long ones once pushed the allocator's status frame past its 64 KiB cap, and ``/metrics``
answered 503 until the allocator restarted.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.system.conftest import Service

# Nine of these made the frame too large (8 KiB each, within aiohttp's 8190-byte request line).
LONG_METHODS = [chr(ord("A") + i) * 8000 for i in range(9)]


async def send_raw(port: int, method: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} /next-tracking-number HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return status_line


def test_client_chosen_methods_share_one_label(service: Service) -> None:
    service.workers = 1
    service.env = {"AIOHTTP_NO_EXTENSIONS": "1"}
    service.start()

    async def scenario() -> str:
        for method in LONG_METHODS:
            assert (await send_raw(service.port, method)).startswith(b"HTTP/1.1 405")
        async with aiohttp.ClientSession(service.url) as session:
            # The worker reports once a second: wait until the odd methods are counted.
            for _ in range(200):
                async with session.get("/metrics") as response:
                    assert response.status == 200, await response.text()
                    text = await response.text()
                if 'method="other"' in text:
                    return text
                await asyncio.sleep(0.05)
        raise AssertionError("the odd methods were never counted")

    text = asyncio.run(scenario())
    other = re.search(r'tracking_http_requests_total\{method="other",[^}]*\} (\S+)', text)
    assert other is not None, text
    assert float(other.group(1)) == len(LONG_METHODS)
    methods = set(re.findall(r'method="([^"]*)"', text))
    assert methods <= {"GET", "HEAD", "other"}, methods
    assert service.stop() == 0
