"""Every line a real run.py writes conforms to Elastic's ecs-logging specification
(tests/ecs_logging.py): the supervisor's, the allocator's, the workers', the access log, and
errors with their stack traces."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from process.logs import ACCESS_DATASET, APP_DATASET
from tests.conftest import CANONICAL_QUERY
from tests.ecs_logging import nonconforming, violations
from tests.system.conftest import Service

# A request head that HTTP forbids (a header line without a colon): aiohttp answers 400 and
# logs the parser's exception with its stack trace.
MALFORMED_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n"


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(65536)


async def traffic(url: str) -> None:
    async with aiohttp.ClientSession(url) as session:
        for params, status in [
            (CANONICAL_QUERY, 200),
            ({**CANONICAL_QUERY, "count": "3"}, 200),
            ({"weight": "0"}, 400),
        ]:
            async with session.get("/next-tracking-number", params=params) as response:
                assert response.status == status
        for method, path, status in [
            ("GET", "/no-such-page", 404),
            ("POST", "/next-tracking-number", 405),
            ("GET", "/health", 200),
            ("GET", "/metrics", 200),
            ("GET", "/allocator/status", 200),
        ]:
            async with session.request(method, path) as response:
                assert response.status == status


def test_every_line_of_a_run_conforms_to_ecs_logging(service: Service) -> None:
    service.start()
    asyncio.run(traffic(service.url))
    assert send_raw(service.port, MALFORMED_HEAD).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert service.stop() == 0

    raw = service.log().splitlines()
    assert nonconforming(raw) == []
    lines = [json.loads(line) for line in raw]
    loggers = {line["log.logger"] for line in lines}
    assert {"supervisor", "allocator", "access"} <= loggers
    datasets = {line["log.logger"]: line["event.dataset"] for line in lines}
    assert datasets["access"] == ACCESS_DATASET
    assert datasets["supervisor"] == datasets["allocator"] == APP_DATASET
    # The malformed head's error, logged by a worker with its stack trace.
    errors = [line for line in lines if "error.stack_trace" in line]
    assert errors, "no line with a stack trace"
    assert all(line["error.type"] and line["log.level"] == "error" for line in errors)
    assert "Traceback" in errors[0]["error.stack_trace"]


def test_a_child_that_fails_logs_its_stack_trace_in_ecs(short_tmp: Path) -> None:
    key_file = short_tmp / "key"
    key_file.write_text("not hex\n")
    key_file.chmod(0o600)  # private, as a key file must be: what fails is its content
    service = Service(short_tmp, 1, "--key-file", str(key_file))
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            service.start()
    finally:
        service.kill()

    raw = service.log().splitlines()
    assert nonconforming(raw) == []
    failed = [json.loads(line) for line in raw if '"child failed"' in line]
    assert failed[0]["log.logger"] == "supervisor"  # the child's logger, in the child's process
    assert failed[0]["error.type"] == "ValueError"
    assert "must hold the key as hex digits" in failed[0]["error.stack_trace"]


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ('{"log.level": "info", "@timestamp": "2026-01-01T00:00:00.000Z"}', "position"),
        ('{"@timestamp": "2026-01-01T00:00:00.000", "log.level": "info"}', "datetime"),
        ('{"@timestamp": "2026-01-01T00:00:00Z", "log": {"level": "info"}}', "nested"),
        ('{"@timestamp": "2026-01-01T00:00:00Z", "log.level": "info", "message": "m"}', "ecs"),
        ('{"customer.id": "x"}', "neither an ECS field"),
        ('{"process.pid": "12"}', "not an ECS long"),
        ('{"event.dataset": "tracking-numbers.log"}', "event.dataset"),
        ("not json", "not JSON"),
    ],
)
def test_the_checker_catches_what_the_spec_forbids(line: str, rule: str) -> None:
    assert any(rule in broken for broken in violations(line)), violations(line)


def test_the_checker_catches_a_name_that_is_a_field_and_a_parent() -> None:
    head = '{"@timestamp": "2026-01-01T00:00:00Z", "log.level": "info", "message": "m", '
    head += '"ecs.version": "8.11.0", "event.dataset": "tracking_numbers.log", '
    lines = [head + '"tracking.customer": "a"}', head + '"tracking.customer.id": "b"}']
    assert nonconforming(lines[:1]) == []
    assert nonconforming(lines) == [
        "tracking.customer is a field and also the parent of tracking.customer.id"
    ]
