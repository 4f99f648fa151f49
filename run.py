#!/usr/bin/env python3
"""The supervisor, and the only entry point: ``python run.py --help``.

It binds the listening socket once, starts the allocator and waits until it serves, then
starts the workers, which inherit the listening socket, and tells systemd ``READY=1`` once
they serve. It restarts any child that dies, with back-off, and pings systemd's watchdog while
every child is alive. On SIGTERM or SIGINT it stops in order: ``STOPPING=1``, workers drain and
exit, the allocator writes its final checkpoint, exit 0.

Signal handlers only queue the signal; the main loop does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from config import logs, settings
from config.sd_notify import notify, watchdog_interval
from config.settings import Config, ConfigError

log = logging.getLogger("supervisor")

# Restart back-off: doubles per quick death, from MIN to MAX; a child that lived STABLE seconds
# starts again from MIN.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
STABLE = 30.0
START_TIMEOUT = 30.0  # for the allocator, then for the workers, to say they serve
ALLOCATOR_STOP_TIMEOUT = 10.0

_fork = multiprocessing.get_context("fork")

Ready = Callable[[], None]


def allocator_target(config: Config, ready: Ready) -> None:
    from allocator import server

    server.main(config, ready)


def worker_target(config: Config, listener: socket.socket, ready: Ready) -> None:
    from service import worker

    worker.main(config, listener, ready)


def _child(target: Callable[..., None], ready_fd: int, *args: Any) -> None:
    # Forked children inherit the supervisor's handlers: start them clean. SIGINT is ignored
    # because a Ctrl-C reaches the whole process group, and stopping is the supervisor's job.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name = multiprocessing.current_process().name

    def ready() -> None:
        os.write(ready_fd, name.encode() + b"\n")

    try:
        target(*args, ready)
    except Exception:
        log.exception("child failed", extra={"tracking.child": name})
        sys.exit(1)


class Child:
    """One slot the supervisor keeps filled: the allocator, or worker N."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self.target = target
        self.args = args
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0
        self.backoff = BACKOFF_MIN
        self.restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self, ready_fd: int) -> None:
        self.process = _fork.Process(
            target=_child, args=(self.target, ready_fd, *self.args), name=self.name
        )
        self.process.start()
        self.started_at = time.monotonic()
        self.restart_at = None
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

    def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        process = self.process
        if process is None or not process.is_alive():
            return
        process.terminate()
        process.join(timeout)
        if process.is_alive():
            log.warning("child did not stop in time; killing", extra={"tracking.child": self.name})
            process.kill()
            process.join()


