#!/usr/bin/env python3
"""The supervisor, and the only entry point: ``python run.py --help``.

It binds the listening socket once, starts the allocator, waits until the allocator's socket
accepts connections, then starts the workers, which inherit the listening socket. It restarts
any child that dies, with back-off. On SIGTERM or SIGINT it stops in order: workers drain and
exit, then the allocator writes its final checkpoint, then it exits 0.

Signal handlers only queue the signal; the main loop does the work.
"""

from __future__ import annotations

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
from config.settings import Config, ConfigError

log = logging.getLogger("supervisor")

# Restart back-off: doubles per quick death, from MIN to MAX; a child that lived STABLE seconds
# starts again from MIN.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
STABLE = 30.0
ALLOCATOR_START_TIMEOUT = 30.0
ALLOCATOR_STOP_TIMEOUT = 10.0

_fork = multiprocessing.get_context("fork")


def allocator_target(config: Config, parent_pid: int) -> None:
    from allocator import server

    server.main(config, parent_pid)


def worker_target(config: Config, sock: socket.socket, parent_pid: int) -> None:
    from service import worker

    worker.main(config, sock, parent_pid)


def _child(target: Callable[..., None], *args: Any) -> None:
    # Forked children inherit the supervisor's handlers: start them clean. SIGINT is ignored
    # because a Ctrl-C reaches the whole process group, and stopping is the supervisor's job.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        target(*args)
    except Exception:
        log.exception("child failed", extra={"child": multiprocessing.current_process().name})
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

    def start(self) -> None:
        self.process = _fork.Process(
            target=_child, args=(self.target, *self.args), name=self.name, daemon=False
        )
        self.process.start()
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("child started", extra={"child": self.name, "child.pid": self.process.pid})

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
                "child": self.name,
                "child.pid": self.process.pid,
                "child.exit_code": self.process.exitcode,
                "backoff_s": self.backoff,
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
            log.warning("child did not stop in time; killing", extra={"child": self.name})
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
        pid = os.getpid()
        self.allocator = Child("allocator", allocator, config, pid)
        self.workers = [
            Child(f"worker-{n}", worker, config, listener, pid)
            for n in range(1, config.workers + 1)
        ]
        self.signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

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
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> int:
        if _socket_accepts(self.config.allocator_socket):
            log.error(
                "another allocator is running on this runtime directory",
                extra={"socket": self.config.allocator_socket},
            )
            return 1
        self.allocator.start()
        if not self._wait_for_allocator():
            self.allocator.stop(ALLOCATOR_STOP_TIMEOUT)
            return 0 if self.signals else 1
        for worker in self.workers:
            worker.start()
        log.info(
            "service ready",
            extra={
                "host": self.config.host,
                "port": self.config.port,
                "workers": len(self.workers),
            },
        )
        self._supervise()
        self._shutdown()
        return 0

    def _wait_for_allocator(self) -> bool:
        deadline = time.monotonic() + ALLOCATOR_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.signals:
                return False
            if not self.allocator.alive:
                log.error("the allocator exited during start-up; see its log above")
                return False
            if _socket_accepts(self.config.allocator_socket):
                return True
            time.sleep(0.02)
        log.error("the allocator did not start in time")
        return False

    def _supervise(self) -> None:
        children = [self.allocator, *self.workers]
        while True:
            while self.signals:
                if self.signals.popleft() in (signal.SIGTERM, signal.SIGINT):
                    return
            now = time.monotonic()
            for child in children:
                child.reap()
                if child.restart_at is not None and child.restart_at <= now:
                    child.start()
            # Every child not yet reaped, dead or alive: one that died just now must wake us.
            sentinels = [c.process.sentinel for c in children if c.process and c.restart_at is None]
            due = [c.restart_at - now for c in children if c.restart_at is not None]
            timeout = max(0.0, min(due, default=1.0))
            ready = multiprocessing.connection.wait([self._wake_r, *sentinels], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 512)

    def _shutdown(self) -> None:
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


def main(argv: list[str] | None = None) -> int:
    try:
        config = settings.load(argv)
    except ConfigError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    try:
        listener = bind_listener(config)
    except OSError as exc:
        log.error(
            "cannot listen",
            extra={"host": config.host, "port": config.port, "error.message": str(exc)},
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
