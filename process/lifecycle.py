"""What every child process of the supervisor shares: how it learns that it should stop, and
how it shows the supervisor that its event loop still runs (the heartbeat)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import struct
from collections.abc import Coroutine
from typing import Any

import uvloop

log = logging.getLogger("lifecycle")

# A beat at least this often; the supervisor makes it shorter for a short heartbeat_timeout.
HEARTBEAT_INTERVAL = 1.0
# The kinds of child the supervisor counts wedged restarts for: the metric's label values.
CHILD_KINDS = ("allocator", "ledger", "worker")
_COUNTS = struct.Struct(f"={len(CHILD_KINDS)}q")  # one 64-bit counter per kind


class Liveness:
    """What the supervisor shares with the children it forks, to tell a live one from a wedged
    one: the pipe on which each child's event loop writes its pid every ``interval`` seconds,
    and how many wedged children the supervisor replaced (workers render it in /metrics).

    Made before the first fork: children inherit the pipe and the shared counters.
    """

    def __init__(self, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.interval = interval
        self.read_fd, self.write_fd = os.pipe()
        # A beat never blocks a child (a full pipe drops it), and a read never blocks the
        # supervisor.
        os.set_blocking(self.write_fd, False)
        os.set_blocking(self.read_fd, False)
        self._unread = b""
        # Anonymous shared memory (no file, no descriptor), which forked children share:
        # written by the supervisor only, read by any worker.
        self._wedged = mmap.mmap(-1, _COUNTS.size)

    def beat(self) -> None:
        """One beat, from the child (a line of at most PIPE_BUF bytes: never interleaved)."""
        with contextlib.suppress(OSError):  # full, or the supervisor is gone: it will know
            os.write(self.write_fd, b"%d\n" % os.getpid())

    def read(self) -> list[int]:
        """The pids that beat since the last call (the supervisor's side)."""
        try:
            self._unread += os.read(self.read_fd, 65536)
        except BlockingIOError:
            return []
        *lines, self._unread = self._unread.split(b"\n")
        return [int(line) for line in lines]

    def count_wedged(self, kind: str) -> None:
        counts = list(_COUNTS.unpack_from(self._wedged))
        counts[CHILD_KINDS.index(kind)] += 1
        _COUNTS.pack_into(self._wedged, 0, *counts)

    def wedged_restarts(self) -> dict[str, int]:
        return dict(zip(CHILD_KINDS, _COUNTS.unpack_from(self._wedged), strict=True))

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


# Set in a child by the supervisor, between the fork and the child's target (supervisor/child.py).
_liveness: Liveness | None = None


def supervised_by(liveness: Liveness) -> None:
    """In a freshly forked child: beat on ``liveness`` from the event loop ``run`` starts."""
    global _liveness
    _liveness = liveness


def wedged_restarts() -> dict[str, int]:
    """Wedged children the supervisor replaced, by kind; zeros outside a supervised child."""
    if _liveness is None:
        return dict.fromkeys(CHILD_KINDS, 0)
    return _liveness.wedged_restarts()


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


async def _beat(liveness: Liveness) -> None:
    # A task of the loop, so it beats only while the loop runs: a loop blocked by a bug, a
    # stuck system call or SIGSTOP goes silent, while one that is merely busy (long requests
    # that await) keeps beating.
    while True:
        liveness.beat()
        await asyncio.sleep(liveness.interval)


async def _with_heartbeat(main: Coroutine[Any, Any, None]) -> None:
    """``main``, beating from start-up to the end of the drain when the supervisor asked."""
    if _liveness is None:
        return await main
    beating = asyncio.create_task(_beat(_liveness))
    try:
        await main
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run a child process's main coroutine on the configured event loop, with its heartbeat."""
    if event_loop == "uvloop":
        uvloop.run(_with_heartbeat(main))
    else:
        asyncio.run(_with_heartbeat(main))
