"""Stores as earlier releases left them, to show that this release reads them as they were."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import asyncpg

# What every store looked like before the scheme was recorded (schema version 2): the same
# tables, columns and constraints.
_VERSION_2_SQLITE = """
CREATE TABLE counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    reserved INTEGER NOT NULL CHECK (reserved BETWEEN 0 AND 72057594037927936),
    key BLOB NOT NULL CHECK (length(key) = 32));
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY, fingerprint BLOB NOT NULL, response BLOB NOT NULL,
    expires_at REAL NOT NULL);
PRAGMA user_version=2;
"""
_VERSION_2_POSTGRESQL = """
CREATE TABLE tracking_schema (id smallint PRIMARY KEY CHECK (id = 1), version integer NOT NULL);
INSERT INTO tracking_schema (id, version) VALUES (1, 2);
CREATE TABLE tracking_counter (
    id smallint PRIMARY KEY CHECK (id = 1),
    reserved bigint NOT NULL CHECK (reserved BETWEEN 0 AND 72057594037927936),
    key bytea NOT NULL CHECK (length(key) = 32));
CREATE TABLE tracking_idempotency (
    key text PRIMARY KEY, fingerprint bytea NOT NULL, response bytea NOT NULL,
    expires_at double precision NOT NULL);
"""


async def make_a_store_from_before_schemes(url: str, key: bytes, mark: int) -> None:
    """A store as the release before the scheme left it: its key, its mark, no scheme."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.executescript(_VERSION_2_SQLITE)
            db.execute("INSERT INTO counter VALUES (1, ?, ?)", (mark, key))
            db.commit()
        return
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(_VERSION_2_POSTGRESQL)
        await connection.execute("INSERT INTO tracking_counter VALUES (1, $1, $2)", mark, key)
    finally:
        await connection.close()
