"""The supervisor: the parent of every process of the service (``run.py`` starts it).

Given the listening socket (``listener.py``: systemd's, or bound once), it starts the allocator
and waits until it serves, then the ledger's writer, then the workers (``targets.py``), which
inherit the listening socket, and tells systemd ``READY=1`` once they serve. It restarts any
child that dies, with back-off, and replaces (SIGKILL, then the same restart) any child whose
event loop stops beating for ``heartbeat_timeout``: a wedged child is alive but serves nobody
(``child.py``). It pings systemd's watchdog while every child is alive and beating. On SIGTERM
or SIGINT it stops in order: ``STOPPING=1``, workers drain and exit, the allocator writes its
final checkpoint, exit 0. On SIGHUP it re-reads its configuration and replaces the workers one
at a time: a new one starts and serves before the old one drains.

Each child gets one SIGTERM, ever; signal handlers only queue the signal; the main loop does
the work.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable

from allocator.unix_socket import accepts_connections
from config import settings
from config.settings import Config, ConfigError
from process import logs
from process.lifecycle import HEARTBEAT_INTERVAL, Liveness
from process.sd_notify import notify, watchdog_interval
from supervisor.child import BACKOFF_MIN, Child
from supervisor.targets import allocator_target, ledger_target, worker_target

log = logging.getLogger("supervisor")

START_TIMEOUT = 30.0  # for the allocator, then for the workers, to say they serve
ALLOCATOR_STOP_TIMEOUT = 10.0


class Supervisor:
    """Starts the children, keeps each slot filled, reloads the workers and stops in order."""

    def __init__(
        self,
        config: Config,
        listener: socket.socket,
        allocator: Callable[..., None] = allocator_target,
        worker: Callable[..., None] = worker_target,
        ledger: Callable[..., None] = ledger_target,
        load_config: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.worker_target = worker
        # Reads the configuration again on SIGHUP: the same file, environment and flags.
        self.load_config = load_config or (lambda: config)
        self.allocator = Child("allocator", allocator, config)
        # The children the workers need, started before them and stopped after them.
        self.backends = [self.allocator]
        if config.ledger:
            self.backends.append(Child("ledger", ledger, config))
        self.workers = [self._worker(n, config) for n in range(1, config.workers + 1)]
        # Workers replaced by a reload, draining: reaped, never restarted, killed at deadline.
        self.retiring: list[tuple[Child, float]] = []
        self.signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Children write their pid and a newline here once they serve.
        self._ready_r, self._ready_w = os.pipe()
        self._ready_lines = b""
        # Their loops beat at least 5 times per heartbeat_timeout: one late beat is no death.
        self.liveness = Liveness(min(HEARTBEAT_INTERVAL, config.heartbeat_timeout / 5))
        self._beats: dict[int, float] = {}  # pid: its last beat (monotonic)
        self._beats_read_at = time.monotonic()
        # The end of the supervisor's last oversleep: no child's silence counts from before it.
        self._resumed_at = 0.0
        self._watchdog = watchdog_interval()

    def _worker(self, n: int, config: Config) -> Child:
        return Child(f"worker-{n}", self.worker_target, config, self.listener)

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
            self.liveness.close()

    def _run(self) -> int:
        if accepts_connections(self.config.allocator_socket):
            log.error(
                "another allocator is running on this runtime directory",
                extra={"tracking.socket": self.config.allocator_socket},
            )
            return 1
        for backend in self.backends:
            backend.start(self._ready_w, self.liveness)
            if not self._wait_until_serving([backend]):
                self._stop_backends()
                return 0 if self._stop_requested() else 1
        for worker in self.workers:
            worker.start(self._ready_w, self.liveness)
        if not self._wait_until_serving(self.workers):
            self._shutdown()
            return 0 if self._stop_requested() else 1
        notify("READY=1")
        host, port = self.listener.getsockname()[:2]
        log.info(
            "service ready",
            extra={
                "tracking.host": host,
                "tracking.port": port,
                "tracking.workers": len(self.workers),
            },
        )
        self._supervise()
        self._shutdown()
        return 0

    def _stop_requested(self) -> bool:
        return signal.SIGTERM in self.signals or signal.SIGINT in self.signals

    def _wait_until_serving(self, children: list[Child]) -> bool:
        """True once every one of ``children`` said it serves; False on a stop signal, a death
        or the start timeout."""
        waiting = {child.pid for child in children}
        deadline = time.monotonic() + START_TIMEOUT
        while waiting:
            if self._stop_requested():
                return False
            dead = [c.name for c in children if c.pid in waiting and not c.alive]
            if dead:
                log.error("a child exited during start-up", extra={"tracking.child": dead[0]})
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = [c.name for c in children if c.pid in waiting]
                log.error("children did not start in time", extra={"tracking.child": late[0]})
                return False
            sentinels = [c.process.sentinel for c in children if c.process]
            readable = [self._ready_r, self._wake_r, self.liveness.read_fd, *sentinels]
            # Back at least once per beat interval: a longer gap is an oversleep (_read_beats).
            multiprocessing.connection.wait(readable, min(remaining, self.liveness.interval))
            self._read_beats()  # the others beat on while we wait: they are not wedged
            waiting -= self._read_ready()
        return True

    def _read_ready(self) -> set[int | None]:
        """Pids of the children that said they serve since the last call."""
        readable = multiprocessing.connection.wait([self._ready_r], 0)
        if not readable:
            return set()
        self._ready_lines += os.read(self._ready_r, 4096)
        *lines, self._ready_lines = self._ready_lines.split(b"\n")
        return {int(line) for line in lines}

    def _read_beats(self) -> float:
        """Note when each child's loop last beat, and return the time. Beats are kept by pid,
        so that a worker a reload started is credited with the beats it sent before it joined
        the workers; one older than heartbeat_timeout says nothing any more, and is forgotten."""
        now = time.monotonic()
        timeout = self.config.heartbeat_timeout
        # Our loop reads every beat interval at least. Half a timeout without a read: we did
        # not run (SIGSTOP or a freeze of the whole service, a suspended machine), and the
        # children may not have either. Their silence counts again from now, or every one of
        # them would be killed before it could beat.
        overslept = now - self._beats_read_at
        self._beats_read_at = now
        if overslept > timeout / 2:
            self._resumed_at = now
            log.warning(
                "the supervisor overslept; children's silence counts from now",
                extra={"tracking.overslept_seconds": round(overslept, 3)},
            )
        for pid in self.liveness.read():
            self._beats[pid] = now
        self._beats = {pid: at for pid, at in self._beats.items() if now - at <= timeout}
        for child in (*self.backends, *self.workers):
            at = self._beats.get(child.pid)
            if at is not None and at >= child.started_at:  # not a former owner of its pid
                child.last_beat = at
        return now

    def _silent_since(self, child: Child) -> float:
        """Since when a child's silence counts: its last sign of progress, or the end of an
        oversleep of ours, which the child may have shared."""
        return max(child.silent_since(), self._resumed_at)

    def _replace_wedged(self, children: list[Child], now: float) -> None:
        """SIGKILL every child whose loop has been silent longer than heartbeat_timeout."""
        timeout = self.config.heartbeat_timeout
        for child in children:
            if child.watched() and now - self._silent_since(child) >= timeout:
                child.kill_wedged(now, timeout)
                self.liveness.count_wedged(child.kind)

    def _supervise(self) -> None:
        next_ping = time.monotonic()
        while True:
            while self.signals:
                signum = self.signals.popleft()
                if signum in (signal.SIGTERM, signal.SIGINT):
                    return
                if signum == signal.SIGHUP:
                    self._reload()
            children = [*self.backends, *self.workers]
            self._reap_retiring()
            now = self._read_beats()
            self._replace_wedged(children, now)
            for child in children:
                child.reap()
                if child.restart_at is not None and child.restart_at <= now:
                    child.start(self._ready_w, self.liveness)
            self._read_ready()  # restarted children say so too; nobody waits for them
            if self._watchdog is not None and now >= next_ping:
                # Only while every child is up and its loop beats: a child stuck in restarts,
                # or wedged and not replaced (SIGKILL cannot end a process stuck in the kernel;
                # a new one that never beats), lets systemd act. A ping missed for a brief
                # restart is sent as soon as the child is back and has beaten.
                timeout = self.config.heartbeat_timeout
                if all(child.beating(now, timeout) for child in children):
                    notify("WATCHDOG=1")
                    next_ping = now + self._watchdog
                else:
                    next_ping = now + BACKOFF_MIN
            # Every child not yet reaped, dead or alive: one that died just now must wake us.
            sentinels = [c.process.sentinel for c in children if c.process and c.restart_at is None]
            sentinels += [c.process.sentinel for c, _ in self.retiring if c.process]
            wake_at = [c.restart_at for c in children if c.restart_at is not None]
            wake_at += [deadline for _, deadline in self.retiring]
            # A silent child must be judged on time even when no other child beats.
            wake_at += [
                self._silent_since(c) + self.config.heartbeat_timeout
                for c in children
                if c.watched()
            ]
            if self._watchdog is not None:
                wake_at.append(next_ping)
            # Back at least once per beat interval: a longer gap is an oversleep (_read_beats).
            wake_at.append(now + self.liveness.interval)
            timeout = max(0.0, min(wake_at) - now)
            ready = multiprocessing.connection.wait(
                [self._wake_r, self._ready_r, self.liveness.read_fd, *sentinels], timeout
            )
            if self._wake_r in ready:
                os.read(self._wake_r, 512)

    def _reload(self) -> None:
        """SIGHUP: the configuration read again, and the workers replaced one at a time."""
        notify("RELOADING=1")
        try:
            self._replace_workers()
        finally:
            notify("READY=1")

    def _replace_workers(self) -> None:
        try:
            loaded = self.load_config()
        except ConfigError as exc:
            log.error(
                "reload refused: the configuration does not load; nothing changed",
                extra=logs.error_fields(exc),
            )
            return
        config, kept = settings.reloaded(self.config, loaded)
        if kept:
            log.warning(
                "reload: these settings need a restart; they keep their running values",
                extra={"tracking.reload.needs_restart": kept},
            )
        logs.configure(config.log_level)
        log.info(
            "reload: replacing the workers one at a time",
            extra={"tracking.reload.changed": settings.changed(self.config, config)},
        )
        old, new = self.workers, []
        for n in range(1, config.workers + 1):
            child = self._worker(n, config)
            child.start(self._ready_w, self.liveness)
            if not self._wait_until_serving([child]):
                child.stop(time.monotonic() + config.shutdown_timeout)
                self.workers = new + old[len(new) :]
                log.error(
                    "reload stopped: a new worker did not serve; the others run as before",
                    extra={"tracking.child": child.name},
                )
                return
            new.append(child)
            if n <= len(old):
                self._retire(old[n - 1])
        for child in old[len(new) :]:
            self._retire(child)
        self.workers = new
        self.config = config
        log.info("reload done", extra={"tracking.workers": len(new)})

    def _retire(self, child: Child) -> None:
        """One SIGTERM: the old worker stops accepting, answers what it has read, exits."""
        child.terminate()
        self.retiring.append((child, time.monotonic() + child.args[0].shutdown_timeout + 1))

    def _reap_retiring(self) -> None:
        now = time.monotonic()
        for child, deadline in list(self.retiring):
            if child.alive and now < deadline:
                continue
            child.stop(deadline)  # joins it; SIGKILL if it outlived its drain
            assert child.process is not None
            log.info(
                "worker drained",
                extra={
                    "tracking.child": child.name,
                    "tracking.child_pid": child.pid,
                    "process.exit_code": child.process.exitcode,
                },
            )
            self.retiring.remove((child, deadline))

    def _shutdown(self) -> None:
        notify("STOPPING=1")
        log.info("stopping: draining workers")
        # One SIGTERM to every worker at once, then one shared deadline: shutdown_timeout is the
        # only limit, however many workers there are.
        deadline = time.monotonic() + self.config.shutdown_timeout + 1
        draining = [*self.workers, *(child for child, _ in self.retiring)]
        for worker in draining:
            worker.terminate()
        for worker in draining:
            worker.stop(deadline)
        self._stop_backends()
        log.info("stopped")

    def _stop_backends(self) -> None:
        """The ledger's writer commits what it was sent, then the allocator checkpoints."""
        for backend in reversed(self.backends):
            log.info(f"stopping: {backend.name}")
            backend.stop(time.monotonic() + ALLOCATOR_STOP_TIMEOUT)
