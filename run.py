#!/usr/bin/env python3
"""The supervisor, and the only entry point: ``python run.py --help``.

It takes the listening socket from systemd (socket activation) or binds it once itself, starts
the allocator and waits until it serves, then starts the workers, which inherit the listening
socket, and tells systemd ``READY=1`` once they serve. It restarts any child that dies, with
back-off, and replaces (SIGKILL, then the same restart) any child whose event loop stops
beating for ``heartbeat_timeout``: a wedged child is alive but serves nobody. It pings
systemd's watchdog while every child is alive and beating. On SIGTERM or SIGINT it
stops in order: ``STOPPING=1``, workers drain and exit, the allocator writes its final
checkpoint, exit 0. On SIGHUP it re-reads its configuration and replaces the workers one at a
time: a new one starts and serves before the old one drains.

Each child gets one SIGTERM, ever; signal handlers only queue the signal; the main loop does
the work.
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
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from allocator.unix_socket import accepts_connections
from config import settings
from config.settings import Config, ConfigError
from process import lifecycle, logs
from process.lifecycle import HEARTBEAT_INTERVAL, Liveness
from process.sd_notify import listen_sockets, notify, watchdog_interval
from service.admin import with_admin_token

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

# The signals the supervisor handles; held back across each fork (see Child.start).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def allocator_target(config: Config, ready: Ready) -> None:
    from allocator import server

    server.main(config, ready)


def ledger_target(config: Config, ready: Ready) -> None:
    from ledger import writer

    writer.main(config, ready)


def worker_target(config: Config, listener: socket.socket, ready: Ready) -> None:
    from service import worker

    worker.main(config, listener, ready)


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


def bind_listener(config: Config) -> socket.socket:
    """The listening socket, bound once here and inherited by every worker."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    return sock


def take_listener(config: Config) -> socket.socket:
    """The socket systemd passed (socket activation: it stays open across restarts, so the
    kernel queues connections for the next instance), else one bound here. Forked workers
    inherit it either way."""
    passed = listen_sockets()
    if len(passed) > 1:
        raise OSError(f"systemd passed {len(passed)} sockets; tracking.socket must list one")
    if passed:
        log.info(
            "listening on the socket systemd passed; host and port settings not used",
            extra={"tracking.listen": str(passed[0].getsockname())},
        )
        return passed[0]
    return bind_listener(config)


class Supervisor:
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


def preload() -> None:
    """Import the children's code once, here. Forked children inherit it: a worker starts (at
    start, after a crash, on a reload) without an import of its own, so a restart pauses
    clients less, and a reload runs the code this supervisor started with, never that of a
    release installed since."""
    import allocator.server  # noqa: F401
    import ledger.writer  # noqa: F401
    import service.worker  # noqa: F401


def _log_configuration(config: Config) -> None:
    """The settings in force, at start. Secrets are reported as set or not, never shown."""
    shown = {f"tracking.config.{name}": value for name, value in settings.describe(config).items()}
    log.info("configuration", extra=shown)


def _ledger_below_mark(config: Config) -> bool:
    """Whether the ledger claims no counter the store would issue again (after a restore);
    checked before the allocator starts, and logged when not."""
    from allocator.errors import AllocatorError
    from ledger.commands import check_below_mark
    from ledger.errors import LedgerAhead

    try:
        check_below_mark(config)
    except LedgerAhead as exc:
        log.error("the ledger is ahead of the store: not starting", extra=logs.error_fields(exc))
        return False
    except (AllocatorError, OSError, sqlite3.Error) as exc:
        # Not started unchecked: the allocator could not open this store either.
        log.error("cannot check the ledger against the store", extra=logs.error_fields(exc))
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    try:
        config, commands = settings.parse(argv)
    except ConfigError as exc:
        # JSON on stdout like every other line, so that log pipelines and Filebeat read it. The
        # configured level is part of what failed; an error shows at any level.
        logs.configure("INFO")
        log.error("invalid configuration", extra=logs.error_fields(exc))
        return 2
    logs.configure(config.log_level)
    if commands.erase_customer is not None:
        from ledger.commands import erase_customer

        return erase_customer(config, commands.erase_customer)
    if commands.given:
        from allocator.commands import run_commands

        return asyncio.run(run_commands(config, commands))
    _log_configuration(config)
    preload()
    if not _ledger_below_mark(config):
        return 1
    try:
        config, made_token = with_admin_token(config)
    except OSError as exc:
        log.error("cannot make an admin token", extra=logs.error_fields(exc))
        return 1
    if made_token:
        # The path, never the token: the file is the operator's to read (mode 0600).
        log.warning(
            "no admin_token is configured: made one for the ledger's records and remote operators",
            extra={"tracking.admin_token_file": made_token},
        )
    try:
        listener = take_listener(config)
    except OSError as exc:
        log.error(
            "cannot listen",
            extra={
                "tracking.host": config.host,
                "tracking.port": config.port,
                **logs.error_fields(exc),
            },
        )
        return 1
    supervisor = Supervisor(
        config, listener, load_config=lambda: with_admin_token(settings.load(argv))[0]
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _: supervisor.push(signum))
    try:
        return supervisor.run()
    finally:
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
