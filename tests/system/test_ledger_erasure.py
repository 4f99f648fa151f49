"""Erasing a customer's names, on the real run.py: the command runs beside the running service,
and the name is gone from the ledger's file and its WAL, byte for byte, not only from queries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import REPO, Service

TOKEN = "erasure-test-token"
ERASED = {
    "customer_id": "0b9e7c1a-5d2f-4c3b-8a6e-1f2d3c4b5a69",
    "customer_name": "Zebulon Quixotic-Marchbanks",
    "customer_slug": "zebulon-quixotic-marchbanks",
}
KEPT = {
    "customer_id": "5a1c2e3d-4b6f-4a8e-9c0d-7e6f5a4b3c2d",
    "customer_name": "Ottoline Persimmon Freight",
    "customer_slug": "ottoline-persimmon-freight",
}


async def issue_for(url: str, customer: dict[str, str], requests: int) -> list[str]:
    """Numbers issued to ``customer``: ``requests`` requests, some of several numbers, many at a
    time so that they meet in group commits."""
    numbers: list[str] = []
    async with aiohttp.ClientSession(url) as session:

        async def one(n: int) -> None:
            query = {**CANONICAL_QUERY, **customer, "count": str(1 + n % 3)}
            async with session.get("/next-tracking-number", params=query) as response:
                assert response.status == 200, await response.text()
                body = await response.json()
                numbers.extend(body.get("tracking_numbers") or [body["tracking_number"]])

        for start in range(0, requests, 25):
            await asyncio.gather(*(one(n) for n in range(start, min(start + 25, requests))))
    return numbers


def file_bytes(state_dir: Path) -> bytes:
    """The ledger's database file and its WAL (when there is one), as they are on disk."""
    found = b""
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal"):
        with contextlib.suppress(FileNotFoundError):
            found += (state_dir / name).read_bytes()
    return found


def recorded(state_dir: Path, numbers: list[str]) -> list[tuple[str, str, str, str, str]]:
    with contextlib.closing(sqlite3.connect(state_dir / "ledger.sqlite3")) as db:
        return [
            db.execute(
                "SELECT n.number, i.customer_id, i.customer_name, i.customer_slug, i.weight"
                " FROM issued_number n JOIN issue i ON i.id = n.issue_id WHERE n.number = ?",
                (number,),
            ).fetchone()
            for number in numbers
        ]


def test_an_erased_customers_name_is_gone_from_the_ledger_file_while_the_service_runs(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 2, "--ledger", "--admin-token", TOKEN)
    try:
        service.start()

        async def both() -> tuple[list[str], list[str]]:
            erased = issue_for(service.url, ERASED, 300)
            kept = issue_for(service.url, KEPT, 300)
            return await asyncio.gather(erased, kept)

        erased_numbers, kept_numbers = asyncio.run(both())
        name, slug = ERASED["customer_name"].encode(), ERASED["customer_slug"].encode()
        assert name in file_bytes(short_tmp)  # the test would prove nothing otherwise

        command = subprocess.run(
            [sys.executable, "run.py", "--config", "/dev/null", "--state-dir", str(short_tmp),
             "--erase-customer", ERASED["customer_id"].upper()],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert command.returncode == 0, command.stdout + command.stderr
        (line,) = [json.loads(text) for text in command.stdout.splitlines()]
        assert line["message"] == "customer's names erased from the ledger"
        assert line["tracking.customer_id"] == ERASED["customer_id"]
        assert line["tracking.ledger.records_erased"] == len(erased_numbers)
        assert ERASED["customer_name"] not in command.stdout + command.stderr

        # The file and its WAL, while the service still runs: neither name nor slug is left.
        on_disk = file_bytes(short_tmp)
        assert (on_disk.count(name), on_disk.count(slug)) == (0, 0)
        assert KEPT["customer_name"].encode() in on_disk
        # The numbers and the rest of their records stay.
        assert recorded(short_tmp, erased_numbers) == [
            (number, ERASED["customer_id"], "", "", CANONICAL_QUERY["weight"])
            for number in erased_numbers
        ]
        assert {row[2] for row in recorded(short_tmp, kept_numbers)} == {KEPT["customer_name"]}

        async def read_one() -> dict[str, object]:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(service.url, headers=headers) as session:
                path = f"/tracking-numbers/{erased_numbers[0]}"
                async with session.get(path) as response:
                    return await response.json()  # type: ignore[no-any-return]

        verdict = asyncio.run(read_one())
        assert verdict["issued"] is True
        assert verdict["record"]["customer_name"] == ""  # type: ignore[index]
        assert verdict["record"]["weight_kg"] == CANONICAL_QUERY["weight"]  # type: ignore[index]
        # The writer goes on after the WAL was truncated under it.
        assert len(asyncio.run(issue_for(service.url, KEPT, 5))) >= 5
        assert service.stop() == 0
    finally:
        service.kill()
    assert file_bytes(short_tmp).count(name) == 0
    assert ERASED["customer_name"] not in service.log()


def test_erase_customer_refuses_what_is_not_a_customer_id(short_tmp: Path) -> None:
    command = subprocess.run(
        [sys.executable, "run.py", "--config", "/dev/null", "--state-dir", str(short_tmp),
         "--erase-customer", "Zebulon Quixotic-Marchbanks"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert command.returncode == 2
    assert not (short_tmp / "ledger.sqlite3").exists()
