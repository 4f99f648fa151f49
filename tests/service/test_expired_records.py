"""Records deleted by retention, seen from the service: counted in /metrics and
/allocator/status, and a number whose record expired is no longer ``issued``, in words."""

from __future__ import annotations

import time

from aiohttp.test_utils import TestClient

from config.settings import Config
from ledger.client import LedgerClient
from ledger.writer import LedgerWriter
from tests.conftest import CANONICAL_QUERY
from tests.ledger.test_writer import KEY, issue


async def test_expired_records_are_counted_in_metrics_and_status(
    client: TestClient, config: Config, ledger_writer: LedgerWriter
) -> None:
    old = issue(1, 2, 3, issued_at_ns=time.time_ns() - 3 * 86_400 * 10**9)
    ledger = LedgerClient(config.ledger_socket, timeout=5.0)
    try:
        await ledger.record(KEY, old)
    finally:
        await ledger.close()
    assert await ledger_writer.expire(time.time_ns() - 86_400 * 10**9) == 3

    metrics = await (await client.get("/metrics")).text()
    status = await (await client.get("/allocator/status")).json()

    assert "tracking_ledger_records_expired_total 3.0" in metrics.splitlines()
    assert status["ledger"]["stats"]["records_expired_total"] == 3


async def test_a_number_whose_record_expired_is_not_issued_and_the_note_says_retention(
    client: TestClient, ledger_writer: LedgerWriter
) -> None:
    answer = await client.get("/next-tracking-number", params=CANONICAL_QUERY)
    number = (await answer.json())["tracking_number"]
    assert (await (await client.get(f"/tracking-numbers/{number}")).json())["issued"] is True

    assert await ledger_writer.expire(time.time_ns() + 1) == 1  # every record is past it

    verdict = await (await client.get(f"/tracking-numbers/{number}")).json()
    assert verdict["issued"] is False
    assert "past retention" in verdict["note"]
