"""The operator's commands: ``--init-store`` and ``--raise-reserved-to``, and the key file.

They run in the supervisor's process (``run.py``) instead of starting the service.
"""

from __future__ import annotations

import logging
import os
import stat

from allocator.counter import COUNTER_LIMIT, KEY_BYTES
from allocator.errors import AllocatorError
from allocator.store import open_store, where
from config.logs import error_fields
from config.settings import Commands, Config

log = logging.getLogger("allocator")


def read_key_file(path: str) -> bytes:
    """The operator's key; refused, as ssh refuses a private key, if others may read it."""
    with open(path) as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"{path} is open to other users (mode {mode:04o}); the key must be readable by "
                "this user only: chmod 600 it"
            )
        text = file.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path} must hold the key as hex digits") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} must hold {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits)")
    return key


async def run_commands(config: Config, commands: Commands) -> int:
    """``--init-store`` then ``--raise-reserved-to``; the exit status.

    ``--init-store`` creates the store, with the key of ``key_file`` when set; on an existing
    store it only checks that key. ``--raise-reserved-to`` raises the mark, never lowers it,
    and never creates a store: after a failed restore it must not leave a new one behind.
    Safe while the service runs: the store raises the mark in one atomic statement, and the
    allocator reserves from the stored mark, so its next reservation starts above the value.
    """
    value = commands.raise_reserved_to
    if value is not None and not 0 <= value <= COUNTER_LIMIT:
        log.error("the mark must be between 0 and 2**56", extra={"tracking.reserved": value})
        return 2
    action = "initialise the store" if commands.init_store else "raise the reservation mark"
    store = open_store(config.store, create=commands.init_store)
    try:
        key = read_key_file(config.key_file) if config.key_file else None
        await store.open()
        await store.load_key(key)
        if commands.init_store:
            log.info(
                "store initialised" if store.created else "store already initialised",
                extra={**where(store), "tracking.key_source": "key_file" if key else "random"},
            )
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
            extra={**error_fields(exc), **where(store)},
        )
        return 1
    finally:
        await store.close()
    return 0
