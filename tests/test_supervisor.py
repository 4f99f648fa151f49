"""The supervisor with injected children: restarts, back-off and the stop order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config import settings
from config.settings import Config
from process import lifecycle
from process.sd_notify import listen_sockets, notify, watchdog_interval
from supervisor import Supervisor
from supervisor.child import HANDLED_SIGNALS, Child, Ready

REPO = Path(__file__).resolve().parents[1]


def record(config: Config, event: str) -> None:
    with open(os.path.join(config.state_dir, "events"), "a") as file:
        file.write(f"{event} {os.getpid()} {time.monotonic()}\n")


def events(config: Config) -> list[tuple[str, int, float]]:
    path = Path(config.state_dir, "events")
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(name, int(pid), float(at)) for name, pid, at in rows]


def listening_allocator(config: Config, ready: Ready) -> None:
    """Stands in for the allocator: listens on its socket until SIGTERM."""
    os.makedirs(config.runtime_dir, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(config.allocator_socket)
    sock.listen()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    record(config, "allocator-start")
    ready()
    stopped.wait()
    record(config, "allocator-stop")
    os.unlink(config.allocator_socket)


def quiet_ledger(config: Config, ready: Ready) -> None:
    """Stands in for the ledger's writer on the real lifecycle.run: its loop beats, it records
    nothing, it stops on SIGTERM."""

    async def main() -> None:
        ready()
        await lifecycle.until_stop_requested(os.getppid())

    lifecycle.run(main(), "asyncio")


def steady_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    # The handler first: a test that saw "worker-start" may have SIGTERM sent at once.
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    record(config, "worker-start")
    ready()
    stopped.wait()
    time.sleep(0.2)  # draining takes a moment: the allocator must wait for it
    record(config, "worker-stop")


def crashing_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    record(config, "worker-start")
    if len(events(config)) == 2:  # the first start serves, then it dies and keeps dying
        ready()
        time.sleep(0.1)
    os._exit(3)


@contextlib.contextmanager
def supervising(
    config: Config,
    worker: Callable[..., None],
    allocator: Callable[..., None] = listening_allocator,
    reloaded: Config | None = None,
) -> Iterator[Supervised]:
    """A Supervisor running in a thread; stopped with SIGTERM when the block ends. A SIGHUP
    reads ``reloaded`` (by default, the same ``config`` again)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        supervisor = Supervisor(
            config,
            listener,
            allocator=allocator,
            worker=worker,
            ledger=quiet_ledger,
            load_config=lambda: reloaded or config,
        )
        supervised = Supervised(supervisor)
        thread = threading.Thread(target=lambda: supervised.status.append(supervisor.run()))
        thread.start()
        try:
            yield supervised
        finally:
            supervisor.push(signal.SIGTERM)
            # A bound for waiting only: on a loaded CI machine a stop took over 10 s.
            thread.join(60)
            assert not thread.is_alive(), "the supervisor did not stop within 60 s"


class Supervised:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.status: list[int] = []


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigterm_stops_workers_before_the_allocator_and_exits_0(
    make_config: Callable[..., Config],
) -> None:
    config = make_config("--workers", "2")
    with supervising(config, steady_worker) as supervised:
        wait_for(lambda: [e[0] for e in events(config)].count("worker-start") == 2)
    assert supervised.status == [0]
    names = [name for name, _, _ in events(config)]
    assert names[0] == "allocator-start"
    assert names.count("worker-stop") == 2
    assert names[-1] == "allocator-stop"


def test_dead_workers_are_restarted_with_back_off(make_config: Callable[..., Config]) -> None:
    config = make_config("--workers", "1")
    with supervising(config, crashing_worker) as supervised:
        time.sleep(2.0)
    assert supervised.status == [0]
    starts = [at for name, _, at in events(config) if name == "worker-start"]
    # Back-off 0.1, 0.2, 0.4, 0.8 s...: a handful of restarts in 2 s, not hundreds.
    assert 3 <= len(starts) <= 7
    # The first gap includes the 0.1 s the first start served; after it, each gap doubles.
    gaps = [b - a for a, b in itertools.pairwise(starts)][1:]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps))