def bind_listener(config: Config) -> socket.socket:
    """The listening socket, bound once here and inherited by every worker."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _socket_accepts(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Supervisor:
    def __init__(
        self,
        config: Config,
        listener: socket.socket,
        allocator: Callable[..., None] = allocator_target,
        worker: Callable[..., None] = worker_target,
    ) -> None:
        self.config = config
        self.allocator = Child("allocator", allocator, config)
        self.workers = [
            Child(f"worker-{n}", worker, config, listener) for n in range(1, config.workers + 1)
        ]
        self.signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Children write their name and a newline here once they serve.
        self._ready_r, self._ready_w = os.pipe()
        self._ready_lines = b""
        self._watchdog = watchdog_interval()

    def push(self, signum: int) -> None:
        """Queue a signal for the main loop (the signal handler, and tests, call this)."""
        self.signals.append(signum)
        with contextlib.suppress(BlockingIOError):  # the pipe is full: the loop is awake
            os.write(self._wake_w, b"\0")

    def run(self) -> int:
        """Start everything, supervise until told to stop, stop in order; the exit status."""
        try:
            return self._run()
        finally:
            for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
                os.close(fd)

    def _run(self) -> int:
        if _socket_accepts(self.config.allocator_socket):
            log.error(
                "another allocator is running on this runtime directory",
                extra={"tracking.socket": self.config.allocator_socket},
            )
            return 1
        self.allocator.start(self._ready_w)
        if not self._wait_until_serving([self.allocator]):
            self.allocator.stop(ALLOCATOR_STOP_TIMEOUT)
            return 0 if self.signals else 1
        for worker in self.workers:
            worker.start(self._ready_w)
        if not self._wait_until_serving(self.workers):
            self._shutdown()
            return 0 if self.signals else 1
        notify("READY=1")
        log.info(
            "service ready",
            extra={
                "tracking.host": self.config.host,
                "tracking.port": self.config.port,
                "tracking.workers": len(self.workers),
            },
        )
        self._supervise()
        self._shutdown()
        return 0

    def _wait_until_serving(self, children: list[Child]) -> bool:
        """True once every one of ``children`` said it serves; False on a signal, a death or
        the start timeout."""
        waiting = {child.name for child in children}
        deadline = time.monotonic() + START_TIMEOUT
        while waiting:
            if self.signals:
                return False
            dead = [c.name for c in children if c.name in waiting and not c.alive]
            if dead:
                log.error("a child exited during start-up", extra={"tracking.child": dead[0]})
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error(
                    "children did not start in time", extra={"tracking.child": sorted(waiting)[0]}
                )
                return False
            sentinels = [c.process.sentinel for c in children if c.process]
            multiprocessing.connection.wait([self._ready_r, self._wake_r, *sentinels], remaining)
            waiting -= self._read_ready()
        return True

    def _read_ready(self) -> set[str]:
        """Names of the children that said they serve since the last call."""
        readable = multiprocessing.connection.wait([self._ready_r], 0)
        if not readable:
            return set()
        self._ready_lines += os.read(self._ready_r, 4096)
        *lines, self._ready_lines = self._ready_lines.split(b"\n")
        return {line.decode() for line in lines}

    def _supervise(self) -> None:
        children = [self.allocator, *self.workers]
        next_ping = time.monotonic()
        while True:
            while self.signals:
                if self.signals.popleft() in (signal.SIGTERM, signal.SIGINT):
                    return
            now = time.monotonic()
            for child in children:
                child.reap()
                if child.restart_at is not None and child.restart_at <= now:
                    child.start(self._ready_w)
            self._read_ready()  # restarted children say so too; nobody waits for them
            if self._watchdog is not None and now >= next_ping:
                # Only while every child is up: a child stuck in restarts lets systemd act.
                # A ping missed for a brief restart is sent as soon as the child is back.
                if all(child.alive for child in children):
                    notify("WATCHDOG=1")
                    next_ping = now + self._watchdog
                else:
                    next_ping = now + BACKOFF_MIN
            # Every child not yet reaped, dead or alive: one that died just now must wake us.
            sentinels = [c.process.sentinel for c in children if c.process and c.restart_at is None]
            wake_at = [c.restart_at for c in children if c.restart_at is not None]
            if self._watchdog is not None:
                wake_at.append(next_ping)
            timeout = max(0.0, min(wake_at, default=now + 1.0) - now)
            ready = multiprocessing.connection.wait(
                [self._wake_r, self._ready_r, *sentinels], timeout
            )
            if self._wake_r in ready:
                os.read(self._wake_r, 512)

    def _shutdown(self) -> None:
        notify("STOPPING=1")
        log.info("stopping: draining workers")
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                worker.process.terminate()
        for worker in self.workers:
            worker.stop(self.config.shutdown_timeout + 1)
        log.info("stopping: allocator")
        self.allocator.stop(ALLOCATOR_STOP_TIMEOUT)
        log.info("stopped")


def _log_configuration(config: Config) -> None:
    """The settings in force, at start. Secrets are reported as set or not, never shown."""
    shown = {f"tracking.config.{name}": value for name, value in settings.describe(config).items()}
    log.info("configuration", extra=shown)


def main(argv: list[str] | None = None) -> int:
    try:
        config, commands = settings.parse(argv)
    except ConfigError as exc:
        # JSON on stdout like every other line, so that log pipelines and Filebeat read it. The
        # configured level is part of what failed; an error shows at any level.
        logs.configure("INFO")
        log.error(
            "invalid configuration",
            extra={"error.type": type(exc).__name__, "error.message": str(exc)},
        )
        return 2
    logs.configure(config.log_level)
    if commands.raise_reserved_to is not None:
        from allocator.server import raise_reserved

        return asyncio.run(raise_reserved(config, commands.raise_reserved_to))
    _log_configuration(config)
    try:
        listener = bind_listener(config)
    except OSError as exc:
        log.error(
            "cannot listen",
            extra={
                "tracking.host": config.host,
                "tracking.port": config.port,
                "error.message": str(exc),
            },
        )
        return 1
    supervisor = Supervisor(config, listener)
    signal.signal(signal.SIGTERM, lambda signum, _: supervisor.push(signum))
    signal.signal(signal.SIGINT, lambda signum, _: supervisor.push(signum))
    try:
        return supervisor.run()
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
