"""SQLite-only behaviour; what every store must do is in test_store_contract.py."""

import os
import stat
from pathlib import Path

import pytest

from allocator.errors import StoreError
from allocator.store import open_store
from allocator.store.schema import SCHEMA_VERSION
from allocator.store.sqlite import SQLiteStore


@pytest.fixture
def db_path(short_tmp: Path) -> str:
    return str(short_tmp / "state" / "tracking.sqlite3")


async def opened(path: str) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


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
    assert await store.recall("k") is None
    async with store._connection().execute("PRAGMA user_version") as cursor:
        assert (await cursor.fetchone())[0] == SCHEMA_VERSION
    await store.close()