def test_an_allocator_that_cannot_start_fails_the_supervisor(
    make_config: Callable[..., Config],
) -> None:
    config = make_config("--workers", "1")
    with socket.socket() as listener:
        supervisor = Supervisor(
            config, listener, allocator=lambda *_: os._exit(1), worker=steady_worker
        )
        assert supervisor.run() == 1
    assert events(config) == []  # no worker was started


def test_each_child_gets_exactly_one_sigterm_on_stop(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second SIGTERM that lands after a worker handled the first one used to kill it in the
    # middle of its drain (its handler is gone by then): one signal per child, whatever happens.
    sent: list[tuple[int, int]] = []
    real_kill = os.kill

    def kill(pid: int, signum: int) -> None:
        sent.append((pid, signum))
        real_kill(pid, signum)

    monkeypatch.setattr(os, "kill", kill)
    config = make_config("--workers", "3", "--ledger")
    with supervising(config, steady_worker) as supervised:
        wait_for(lambda: [e[0] for e in events(config)].count("worker-start") == 3)
        ledger_pid = supervised.supervisor.backends[-1].pid
    pids = {pid for name, pid, _ in events(config) if name.endswith("-start")} | {ledger_pid}
    assert len(pids) == 5
    terms = [pid for pid, signum in sent if signum == signal.SIGTERM]
    assert sorted(terms) == sorted(pids)


def picky_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    """Serves as steady_worker does, but cannot start without the access log."""
    if not config.access_log:
        record(config, "worker-refused")
        os._exit(1)
    steady_worker(config, listener, ready)


def test_a_reload_whose_new_worker_does_not_serve_leaves_the_old_ones_serving(
    make_config: Callable[..., Config],
) -> None:
    config = make_config("--workers", "2")
    reloaded = make_config("--workers", "2", "--no-access-log")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        supervisor = Supervisor(
            config,
            listener,
            allocator=listening_allocator,
            ledger=quiet_ledger,
            worker=picky_worker,
            load_config=lambda: reloaded,
        )
        status: list[int] = []
        thread = threading.Thread(target=lambda: status.append(supervisor.run()))
        thread.start()
        try:
            # A child's first event may come before its parent knows its pid.
            wait_for(lambda: starts(config) == 2 and all(w.pid for w in supervisor.workers))
            old = [worker.pid for worker in supervisor.workers]
            supervisor.push(signal.SIGHUP)
            wait_for(lambda: "worker-refused" in [e[0] for e in events(config)])
            wait_for(lambda: not supervisor.signals)
        finally:
            supervisor.push(signal.SIGTERM)
            # A bound for waiting only: on a loaded CI machine a stop took over 10 s.
            thread.join(60)
            assert not thread.is_alive(), "the supervisor did not stop within 60 s"
    assert status == [0]
    names = [name for name, _, _ in events(config)]
    # The old workers served on, and stopped only with the service.
    assert names.count("worker-start") == 2
    assert names.count("worker-stop") == 2
    assert [worker.pid for worker in supervisor.workers] == old
    assert supervisor.config == config


def announcing_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    """Records when it serves and when it is told to stop, under its name (``worker-N``). One
    that a reload started (no access log) says it serves only once its predecessor was told to
    stop, or after a second: an old worker stopped too early then shows before it."""
    name = multiprocessing.current_process().name
    stopped = threading.Event()

    def on_sigterm(*_: object) -> None:
        record(config, f"{name}-sigterm")
        stopped.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    if not config.access_log:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not starts(config, f"{name}-sigterm"):
            time.sleep(0.01)
    record(config, f"{name}-serves")
    ready()
    stopped.wait()


def test_a_reload_stops_an_old_worker_only_after_its_replacement_serves(
    make_config: Callable[..., Config],
) -> None:
    config = make_config("--workers", "2")
    reloaded = make_config("--workers", "2", "--no-access-log")
    with supervising(config, announcing_worker, reloaded=reloaded) as supervised:
        wait_for(lambda: starts(config, "worker-2-serves") == 1)
        supervised.supervisor.push(signal.SIGHUP)
        wait_for(lambda: starts(config, "worker-2-sigterm") == 1)
    assert supervised.status == [0]
    for name in ("worker-1", "worker-2"):
        serves = [(pid, at) for event, pid, at in events(config) if event == f"{name}-serves"]
        told = {pid: at for event, pid, at in events(config) if event == f"{name}-sigterm"}
        (old_pid, _), (new_pid, new_serves_at) = serves
        assert new_pid != old_pid
        assert told[old_pid] > new_serves_at, f"the old {name} was stopped before the new served"


def stubborn_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    """Serves as steady_worker does; one that a reload started (no access log) ignores SIGTERM,
    so that only shutdown_timeout ends it."""
    if not config.access_log:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record(config, "worker-start")
        ready()
        time.sleep(3600)
    steady_worker(config, listener, ready)


def test_a_reload_keeps_the_new_configuration_and_the_stop_uses_it(
    make_config: Callable[..., Config],
) -> None:
    # The old shutdown_timeout would hold the stop for 30 s; the new one, half a second.
    config = make_config("--workers", "2", "--shutdown-timeout", "30")
    reloaded = make_config("--workers", "2", "--no-access-log", "--shutdown-timeout", "0.5")
    with supervising(config, stubborn_worker, reloaded=reloaded) as supervised:
        wait_for(lambda: starts(config) == 2)
        supervised.supervisor.push(signal.SIGHUP)
        wait_for(lambda: starts(config, "worker-stop") == 2)  # both old ones drained
        assert supervised.supervisor.config == reloaded
        new = [worker.process for worker in supervised.supervisor.workers]
    # Stopped within the join's 10 s, which the old timeout would not have allowed.
    assert supervised.status == [0]
    assert [process.exitcode for process in new if process] == [-signal.SIGKILL] * 2


def test_a_reload_applies_what_it_can_and_names_what_needs_a_restart(
    make_config: Callable[..., Config],
) -> None:
    running = make_config("--workers", "2")
    loaded = make_config(
        "--workers", "3", "--port", "9999", "--reserve-step", "5", "--no-access-log"
    )  # fmt: skip
    applied, kept = settings.reloaded(running, loaded)
    assert kept == ["port", "reserve_step"]
    assert (applied.port, applied.reserve_step) == (running.port, running.reserve_step)
    assert (applied.workers, applied.access_log) == (3, False)


def test_sockets_passed_to_another_process_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # LISTEN_PID names the process systemd started; a child that inherited the variables
    # must not take fd 3 for a listening socket.
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_sockets() == []


# A process started as systemd starts it under socket activation: the listening socket as fd 3,
# and the variables that say so. It takes the socket, then reports what it and a child see.
TAKE_SOCKETS = """
import json, os, subprocess, sys
from process.sd_notify import listen_sockets, notify, watchdog_interval
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="tracking")
taken = listen_sockets()
def listen_names(names):
    return sorted(name for name in names if name.startswith("LISTEN_"))
env = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
print(json.dumps({
    "taken": [sock.getsockname()[1] for sock in taken],
    "left": listen_names(os.environ),
    "child": listen_names(line.partition("=")[0] for line in env.splitlines()),
}))
"""


def test_passed_sockets_are_taken_and_their_variables_removed() -> None:
    # As sd_listen_fds(unset_environment=1): a process the service starts must not believe
    # that it was passed sockets.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        taken = subprocess.run(
            [sys.executable, "-c", TAKE_SOCKETS, str(listener.fileno())],
            cwd=REPO,
            pass_fds=(listener.fileno(),),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        port = listener.getsockname()[1]
    assert json.loads(taken.stdout) == {"taken": [port], "left": [], "child": []}


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd names an abstract socket with a leading "@", which stands for a NUL byte.
    name = f"tn-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert systemd.recv(64) == b"READY=1"


def test_the_watchdog_is_pinged_every_half_of_watchdog_sec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every half: one late ping must not let the watchdog fire (sd_watchdog_enabled(3)).
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


# --- wedged children: a loop that stops beating is killed and restarted -------------------------


def beating_allocator(config: Config, ready: Ready) -> None:
    """Stands in for the allocator on the real lifecycle.run: its loop beats until SIGTERM."""

    async def main() -> None:
        os.makedirs(config.runtime_dir, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(config.allocator_socket)
        sock.listen()
        record(config, "allocator-start")
        ready()
        await lifecycle.until_stop_requested(os.getppid())
        record(config, "allocator-stop")
        os.unlink(config.allocator_socket)

    lifecycle.run(main(), "asyncio")


def starts(config: Config, name: str = "worker-start") -> int:
    return [e[0] for e in events(config)].count(name)


def wedging_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    """A worker on the real lifecycle.run whose first start blocks its loop once it served
    (a bug, a stuck system call): alive, silent. Later starts serve until SIGTERM."""

    async def main() -> None:
        first = starts(config) == 0
        record(config, "worker-start")
        ready()
        if first:
            await asyncio.sleep(0.2)  # beats a few times first
            record(config, "worker-wedged")
            time.sleep(3600)  # noqa: ASYNC251  the loop is blocked: no beat ever again
        await lifecycle.until_stop_requested(os.getppid())

    lifecycle.run(main(), "asyncio")


def busy_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    """A worker busy for three heartbeat timeouts with a long request that awaits, and one
    that computes in slices: its loop goes on turning, so it goes on beating."""

    async def long_request() -> None:
        await asyncio.sleep(3 * config.heartbeat_timeout)

    async def computing_request() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * config.heartbeat_timeout
        while loop.time() < deadline:
            sum(range(10_000))  # CPU-bound, but it yields between slices
            await asyncio.sleep(0)

    async def main() -> None:
        record(config, "worker-start")
        ready()
        await asyncio.gather(long_request(), computing_request())
        record(config, "worker-requests-done")
        await lifecycle.until_stop_requested(os.getppid())

    lifecycle.run(main(), "asyncio")


def test_a_worker_whose_loop_stops_beating_is_killed_and_restarted(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config("--workers", "1", "--heartbeat-timeout", "1")
    caplog.set_level(logging.INFO, logger="supervisor")
    with supervising(config, wedging_worker, beating_allocator) as supervised:
        wait_for(lambda: starts(config) == 2)
        restarts = supervised.supervisor.liveness.wedged_restarts()
    assert supervised.status == [0]
    assert restarts == {"allocator": 0, "ledger": 0, "worker": 1}
    wedged_pid = next(pid for name, pid, _ in events(config) if name == "worker-wedged")
    (line,) = [r for r in caplog.records if r.getMessage() == "child wedged; killing"]
    assert line.levelno == logging.ERROR
    assert getattr(line, "tracking.child") == "worker-1"
    assert getattr(line, "tracking.child_pid") == wedged_pid
    assert getattr(line, "tracking.silent_seconds") >= 1.0
    (death,) = [r for r in caplog.records if r.getMessage() == "child died; restarting"]
    assert getattr(death, "process.exit_code") == -signal.SIGKILL
    # The allocator beat all along: it was left alone, and stopped last as always.
    assert starts(config, "allocator-start") == 1
    assert [e[0] for e in events(config)][-1] == "allocator-stop"


def test_an_allocator_whose_loop_stops_beating_is_killed_and_restarted(
    make_config: Callable[..., Config],
) -> None:
    def wedging_allocator(config: Config, ready: Ready) -> None:
        if starts(config, "allocator-start") == 0:
            record(config, "allocator-start")
            ready()
            os.kill(os.getpid(), signal.SIGSTOP)  # stopped: not even SIGTERM is handled
        beating_allocator(config, ready)

    config = make_config("--workers", "1", "--heartbeat-timeout", "1")
    with supervising(config, busy_worker, wedging_allocator) as supervised:
        wait_for(lambda: starts(config, "allocator-start") == 2)
        restarts = supervised.supervisor.liveness.wedged_restarts()
    assert supervised.status == [0]
    assert restarts == {"allocator": 1, "ledger": 0, "worker": 0}


def test_a_busy_worker_whose_loop_turns_is_not_killed(
    make_config: Callable[..., Config],
) -> None:
    config = make_config("--workers", "1", "--heartbeat-timeout", "1")
    with supervising(config, busy_worker, beating_allocator) as supervised:
        wait_for(lambda: starts(config, "worker-requests-done") == 1)
        restarts = supervised.supervisor.liveness.wedged_restarts()
    assert restarts == {"allocator": 0, "ledger": 0, "worker": 0}
    assert starts(config) == 1


@pytest.mark.parametrize("beats", [True, False], ids=["beating", "never-beating"])
def test_the_watchdog_is_pinged_only_while_every_child_beats(
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    short_tmp: Path,
    beats: bool,
) -> None:
    # A child that never beats (wedged before its loop ran, again after each restart, or stuck
    # where SIGKILL cannot reach it) must not be vouched for: systemd then steps in.
    notify_path = str(short_tmp / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    received: list[str] = []
    config = make_config("--workers", "1", "--heartbeat-timeout", "1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(notify_path)
        systemd.settimeout(0.05)

        def drain() -> None:
            with contextlib.suppress(TimeoutError):
                while True:
                    received.append(systemd.recv(4096).decode())

        worker = busy_worker if beats else steady_worker  # steady_worker never beats
        with supervising(config, worker, beating_allocator):
            if beats:
                wait_for(lambda: drain() or "WATCHDOG=1" in received)
            else:
                # Killed for its silence and restarted twice: 2 s without a beat from it.
                wait_for(lambda: drain() or starts(config) == 3)
        drain()
    assert "READY=1" in received
    assert ("WATCHDOG=1" in received) is beats


def slow_starting_worker(config: Config, listener: socket.socket, ready: Ready) -> None:
    """A worker on the real lifecycle.run that takes most of a heartbeat_timeout to serve (its
    loop beats meanwhile), then runs two more before it calls itself settled."""

    async def main() -> None:
        await asyncio.sleep(0.8 * config.heartbeat_timeout)
        record(config, "worker-start")
        ready()
        await asyncio.sleep(2 * config.heartbeat_timeout)
        record(config, "worker-settled")
        await lifecycle.until_stop_requested(os.getppid())

    lifecycle.run(main(), "asyncio")


def test_workers_a_slow_reload_started_are_credited_with_their_beats(
    make_config: Callable[..., Config],
) -> None:
    # The reload waits for each new worker in turn, longer than heartbeat_timeout in all: the
    # first one beat all along, and must not be taken for a wedged one when it joins.
    config = make_config("--workers", "2", "--heartbeat-timeout", "1")
    with supervising(config, slow_starting_worker, beating_allocator) as supervised:
        wait_for(lambda: starts(config, "worker-settled") == 2)
        supervised.supervisor.push(signal.SIGHUP)
        wait_for(lambda: starts(config, "worker-settled") == 4)
        restarts = supervised.supervisor.liveness.wedged_restarts()
    assert restarts == {"allocator": 0, "ledger": 0, "worker": 0}
    assert starts(config) == 4


# --- a SIGTERM in a child's first moments ------------------------------------------------------


def sleeping_child(config: Config, ready: Ready) -> None:
    """A child with the default SIGTERM action: a SIGTERM that reaches it ends it at once."""
    time.sleep(60)


def test_a_sigterm_sent_as_a_child_starts_is_not_lost(config: Config) -> None:
    # run.main's handlers only queue a signal, and a forked child starts with them: a SIGTERM
    # that came before the child set its own was queued in the child's copy of the supervisor,
    # and the one SIGTERM a child ever gets was lost, until shutdown_timeout and SIGKILL.
    queued: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, _: queued.append(signum))
        for signum in HANDLED_SIGNALS
    }
    liveness = lifecycle.Liveness()
    ready_r, ready_w = os.pipe()
    try:
        for _ in range(20):
            child = Child("allocator", sleeping_child, config)
            child.start(ready_w, liveness)
            child.terminate()
            assert child.process is not None
            child.process.join(10)  # a bound for waiting: it ends within milliseconds
            lost = child.process.is_alive()
            if lost:
                child.process.kill()
                child.process.join()
            assert not lost, "the SIGTERM was lost"
            assert child.process.exitcode == -signal.SIGTERM
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        liveness.close()
        os.close(ready_r)
        os.close(ready_w)
    assert queued == []  # none of it reached the test's own process
