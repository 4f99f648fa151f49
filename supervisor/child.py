"""One child of the supervisor: its slot (``Child``: start, restart with back-off, the
heartbeat's verdict, stop), and what runs first in the forked process (``_child``)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from process import lifecycle
from process.lifecycle import Liveness

log = logging.getLogger("supervisor")

# Restart back-off: doubles per quick death, from MIN to MAX; a child that lived STABLE seconds
# starts again from MIN.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
STABLE = 30.0

_fork = multiprocessing.get_context("fork")

Ready = Callable[[], None]

# The signals the supervisor handles; held back across each fork (see Child.start).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _child(target: Callable[..., None], ready_fd: int, liveness: Liveness, *args: Any) -> None:
    # Forked children inherit the supervisor's handlers, which only queue, and start with the
    # handled signals blocked (Child.start): set our own, then let the signals in, so that a
    # SIGTERM sent as we started takes the default action now instead of being queued in our
    # copy of the supervisor and lost. SIGINT is ignored because a Ctrl-C reaches the whole
    # process group, and stopping is the supervisor's job.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the supervisor's job too
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    lifecycle.supervised_by(liveness)  # lifecycle.run beats on it from the child's loop
    name = multiprocessing.current_process().name

    def ready() -> None:
        # The pid, not the name: during a reload the old and the new worker-N share a name.
        os.write(ready_fd, b"%d\n" % os.getpid())

    try:
        target(*args, ready)
    except Exception:
        log.exception("child failed", extra={"tracking.child": name})
        sys.exit(1)


class Child:
    """One slot the supervisor keeps filled: the allocator, the ledger's writer, or worker N."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self.target = target
        self.args = args
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0
        self.backoff = BACKOFF_MIN
        self.restart_at: float | None = None
        self.terminated = False  # SIGTERM sent: it drains, and never gets a second one
        self.last_beat: float | None = None  # when this process's loop last beat (monotonic)
        self.wedged = False  # SIGKILLed for its silence: it is dying, never killed twice

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def kind(self) -> str:
        """The label of the wedged-restarts metric: ``allocator``, ``ledger`` or ``worker``."""
        return "worker" if self.name.startswith("worker-") else self.name

    def start(self, ready_fd: int, liveness: Liveness) -> None:
        self.process = _fork.Process(
            target=_child, args=(self.target, ready_fd, liveness, *self.args), name=self.name
        )
        # The child inherits the blocked mask: a signal sent to it before it has set its own
        # handlers waits for them (_child). The supervisor's own are delivered after the fork.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.terminated = False
        self.last_beat = None
        self.wedged = False
        log.info(
            "child started",
            extra={"tracking.child": self.name, "tracking.child_pid": self.process.pid},
        )

    def reap(self) -> bool:
        """If the child died, schedule its restart with back-off; True if it did."""
        if self.process is None or self.process.is_alive() or self.restart_at is not None:
            return False
        now = time.monotonic()
        if now - self.started_at >= STABLE:
            self.backoff = BACKOFF_MIN
        self.restart_at = now + self.backoff
        log.warning(
            "child died; restarting",
            extra={
                "tracking.child": self.name,
                "tracking.child_pid": self.process.pid,
                "process.exit_code": self.process.exitcode,
                "tracking.backoff_seconds": self.backoff,
            },
        )
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        return True

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def silent_since(self) -> float:
        """The last sign of progress (monotonic): its last beat, or its start."""
        return self.started_at if self.last_beat is None else self.last_beat

    def watched(self) -> bool:
        """Whether its silence is ours to judge: a child told to stop has its own deadline."""
        return self.alive and not self.terminated and not self.wedged

    def beating(self, now: float, timeout: float) -> bool:
        """Alive, and its loop beat within ``timeout``: what the watchdog ping vouches for.
        A child that has not beaten yet since it started is not vouched for."""
        return self.alive and self.last_beat is not None and now - self.last_beat <= timeout

    def kill_wedged(self, now: float, timeout: float) -> None:
        """SIGKILL: a blocked loop cannot drain, and a stopped process cannot even handle
        SIGTERM. The sentinel then fires and ``reap`` restarts it as any dead child."""
        assert self.process is not None
        log.error(
            "child wedged; killing",
            extra={
                "tracking.child": self.name,
                "tracking.child_pid": self.process.pid,
                "tracking.silent_seconds": round(now - self.silent_since(), 3),
                "tracking.heartbeat_timeout": timeout,
            },
        )
        self.process.kill()
        self.wedged = True

    def terminate(self) -> None:
        """Ask the child to stop (drain, checkpoint), once: a second SIGTERM is never sent."""
        if self.process is not None and not self.terminated and self.process.is_alive():
            self.process.terminate()
            self.terminated = True

    def stop(self, deadline: float) -> None:
        """SIGTERM (unless already sent), wait until ``deadline`` (monotonic), then SIGKILL."""
        process = self.process
        if process is None or not process.is_alive():
            return
        self.terminate()
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("child did not stop in time; killing", extra={"tracking.child": self.name})
            process.kill()
            process.join()
