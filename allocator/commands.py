"""The operator's commands: ``--init-store``, ``--raise-reserved-to`` and
``--raise-series-reserved-to``, and the key file.

They run in the supervisor's process (``run.py``) instead of starting the service.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from typing import NamedTuple

from allocator.counter import COUNTER_LIMIT, KEY_BYTES, KNOWN_SCHEMES
from allocator.errors import AllocatorError, SchemeNotNamed, StoreMissing
from allocator.series import SERIES_PATTERN
from allocator.store import Store, open_store, where
from config.settings import Commands, Config
from process.logs import error_fields

log = logging.getLogger("allocator")


class OperatorKey(NamedTuple):
    """A key_file: the key, and the scheme its numbers are made with when the file names it."""

    key: bytes
    scheme: int | None


def read_key_file(path: str) -> OperatorKey:
    """The operator's key, and its scheme if the file names one (a line ``scheme=N`` after
    the key); refused, as ssh refuses a private key, if others may read it."""
    with open(path) as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"{path} is open to other users (mode {mode:04o}); the key must be readable by "
                "this user only: chmod 600 it"
            )
        text, *rest = file.read().split() or [""]
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path} must hold the key as hex digits") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} must hold {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits)")
    if not rest:
        return OperatorKey(key, None)
    name, _, number = rest[0].partition("=")
    if len(rest) > 1 or name != "scheme" or not (number.isascii() and number.isdigit()):
        raise ValueError(f"{path} may hold, after the key, one line scheme=N and nothing else")
    if int(number) not in KNOWN_SCHEMES:
        known = ", ".join(map(str, KNOWN_SCHEMES))
        raise ValueError(f"{path} names scheme {number}; this release knows schemes {known}")
    return OperatorKey(key, int(number))


async def _raise_series_mark(store: Store, config: Config, name: str, value: int) -> None:
    """``--raise-series-reserved-to``: a series the store does not hold (made after the backup)
    is made with the configured order and size, which must be those it had."""
    known = {series.name: series for series in await store.all_series()}
    before = known[name].reserved if name in known else None
    after = await store.raise_series_mark(name, config.s10_order, config.s10_series_size, value)
    log.info(
        "series reservation mark raised"
        if before is None or after.reserved > before
        else "series reservation mark already high enough",
        extra={
            "tracking.series": name,
            "tracking.series_order": after.order,
            "tracking.reserved_before": before,
            "tracking.reserved": after.reserved,
        },
    )


async def run_commands(config: Config, commands: Commands) -> int:
    """``--init-store`` then ``--raise-reserved-to``; the exit status.

    ``--init-store`` creates the store, with the key of ``key_file`` and the scheme the file
    names when set (a file that names none makes no store); on an existing store it only checks
    them. ``--raise-reserved-to`` raises the mark, never lowers it,
    and never creates a store: after a failed restore it must not leave a new one behind.
    Safe while the service runs: the store raises the mark in one atomic statement, and the
    allocator reserves from the stored mark, so its next reservation starts above the value.
    """
    value = commands.raise_reserved_to
    if value is not None and not 0 <= value <= COUNTER_LIMIT:
        log.error("the mark must be between 0 and 2**56", extra={"tracking.reserved": value})
        return 2
    if commands.raise_series_reserved_to is not None:
        name, _ = commands.raise_series_reserved_to
        if not re.match(SERIES_PATTERN, name) or not name:
            log.error("not an S10 series, such as s10:RR:GB", extra={"tracking.series": name})
            return 2
    action = "initialise the store" if commands.init_store else "raise the reservation mark"
    store: Store | None = None
    try:
        operator = read_key_file(config.key_file) if config.key_file else None
        # A key file that names no scheme is checked against a store, never makes one: not even
        # the file or the tables (the store itself would refuse the row, offered_row).
        guess = commands.init_store and operator is not None and operator.scheme is None
        store = open_store(config.store, create=commands.init_store and not guess)
        try:
            await store.open()
        except StoreMissing as exc:
            if guess:
                raise SchemeNotNamed.at(store.location) from exc
            raise
        key, scheme = operator or (None, None)
        await store.load_key(key, scheme)
        if commands.init_store:
            log.info(
                "store initialised" if store.created else "store already initialised",
                extra={
                    **where(store),
                    "tracking.key_source": "key_file" if operator else "random",
                    "tracking.scheme": await store.load_scheme(),
                },
            )
        if commands.raise_series_reserved_to is not None:
            await _raise_series_mark(store, config, *commands.raise_series_reserved_to)
        if value is not None:
            before = await store.durable_mark()
            after = await store.raise_mark(value)
            raised = "reservation mark raised"
            log.info(
                raised if after > before else "reservation mark already high enough",
                extra={"tracking.reserved_before": before, "tracking.reserved": after},
            )
    except (AllocatorError, OSError, ValueError) as exc:  # OSError, ValueError: the key file
        log.error(
            f"cannot {action}",
            extra={**error_fields(exc), **(where(store) if store else {})},
        )
        return 1
    finally:
        if store is not None:
            await store.close()
    return 0
