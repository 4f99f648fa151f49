import os
import stat
from pathlib import Path

import pytest

from allocator.protocol import COUNTER_LIMIT, KeyMismatch, StoreError
from allocator.store import SQLiteStore, open_store


@pytest.fixture
def db_path(short_tmp: Path) -> str:
    return str(short_tmp / "state" / "tracking.sqlite3")


async def opened(path: str) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


async def test_a_reservation_survives_closing_and_reopening(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    assert await store.reserve(1000) == (0, 1000)
    assert await store.reserve(500) == (1000, 1500)
    await store.close()

    store = await opened(db_path)
    assert await store.durable_mark() == 1500
    assert await store.reserve(10) == (1500, 1510)
    await store.close()


async def test_the_key_is_made_once_and_never_changes(db_path: str) -> None:
    store = await opened(db_path)
    key = await store.load_key()
    assert len(key) == 32
    await store.close()
    store = await opened(db_path)
    assert await store.load_key() == key
    assert await store.load_key() == key
    await store.close()


async def test_two_fresh_stores_get_different_keys(short_tmp: Path) -> None:
    first = await opened(str(short_tmp / "a.sqlite3"))
    second = await opened(str(short_tmp / "b.sqlite3"))
    assert await first.load_key() != await second.load_key()
    await first.close()
    await second.close()


async def test_a_supplied_key_is_stored_at_first_use(db_path: str) -> None:
    supplied = bytes(range(32))
    store = await opened(db_path)
    assert await store.load_key(supplied) == supplied
    await store.close()
    store = await opened(db_path)
    assert await store.load_key() == supplied
    await store.close()


async def test_a_supplied_key_that_differs_from_the_stored_one_is_refused(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    with pytest.raises(KeyMismatch):
        await store.load_key(bytes(32))
    await store.close()


async def test_release_gives_back_only_an_untouched_tail(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    await store.reserve(1000)
    assert await store.release(400, 1000) is True
    assert await store.durable_mark() == 400
    # Somebody reserved past it since: the mark must not move back.
    await store.reserve(100)
    assert await store.release(450, 500) is True
    assert await store.durable_mark() == 450
    assert await store.release(0, 1000) is False
    assert await store.durable_mark() == 450
    await store.close()


async def test_the_counter_space_cannot_be_overrun(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    await store.reserve(COUNTER_LIMIT - 10)
    with pytest.raises(StoreError, match="exhausted"):
        await store.reserve(11)
    assert await store.reserve(10) == (COUNTER_LIMIT - 10, COUNTER_LIMIT)
    await store.close()


async def test_sqlite_runs_in_wal_mode_with_full_sync(db_path: str) -> None:
    store = await opened(db_path)
    db = store._connection()
    async with db.execute("PRAGMA journal_mode") as cursor:
        assert (await cursor.fetchone())[0] == "wal"
    async with db.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # FULL
    await store.close()


async def test_the_state_directory_is_private(db_path: str) -> None:
    store = await opened(db_path)
    await store.close()
    assert stat.S_IMODE(os.stat(os.path.dirname(db_path)).st_mode) == 0o700


async def test_an_unwritable_location_is_a_store_error(short_tmp: Path) -> None:
    blocker = short_tmp / "file"
    blocker.write_text("not a directory")
    store = SQLiteStore(str(blocker / "tracking.sqlite3"))
    with pytest.raises(StoreError):
        await store.open()


def test_open_store_understands_sqlite_urls() -> None:
    store = open_store("sqlite:////var/lib/tracking/tracking.sqlite3")
    assert isinstance(store, SQLiteStore)
    assert store.path == "/var/lib/tracking/tracking.sqlite3"
    with pytest.raises(StoreError):
        open_store("mysql://nope")


async def test_raising_the_mark_never_lowers_it(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    await store.reserve(1000)
    assert await store.raise_mark(5000) == 5000
    assert await store.raise_mark(10) == 5000
    assert await store.reserve(10) == (5000, 5010)
    await store.close()


async def test_a_store_from_a_newer_release_is_left_alone(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    await store.reserve(10)
    await store._connection().execute("PRAGMA user_version=99")
    await store.close()
    with pytest.raises(StoreError, match="newer"):
        await opened(db_path)


async def test_a_version_1_store_is_upgraded_in_place(db_path: str) -> None:
    store = await opened(db_path)
    await store.load_key()
    await store.reserve(700)
    # What version 1 was: the counter alone.
    await store._connection().execute("DROP TABLE idempotency")
    await store._connection().execute("PRAGMA user_version=1")
    await store.close()

    store = await opened(db_path)
    assert await store.durable_mark() == 700
    assert await store.recall("k", now=0.0) is None
    async with store._connection().execute("PRAGMA user_version") as cursor:
        assert (await cursor.fetchone())[0] == 2
    await store.close()
