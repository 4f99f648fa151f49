"""Erasing a customer's names with a PostgreSQL store: gone from this host's file, from the
shared ledger's rows, and from the shared ledger's files, on a real PostgreSQL (skipped without
one, a failure under CI)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from config.settings import Config
from ledger import commands
from tests.ledger.test_forwarder import Forwarding, shared_rows
from tests.ledger.test_writer import issue, rows
from tests.system.conftest import PostgresServer

ERASED = {
    "customer_id": "0b1e5a8e-7c2d-4f3a-9e6b-5d4c3b2a1f0e",
    "customer_name": "Zebulon Quixotic-Marchbanks",
    "customer_slug": "zebulon-quixotic-marchbanks",
}
KEPT = {
    "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
    "customer_name": "Octavia Wrenfield-Dunmore",
    "customer_slug": "octavia-wrenfield-dunmore",
}


async def relation_bytes(url: str, data_dir: str) -> bytes:
    """The bytes of the shared ledger's issue table and of its indexes, as on disk."""
    db = await asyncpg.connect(url, timeout=10)
    try:
        await db.execute("CHECKPOINT")  # every page on disk, not only in shared buffers
        paths = await db.fetch(
            "SELECT pg_relation_filepath(oid) FROM pg_class WHERE oid = 'ledger_issue'::regclass"
            " OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'ledger_issue'::regclass)"
        )
    finally:
        await db.close()
    content = b""
    for (relative,) in paths:
        base = Path(data_dir, relative)
        for segment in sorted(base.parent.glob(base.name + "*")):  # 1 GB segments, _fsm, _vm
            content += segment.read_bytes()
    return content


async def test_erasure_blanks_the_customers_names_in_the_shared_ledger_and_its_files(
    make_config: Callable[..., Config], database: str, forwarding: Forwarding
) -> None:
    server = PostgresServer.from_environment(restartable=True)
    if not os.access(server.data_dir, os.R_OK | os.X_OK):
        pytest.skip("the test cannot read PostgreSQL's data directory (run it as root)")
    await forwarding.record(*(issue(c, c + 1, **ERASED) for c in range(0, 60, 2)))
    await forwarding.record(*(issue(c, **KEPT) for c in range(100, 120)))
    await forwarding.until_forwarded()
    name = ERASED["customer_name"].encode()
    before = await relation_bytes(database, server.data_dir)
    assert name in before
    assert ERASED["customer_slug"].encode() in before

    config = make_config("--store", database)
    status = await asyncio.to_thread(commands.erase_customer, config, ERASED["customer_id"])

    assert status == 0
    shared = await shared_rows(database)
    assert len(shared) == 60 + 20  # every number kept
    by_customer = {(row[8], row[9], row[10]) for row in shared}
    assert by_customer == {
        (ERASED["customer_id"], "", ""),
        (KEPT["customer_id"], KEPT["customer_name"], KEPT["customer_slug"]),
    }
    assert {(row[8], row[9]) for row in rows(config.ledger_path)} == {
        (ERASED["customer_id"], ""),
        (KEPT["customer_id"], KEPT["customer_name"]),
    }
    after = await relation_bytes(database, server.data_dir)
    assert name not in after
    assert ERASED["customer_slug"].encode() not in after
    assert KEPT["customer_name"].encode() in after  # the bytes read are the table's


async def test_erasure_with_a_postgresql_store_and_no_file_of_its_own(
    make_config: Callable[..., Config], database: str, forwarding: Forwarding, short_tmp: Path
) -> None:
    """A host whose ledger file is gone (a new machine) still erases the shared ledger."""
    await forwarding.record(*(issue(c, **ERASED) for c in range(10)))
    await forwarding.until_forwarded()
    elsewhere = short_tmp / f"other-{uuid.uuid4().hex[:8]}"
    elsewhere.mkdir(mode=0o700)
    config = make_config("--store", database, "--state-dir", str(elsewhere))
    assert not Path(config.ledger_path).exists()  # noqa: ASYNC240 (a test's own check)

    assert await asyncio.to_thread(commands.erase_customer, config, ERASED["customer_id"]) == 0
    assert {row[9] for row in await shared_rows(database)} == {""}
