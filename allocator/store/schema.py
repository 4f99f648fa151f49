"""Both stores' tables, side by side: a change to one is made to the other.

The tables have the same columns in both stores; PostgreSQL's names start with ``tracking_``,
because its database may be shared with other applications.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from allocator.counter import COUNTER_LIMIT, KEY_BYTES, SCHEME_FEISTEL4
from allocator.errors import StoreError

# 1: the counter and the key. 2: idempotency keys (created when missing: 1 upgrades in place).
# 3: the key's permutation scheme, a column added when missing; the rows that were already
# there get scheme 1, the only one before it (service/numbers.py).
SCHEMA_VERSION = 3

# Version 3, in both stores, when the column is missing. Every key made before it was used with
# scheme 1; a new key's row names its scheme (NEW_STORE_SCHEME), so the default only ever fills
# older rows.
ADD_SCHEME_COLUMN = (
    f"ALTER TABLE {{table}} ADD COLUMN scheme {{type}} NOT NULL DEFAULT {SCHEME_FEISTEL4}"
    " CHECK (scheme >= 1)"
)

# The S10 series (allocator/series.py), one row each, created when missing in both stores and
# without a new schema version: an older release never reads this table, and still opens the
# store (its default counter is where it always was).
SERIES_COLUMNS = (
    " name {text} PRIMARY KEY,"
    " reserved {int} NOT NULL CHECK (reserved >= 0),"
    " size {int} NOT NULL CHECK (size > 0),"
    " ordering {text} NOT NULL CHECK (ordering IN ('permuted', 'sequential')),"
    " CHECK (reserved <= size)"
)

# SQLite keeps its version in PRAGMA user_version.
SQLITE_TABLES = (
    "CREATE TABLE IF NOT EXISTS counter ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    f" reserved INTEGER NOT NULL CHECK (reserved BETWEEN 0 AND {COUNTER_LIMIT}),"
    f" key BLOB NOT NULL CHECK (length(key) = {KEY_BYTES}))",
    "CREATE TABLE IF NOT EXISTS idempotency ("
    " key TEXT PRIMARY KEY,"
    " fingerprint BLOB NOT NULL,"
    " response BLOB NOT NULL,"
    " expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at)",
    # Answers whose first delivery was abandoned (a table of its own, so that an older release
    # still reads and writes this store's idempotency table).
    "CREATE TABLE IF NOT EXISTS idempotency_unaudited ("
    " key TEXT PRIMARY KEY,"
    " expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS series (" + SERIES_COLUMNS.format(text="TEXT", int="INTEGER") + ")",
)

POSTGRES_TABLES = f"""
CREATE TABLE IF NOT EXISTS tracking_schema (
    id smallint PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
INSERT INTO tracking_schema (id, version) VALUES (1, {SCHEMA_VERSION}) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS tracking_counter (
    id smallint PRIMARY KEY CHECK (id = 1),
    reserved bigint NOT NULL CHECK (reserved BETWEEN 0 AND {COUNTER_LIMIT}),
    key bytea NOT NULL CHECK (length(key) = {KEY_BYTES})
);
"""
# Version 2 (and a version 1 store, upgraded in place).
POSTGRES_IDEMPOTENCY = """
CREATE TABLE IF NOT EXISTS tracking_idempotency (
    key text PRIMARY KEY,
    fingerprint bytea NOT NULL,
    response bytea NOT NULL,
    expires_at double precision NOT NULL
);
"""
# Created when missing, in tables of their own, so that an older release still uses the
# idempotency table of a store this release has opened.
POSTGRES_IDEMPOTENCY_EXTRAS = """
CREATE INDEX IF NOT EXISTS tracking_idempotency_expiry ON tracking_idempotency (expires_at);
CREATE TABLE IF NOT EXISTS tracking_idempotency_unaudited (
    key text PRIMARY KEY,
    expires_at double precision NOT NULL
);
"""

POSTGRES_SERIES = (
    "CREATE TABLE IF NOT EXISTS tracking_series ("
    + SERIES_COLUMNS.format(text="text", int="bigint")
    + ")"
)


def check_version(version: int | None, where: str) -> None:
    """Refuse a store whose schema a newer release wrote: its meaning is unknown to us."""
    if version is None:
        raise StoreError(f"{where}: the store holds no schema version")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where}: the store's schema version {version} is newer than this release knows "
            f"({SCHEMA_VERSION})"
        )


async def create_or_check(
    create: Callable[[], Awaitable[int | None]], where: str, close: Callable[[], Awaitable[None]]
) -> None:
    """Run a store's schema creation and check the version it reports; a store whose schema
    is refused is closed again, as a failed open() leaves nothing open."""
    try:
        check_version(await create(), where)
    except StoreError:
        await close()
        raise
