"""What every child process of the supervisor shares: how it learns that it should stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

import uvloop

log = logging.getLogger("lifecycle")


async def until_stop_requested(parent_pid: int) -> None:
    """Return on SIGTERM, or as soon as the supervisor that started us is gone.

    The handler stays installed until the event loop closes: a second SIGTERM during the
    drain that follows must change nothing, where the default action would kill the process
    with its requests in flight, its access lines and its last metrics report.
    """
    stopping = asyncio.Event()

    def on_sigterm() -> None:
        if stopping.is_set():
            log.info("SIGTERM again: still draining")
        stopping.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    while not stopping.is_set():
        if os.getppid() != parent_pid:
            log.warning("the supervisor is gone; stopping")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run a child process's main coroutine on the configured event loop."""
    if event_loop == "uvloop":
        uvloop.run(main)
    else:
        asyncio.run(main)
