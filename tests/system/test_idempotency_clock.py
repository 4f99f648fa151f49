"""A step of the wall clock under a running service expires no idempotent answer.

Expiry follows one clock per store: PostgreSQL's own, or for SQLite the wall clock read when
the allocator opened the store, advanced by the monotonic clock. The service runs under
libfaketime (``.ci/faketime.sh``), whose wall clock the test moves two days on, past the
24-hour ``idempotency_ttl``; the monotonic clock is left alone, as the kernel does.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import PostgresServer, Service
from tests.system.test_clock import libfaketime  # noqa: F401 (a fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_flags(request: pytest.FixtureRequest) -> Iterator[tuple[str, ...]]:
    if request.param == "sqlite":
        yield ()
        return
    server = PostgresServer.from_environment()
    name = asyncio.run(server.create_database())
    try:
        yield ("--store", server.database_url(name))
    finally:
        asyncio.run(server.drop_database(name))


async def ask(service: Service, key: str | None) -> tuple[dict, dict[str, str]]:
    headers = {"Idempotency-Key": key} if key else {}
    async with (
        aiohttp.ClientSession(service.url) as session,
        session.get("/next-tracking-number", params=CANONICAL_QUERY, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return json.loads(await response.read()), dict(response.headers)


def test_a_wall_clock_step_expires_no_idempotent_answer(
    short_tmp: Path,
    libfaketime: str,  # noqa: F811 (the fixture imported above)
    store_flags: tuple[str, ...],
) -> None:
    clock = short_tmp / "faketime"
    clock.write_text("+0\n")
    state_dir = short_tmp / "state"
    state_dir.mkdir(mode=0o700)  # private, as the store insists
    service = Service(state_dir, 1, *store_flags)
    service.env = {
        "LD_PRELOAD": libfaketime,
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    try:
        service.start()
        first, headers = asyncio.run(ask(service, "k-clock"))
        assert "Idempotent-Replayed" not in headers

        clock.write_text("+2d\n")
        plain, _ = asyncio.run(ask(service, None))
        issued_at = datetime.datetime.fromisoformat(plain["created_at"])
        assert issued_at - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=1.5)

        again, headers = asyncio.run(ask(service, "k-clock"))
        assert again == first
        assert headers["Idempotent-Replayed"] == "true"
        assert service.stop() == 0
    finally:
        service.kill()
