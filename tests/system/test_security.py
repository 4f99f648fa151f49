"""Security properties of the real run.py: the allocator socket's modes, the key kept secret
in every error body and log line, and the time limits on slow and idle clients.

(The key in /metrics, /allocator/status and the access log: tests/system/test_operations.py.)
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import stat
import time
from pathlib import Path

import aiohttp

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Service, sqlite_state


def test_the_real_allocator_socket_is_0600_in_a_directory_only_its_user_enters(
    service: Service,
) -> None:
    service.start()
    runtime_dir = service.state_dir / "run"
    socket_mode = os.stat(runtime_dir / "allocator.sock").st_mode
    assert stat.S_ISSOCK(socket_mode)
    assert stat.S_IMODE(socket_mode) == 0o600
    assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    # ...and so it stays after the allocator was killed and started again.
    (allocator,) = service.child_pids("allocator")
    os.kill(allocator, signal.SIGKILL)
    service.wait_for_message("allocator listening", 2)
    assert stat.S_IMODE(os.stat(runtime_dir / "allocator.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    assert service.stop() == 0


def key_forms(key: bytes) -> list[bytes]:
    """Every way the key could be written out: raw, hex, base64, Python's repr."""
    return [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key),
        base64.b64encode(key).rstrip(b"="),
        repr(key)[2:-1].encode(),
    ]


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def error_answers(service: Service) -> dict[str, bytes]:
    """One answer of every error kind the service gives, head and body."""
    answers: dict[str, bytes] = {}
    async with aiohttp.ClientSession(service.url) as session:

        async def get(name: str, method: str, path: str, **kwargs: object) -> None:
            async with session.request(method, path, **kwargs) as response:  # type: ignore[arg-type]
                assert response.status >= 400, (name, response.status)
                answers[name] = str(response.headers).encode() + await response.read()

        await get("400", "GET", "/next-tracking-number", params={"weight": "-1"})
        await get("404", "GET", "/no/such/page")
        await get("405", "POST", "/next-tracking-number")
    port = service.port
    answers["malformed"] = await raw(port, b"NOT HTTP\r\n\r\n")
    answers["huge header"] = await raw(
        port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n"
    )
    answers["no route"] = await raw(port, b"OPTIONS * HTTP/1.1\r\nConnection: close\r\n\r\n")
    # 503s: the allocator stopped, so the operator endpoints cannot ask it.
    (allocator,) = service.child_pids("allocator")
    os.kill(allocator, signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession(service.url) as session:
            for path in ("/metrics", "/allocator/status"):
                async with session.get(path) as response:
                    assert response.status == 503
                    answers[f"503 {path}"] = str(response.headers).encode()
                    answers[f"503 {path}"] += await response.read()
    finally:
        os.kill(allocator, signal.SIGCONT)
    return answers


def test_the_key_is_in_no_error_answer_and_no_log_line(short_tmp: Path) -> None:
    service = Service(short_tmp, 1, "--lease-timeout", "0.3")
    try:
        service.start()
        answers = asyncio.run(error_answers(service))
        assert service.stop() == 0
    finally:
        service.kill()
    key, _ = sqlite_state(short_tmp / "tracking.sqlite3")
    log = service.log().encode()
    assert len(answers) == 8
    for form in key_forms(key):
        for name, answer in answers.items():
            assert form not in answer, name
        assert form not in log
    for name, answer in answers.items():
        assert b"Traceback" not in answer, name
        assert b"application/json" in answer, name


# How long a measurement waits for the service to hang up before it fails: far above the
# timeouts under test, far below aiohttp's own keep-alive default (75 s).
HANG_UP_WITHIN = 30.0


async def closed_within(port: int, head: bytes) -> float:
    """Send ``head``, then wait for the server to hang up; the seconds since we connected."""
    began = time.monotonic()  # the server's timers cannot start before we connect
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        while await asyncio.wait_for(reader.read(65536), HANG_UP_WITHIN):
            pass  # an answer to a complete request: read past it
    except ConnectionError:
        pass
    writer.close()
    return time.monotonic() - began


def test_the_real_service_cuts_off_slow_heads_and_idle_connections(short_tmp: Path) -> None:
    service = Service(short_tmp, 1, "--header-timeout", "1", "--keepalive-timeout", "4")
    try:
        service.start()
        port = service.port

        async def measure() -> tuple[float, float, float]:
            silent = closed_within(port, b"")
            partial = closed_within(port, b"GET /health HTTP/1.1\r\nHost:")
            idle = closed_within(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            return await asyncio.gather(silent, partial, idle)

        silent, partial, idle = asyncio.run(measure())

        # Meanwhile, normal requests were served as always.
        async def one() -> int:
            async with (
                aiohttp.ClientSession(service.url) as session,
                session.get("/next-tracking-number", params=CANONICAL_QUERY) as response,
            ):
                return response.status

        assert asyncio.run(one()) == 200
        assert service.stop() == 0
    finally:
        service.kill()
    # Every connection was closed (closed_within would have failed after 30 s), none before its
    # timeout (less a timer's granularity), and the heads by the head timer: before the idle
    # connection, which the 4 s keep-alive timer closed. Measured together, in the same run.
    assert min(silent, partial) >= 1 - 0.01
    assert idle >= 4 - 0.01
    assert max(silent, partial) < idle
