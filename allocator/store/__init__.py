"""Where the counter's reservation mark and the permutation key are kept durably.

A store hands out *reservations*: half-open ranges of counter values that are durably marked
as taken before they are returned, so no range is ever handed out twice, even across crashes
and (with a shared database) across hosts.

Two stores sit behind one interface, ``Store``, in modules of the same shape: SQLite
(``sqlite.py``: one host, the default) and PostgreSQL (``postgres.py``: several hosts sharing
one counter). ``schema.py`` holds both stores' tables.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Protocol

from allocator.counter import KEY_BYTES, NEW_STORE_SCHEME
from allocator.errors import KeyMismatch, SchemeNotNamed, StoreError, StoreMissing
from allocator.series import Series
from config.urls import POSTGRES_URLS, SCHEMES, SQLITE_URL


class Remembered(NamedTuple):
    """An answer kept under an idempotency key, and the fingerprint of its request.

    ``unaudited``: its first delivery was abandoned, so no access line carries its numbers and
    no counter counted them; the one recall told so must do both.
    """

    fingerprint: bytes
    response: bytes
    unaudited: bool = False


class Store(Protocol):
    kind: str
    # Values per reservation when the operator sets none and the rate asks for less.
    default_step: int
    # What one kept idempotency key takes on disk besides its key (twice), fingerprint and
    # answer: ``idempotency_bytes_on_disk``'s ``per_key``.
    idempotency_key_overhead: int
    # Whether open() and load_key() may create a new store. A store created by mistake (a wrong
    # path, a lost volume) restarts the counter at 0; under an operator's key_file, that would
    # issue every earlier number again.
    create: bool
    # True once load_key() has created the store's key (a new store).
    created: bool
    # Where it is, as it may be logged: a path, or the URL without its secrets.
    location: str

    async def open(self) -> None:
        """Connect, and create the schema if it is missing (StoreMissing if ``create`` is off)."""

    async def load_key(self, supplied: bytes | None = None, scheme: int | None = None) -> bytes:
        """The permutation key, created at first use (``supplied``, else random bytes) with
        ``scheme`` (else NEW_STORE_SCHEME), as ``offered_row`` says.

        Raises KeyMismatch if ``supplied`` or ``scheme`` differs from what is stored,
        SchemeNotNamed if there is no key and ``supplied`` comes without its scheme, and
        StoreMissing if there is none and ``create`` is off.
        """

    async def load_scheme(self) -> int:
        """The permutation scheme the stored key is used with: fixed when the key is made."""

    async def durable_mark(self) -> int:
        """The stored reservation mark: every value below it may have been handed out."""

    async def reserve(self, count: int) -> tuple[int, int]:
        """Durably take ``count`` values and return them as ``(start, stop)``."""

    async def release(self, start: int, stop: int) -> bool:
        """Give back the unused tail ``[start, stop)`` if nobody reserved past it since."""

    async def raise_mark(self, value: int) -> int:
        """Raise the mark to ``value`` if it is lower (never lower it); the mark after."""

    # Named counters: the S10 series (allocator/series.py), each a row of its own.

    async def open_series(self, name: str, order: str, size: int) -> Series:
        """The series ``name`` as stored, made at its first use with ``order`` and ``size``,
        which never change for it after (hosts making it at once agree on the first)."""

    async def all_series(self) -> list[Series]:
        """Every series the store holds, by name."""

    async def reserve_series(self, name: str, count: int) -> tuple[int, int]:
        """Durably take up to ``count`` values of a series as ``(start, stop)``: fewer at its
        end, none (``start == stop``) once it is used up."""

    async def release_series(self, name: str, start: int, stop: int) -> bool:
        """``release`` for a series."""

    async def raise_series_mark(self, name: str, order: str, size: int, value: int) -> Series:
        """Raise a series' mark to ``value`` (at most its size; never lower it), making the
        series with ``order`` and ``size`` if the store holds none; the series after."""

    # Idempotency keys. Expiry follows the store's own clock (see docs/reliability.md): the
    # database's for PostgreSQL, so hosts with skewed clocks agree; for SQLite, the wall clock
    # read when the store was opened, advanced by the monotonic clock.

    async def recall(self, key: str, fingerprint: bytes = b"") -> Remembered | None:
        """The live answer remembered under an idempotency key, if there is one.

        ``unaudited`` is True for the one caller with the same ``fingerprint`` that takes over
        an answer whose first delivery was abandoned: it must count and audit it.
        """

    async def remember(
        self, key: str, fingerprint: bytes, response: bytes, ttl: float
    ) -> Remembered:
        """Durably keep ``response`` under ``key`` for ``ttl`` seconds, unless a live answer is
        there already: the answer that stands, ours or the one that was first."""

    async def abandon(self, key: str, response: bytes) -> None:
        """``response``, if it stands under ``key``, never reached its client: the next
        recall with its fingerprint is told so."""

    async def forget_expired(self, limit: int) -> int:
        """Drop at most ``limit`` expired answers (and abandonment marks); how many."""

    async def idempotency_bytes(self) -> int:
        """What the idempotency keys kept, expired or not, take on disk
        (``idempotency_bytes_on_disk``)."""

    async def close(self) -> None: ...


def idempotency_bytes_on_disk(keys: int, key_bytes: int, kept_bytes: int, per_key: int) -> int:
    """What ``keys`` idempotency keys take on disk, as the cap counts them: each key twice (the
    table and its primary key's index), the fingerprints and answers (``kept_bytes``), and each
    store's ``per_key`` for the rest: the expiry and its index entry, row and index headers, and
    the slack of half-full pages. The measure and the running count both use this, so they agree.
    """
    return 2 * key_bytes + kept_bytes + keys * per_key


def where(store: Store) -> dict[str, str]:
    """The log fields that say which store a line is about."""
    return {"tracking.store": store.kind, "tracking.store_location": store.location}


def offered_row(
    create: bool, supplied: bytes | None, scheme: int | None
) -> tuple[bytes, int] | None:
    """The key and scheme that ``Store.load_key`` offers a store that has none; None: it may
    not make one. An operator's key only with the scheme the operator names: the scheme
    belongs to the key, and a guess would give its old counters other numbers."""
    if not create or (supplied is not None and scheme is None):
        return None
    return supplied or os.urandom(KEY_BYTES), NEW_STORE_SCHEME if scheme is None else scheme


def checked_key(
    row: Any, supplied: bytes | None, scheme: int | None, create: bool, where: str
) -> bytes:
    """The key of the ``(key, scheme)`` row a store read, checked against the operator's
    (``Store.load_key``)."""
    if row is None:
        if create and supplied is not None and scheme is None:
            raise SchemeNotNamed.at(where)
        raise StoreMissing.at(where)
    key, stored_scheme = bytes(row[0]), int(row[1])
    if supplied is not None and key != supplied:
        raise KeyMismatch("the configured key differs from the key stored with the counter")
    if scheme is not None and stored_scheme != scheme:
        raise KeyMismatch(
            f"the key_file names scheme {scheme}, but the store uses its key with scheme "
            f"{stored_scheme}"
        )
    return key


def reserved_range(stop: int | None, count: int) -> tuple[int, int]:
    """The ``count`` values below the mark a reservation raised to ``stop`` (``Store.reserve``);
    None: the raise would have passed the end of the counter space."""
    if stop is None:
        raise StoreError("the counter space is exhausted")
    return stop - count, stop


def series_row(row: Any, name: str) -> Series:
    """A series read from a store's row ``(ordering, size, reserved)``."""
    if row is None:
        raise StoreError(f"the store holds no series {name}")
    return Series(name, str(row[0]), int(row[1]), int(row[2]))


def open_store(url: str, *, create: bool = True) -> Store:
    """The store for a ``store`` setting (not yet opened); ``create``: see ``Store.create``."""
    # The backends are imported here rather than above: they import this module's names
    # (Remembered, reserved_range, ...), so they load after it. (allocator.server imports
    # both at its start.)
    if url.startswith(SQLITE_URL):
        from allocator.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix(SQLITE_URL), create)
    if url.startswith(POSTGRES_URLS):
        from allocator.store.postgres import PostgresStore

        return PostgresStore(url, create)
    # Not the URL itself: it may hold a password.
    raise StoreError(f"unsupported store: its URL must start with one of {', '.join(SCHEMES)}")
