"""What operators rely on, checked on the real run.py: logs, metrics, status, systemd."""

import asyncio
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from allocator.counter import COUNTER_LIMIT
from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import REPO, Service

ECS_BASE = ("@timestamp", "log.level", "log.logger", "message", "service.name", "process.pid")
SECRET_NAME = "Zebulon Quixote-Marchetti"


def stored_key(service: Service) -> bytes:
    # closing(): sqlite3's own context manager commits but never closes (3.13 warns).
    with contextlib.closing(sqlite3.connect(service.state_dir / "tracking.sqlite3")) as db:
        return db.execute("SELECT key FROM counter").fetchone()[0]


async def get(url: str, path: str, **params: str) -> tuple[int, dict[str, str], bytes]:
    # A new connection per request, so that successive requests may reach different workers.
    async with aiohttp.ClientSession() as session, session.get(url + path, params=params) as r:
        return r.status, dict(r.headers), await r.read()


def scrape(service: Service) -> dict[str, list]:
    status, _, body = asyncio.run(get(service.url, "/metrics"))
    assert status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def sample(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_every_log_line_is_ecs_json_and_access_lines_match_the_requests(
    service: Service,
) -> None:
    service.start()
    query = {**CANONICAL_QUERY, "customer_name": SECRET_NAME}

    async def traffic() -> list[str]:
        numbers = []
        for _ in range(20):
            status, _, body = await get(service.url, "/next-tracking-number", **query)
            assert status == 200
            numbers.append(json.loads(body)["tracking_number"])
        for _ in range(5):
            status, _, _ = await get(service.url, "/next-tracking-number", weight="0")
            assert status == 400
        status, _, _ = await get(service.url, "/no-such-page")
        assert status == 404
        return numbers

    numbers = asyncio.run(traffic())
    assert service.stop() == 0
    text = service.log()
    assert SECRET_NAME not in text
    assert SECRET_NAME.replace(" ", "+") not in text
    key = stored_key(service)
    assert key.hex() not in text.lower()

    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    for line in lines:
        assert all(field in line for field in ECS_BASE), line
        assert line["service.name"] == "tracking-numbers"
    access = [line for line in lines if line["log.logger"] == "access"]
    issued = [a for a in access if a["http.response.status_code"] == 200]
    assert sorted(a["tracking.number"] for a in issued) == sorted(numbers)
    for line in issued:
        assert line["url.path"] == "/next-tracking-number"
        assert line["http.request.method"] == "GET"
        assert line["tracking.origin"] == "MY"
        assert line["tracking.destination"] == "ID"
        # The audit trail: every request field but the customer's name.
        assert line["tracking.weight_kg"] == CANONICAL_QUERY["weight"]
        assert line["tracking.created_at"] == CANONICAL_QUERY["created_at"]
        assert line["tracking.customer.id"] == CANONICAL_QUERY["customer_id"]
        assert line["tracking.customer.slug"] == CANONICAL_QUERY["customer_slug"]
        assert isinstance(line["event.duration"], int)
        assert line["event.duration"] > 0
        assert line["http.request.id"]
    assert len([a for a in access if a["http.response.status_code"] == 400]) == 5
    assert [a["url.path"] for a in access if a["http.response.status_code"] == 404] == [
        "/no-such-page"
    ]
    messages = {line["message"] for line in lines}
    assert {"configuration", "allocator started", "reserved", "service ready"} <= messages
    assert {"allocator stopped", "stopped"} <= messages


def test_the_access_log_can_be_turned_off(short_tmp: Path) -> None:
    service = Service(short_tmp, 2, "--no-access-log")
    try:
        service.start()
        status, _, _ = asyncio.run(get(service.url, "/next-tracking-number", **CANONICAL_QUERY))
        assert status == 200
        assert service.stop() == 0
    finally:
        service.kill()
    assert not [line for line in service.log_lines() if line.get("log.logger") == "access"]
    assert any(line.get("message") == "service ready" for line in service.log_lines())


def test_metrics_add_up_whichever_worker_is_scraped(service: Service) -> None:
    service.start()

    async def traffic() -> None:
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(service.url, connector=connector) as session:

            async def one() -> None:
                async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as r:
                    assert r.status == 200

            await asyncio.gather(*(one() for _ in range(300)))

    asyncio.run(traffic())
    time.sleep(1.5)  # every worker has reported since
    workers_seen = set()
    for _ in range(8):
        metrics = scrape(service)
        issued = sample(metrics["tracking_numbers_issued"], "tracking_numbers_issued_total")
        requests = sample(
            metrics["tracking_http_requests"],
            "tracking_http_requests_total",
            route="/next-tracking-number",
            status="200",
        )
        durations = sample(
            metrics["tracking_http_request_duration_seconds"],
            "tracking_http_request_duration_seconds_count",
            route="/next-tracking-number",
        )
        assert issued == requests == durations == 300
        leased = sample(
            metrics["tracking_allocator_leased_numbers"], "tracking_allocator_leased_numbers_total"
        )
        assert leased >= 300
        workers_seen.add(
            sample(
                metrics["tracking_allocator_connected_workers"],
                "tracking_allocator_connected_workers",
            )
        )
    assert workers_seen == {2}
    assert service.stop() == 0


def test_allocator_status_is_consistent_and_counts_down(service: Service) -> None:
    service.start()

    def status() -> dict:
        code, headers, body = asyncio.run(get(service.url, "/allocator/status"))
        assert code == 200
        assert headers["Content-Type"].startswith("application/json")
        return json.loads(body)

    asyncio.run(get(service.url, "/next-tracking-number", **CANONICAL_QUERY))
    first = status()
    assert first["store"] == "sqlite"
    assert first["next"] <= first["reserved"]
    assert first["numbers_left"] == COUNTER_LIMIT - first["next"]
    assert first["connected_workers"] == 2
    assert first["store_up"] is True
    assert first["last_store_error"] is None
    assert first["last_checkpoint_at"] is not None
    assert first["last_checkpoint_latency_seconds"] >= 0
    assert first["uptime_seconds"] > 0
    assert first["reservations_total"] >= 1
    assert sum(first["leases_by_worker"].values()) == first["leases_total"]

    async def many() -> None:
        async with aiohttp.ClientSession(service.url) as session:
            for _ in range(3000):
                async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as r:
                    assert r.status == 200

    asyncio.run(many())
    time.sleep(1.2)
    second = status()
    assert second["numbers_left"] < first["numbers_left"]
    assert second["next"] <= second["reserved"]
    assert second["issue_rate_per_second"] > 0
    assert second["seconds_to_exhaustion"] > 0
    assert stored_key(service).hex() not in json.dumps(second)
    assert service.stop() == 0


def test_the_key_is_in_neither_metrics_nor_status(service: Service) -> None:
    service.start()
    asyncio.run(get(service.url, "/next-tracking-number", **CANONICAL_QUERY))
    key = stored_key(service)
    for path in ("/metrics", "/allocator/status", "/health", "/openapi.json"):
        _, _, body = asyncio.run(get(service.url, path))
        assert key.hex().encode() not in body.lower()
        assert key not in body
    assert service.stop() == 0


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.skipif(non_loopback_address() is None, reason="this machine has only loopback")
@pytest.mark.parametrize("configured", ["", "s3cret-token"])
def test_operator_endpoints_refuse_remote_clients_without_the_token(
    short_tmp: Path, configured: str
) -> None:
    address = non_loopback_address()
    service = Service(short_tmp, 1, "--host", "0.0.0.0", "--admin-token", configured, "--ledger")
    remote = f"http://{address}:{service.port}"
    try:
        service.start()
        # With none configured, the service made one and said where it keeps it.
        made = [x for x in service.log_lines() if "tracking.admin_token_file" in x]
        if configured:
            assert made == []
            token = configured
        else:
            (line,) = made
            token = Path(line["tracking.admin_token_file"]).read_text().strip()
            assert token not in service.log()  # the path is logged, never the token

        async def check() -> None:
            async with aiohttp.ClientSession() as session:
                for path in ("/metrics", "/allocator/status"):
                    async with session.get(service.url + path) as local:
                        assert local.status == 200  # loopback, no token needed
                    async with session.get(remote + path) as anonymous:
                        assert anonymous.status == 401
                        assert "error" in await anonymous.json()
                    wrong = {"Authorization": "Bearer not-the-token"}
                    async with session.get(remote + path, headers=wrong) as refused:
                        assert refused.status == 401
                    right = {"Authorization": f"Bearer {token}"}
                    async with session.get(remote + path, headers=right) as allowed:
                        assert allowed.status == 200
                async with session.get(
                    remote + "/next-tracking-number", params=CANONICAL_QUERY
                ) as r:
                    assert r.status == 200  # the API itself is for everyone
                    number = (await r.json())["tracking_number"]
                # Anyone may check a number; only operators learn whether we issued it.
                async with session.get(f"{remote}/tracking-numbers/{number}") as anonymous:
                    verdict = await anonymous.json()
                    assert verdict["valid"] is True
                    assert "issued" not in verdict
                    assert "record" not in verdict
                async with session.get(
                    f"{remote}/tracking-numbers/{number}",
                    headers={"Authorization": f"Bearer {token}"},
                ) as operator:
                    verdict = await operator.json()
                    assert verdict["issued"] is True
                    assert verdict["record"]["customer_name"] == CANONICAL_QUERY["customer_name"]

        asyncio.run(check())
        assert service.stop() == 0
    finally:
        service.kill()


def test_systemd_hears_ready_watchdog_and_stopping(short_tmp: Path) -> None:
    notify_path = str(short_tmp / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(15)
    service = Service(short_tmp)
    service.env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
    try:
        assert service.process is None
        service.start()
        messages = []
        while "READY=1" not in messages:
            messages.append(listener.recv(256).decode())
        # READY came once the workers serve: a request gets its number at once.
        status, _, _ = asyncio.run(get(service.url, "/next-tracking-number", **CANONICAL_QUERY))
        assert status == 200
        pings = 0
        began = time.monotonic()
        while time.monotonic() - began < 1.5:
            pings += listener.recv(256).decode() == "WATCHDOG=1"
        assert pings >= 4  # every 0.2 s
        assert service.process is not None
        service.process.terminate()
        while (message := listener.recv(256).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert service.process.wait(10) == 0
    finally:
        service.kill()
        listener.close()


def test_raise_reserved_to_moves_the_mark_up_only(service: Service) -> None:
    def raise_to(value: int, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "run.py", "--config", "/dev/null", "--state-dir",
             str(service.state_dir), "--raise-reserved-to", str(value), *flags],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    assert raise_to(10**12).returncode == 1  # no store yet: the raise never creates one
    assert raise_to(10**12, "--init-store").returncode == 0
    assert raise_to(5).returncode == 0  # lower: nothing changes
    assert raise_to(2**56 + 1).returncode == 2
    service.start()
    asyncio.run(get(service.url, "/next-tracking-number", **CANONICAL_QUERY))
    _, _, body = asyncio.run(get(service.url, "/allocator/status"))
    assert json.loads(body)["next"] >= 10**12
    assert service.stop() == 0


def test_the_configuration_is_logged_without_secrets(short_tmp: Path) -> None:
    service = Service(short_tmp, 1, "--admin-token", "very-secret-token")
    try:
        service.start()
        assert service.stop() == 0
    finally:
        service.kill()
    assert "very-secret-token" not in service.log()
    (configuration,) = [line for line in service.log_lines() if line["message"] == "configuration"]
    assert configuration["tracking.config.admin_token"] == "(set)"
    assert configuration["tracking.config.workers"] == 1
