"""A restored ledger never claims a counter that the restored store would issue again: the
check the supervisor runs at start, on a real store file and a real ledger file."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import pytest

from allocator.store import open_store
from config.settings import Config
from ledger import sqlite as ledger_sqlite
from ledger.commands import check_below_mark
from ledger.errors import LedgerAhead
from ledger.records import key_digest
from tests.ledger.test_writer import OTHER_KEY, issue


async def store_with_mark(config: Config, mark: int) -> bytes:
    """A real store whose durable mark is ``mark``; its key."""
    store = open_store(config.store)
    await store.open()
    try:
        key = await store.load_key()
        await store.raise_mark(mark)
        return key
    finally:
        await store.close()


async def store_with_series_mark(config: Config, series: str, mark: int) -> bytes:
    """A real store holding ``series`` with its durable mark at ``mark``; its key."""
    store = open_store(config.store)
    await store.open()
    try:
        key = await store.load_key()
        await store.raise_series_mark(series, "permuted", 10**8, mark)
        return key
    finally:
        await store.close()


def record_counters(config: Config, key: bytes, *counters: int, series: str = "") -> None:
    db = ledger_sqlite.open_for_writing(config.ledger_path)
    with contextlib.closing(db), ledger_sqlite.transaction(db):
        key_id = ledger_sqlite.key_id(db, key_digest(key, series))
        first = ledger_sqlite.next_issue_id(db)
        ledger_sqlite.insert(db, key_id, first, [issue(c) for c in counters])


def test_a_ledger_that_claims_the_marks_counter_or_above_is_refused(config: Config) -> None:
    key = asyncio.run(store_with_mark(config, 1000))
    record_counters(config, key, 10, 999)
    check_below_mark(config)  # every record below the mark: the counter cannot reach them

    record_counters(config, key, 1000)  # the very counter the allocator would start from
    with pytest.raises(LedgerAhead) as ahead:
        check_below_mark(config)
    assert "counter 1000" in str(ahead.value)
    assert "mark is 1000" in str(ahead.value)
    assert "--raise-reserved-to N with N > 1000" in str(ahead.value)

    asyncio.run(store_with_mark(config, 1001))  # what --raise-reserved-to does
    check_below_mark(config)


def test_another_keys_records_and_a_missing_store_or_ledger_are_no_claim(
    config: Config, make_config: Callable[..., Config]
) -> None:
    check_below_mark(config)  # neither a store nor a ledger yet
    record_counters(config, OTHER_KEY, 5_000)
    check_below_mark(config)  # no store: the allocator makes one with a new key
    assert not os.path.exists(config.store.removeprefix("sqlite:///"))  # and the check none
    asyncio.run(store_with_mark(config, 10))
    check_below_mark(config)  # a rebuilt store's key: the old key's records are no claim
    key = asyncio.run(store_with_mark(config, 10))
    record_counters(config, key, 10)
    check_below_mark(make_config("--no-ledger"))  # the ledger off: nothing to protect
    with pytest.raises(LedgerAhead):
        check_below_mark(config)


def test_a_ledger_that_claims_a_series_mark_or_above_is_refused(config: Config) -> None:
    """Each S10 series is a counter of its own, with its own mark (issue 20)."""
    key = asyncio.run(store_with_series_mark(config, "s10:RR:GB", 50))
    asyncio.run(store_with_mark(config, 1000))
    record_counters(config, key, 100, 999)  # our counter: below its own mark
    record_counters(config, key, 0, 49, series="s10:RR:GB")
    check_below_mark(config)

    record_counters(config, key, 50, series="s10:RR:GB")
    with pytest.raises(LedgerAhead) as ahead:
        check_below_mark(config)
    assert "counter of series s10:RR:GB 50" in str(ahead.value)
    assert "--raise-series-reserved-to s10:RR:GB=N, N > 50" in str(ahead.value)

    asyncio.run(store_with_series_mark(config, "s10:RR:GB", 51))
    check_below_mark(config)
