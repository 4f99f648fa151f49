"""The supervisor with injected children: restarts, back-off and the stop order."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import run
from config.settings import Config


def record(config: Config, event: str) -> None:
    with open(os.path.join(config.state_dir, "events"), "a") as file:
        file.write(f"{event} {os.getpid()} {time.monotonic()}\n")


def events(config: Config) -> list[tuple[str, int, float]]:
    path = Path(config.state_dir, "events")
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(name, int(pid), float(at)) for name, pid, at in rows]


def listening_allocator(config: Config, ready: run.Ready) -> None:
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


def steady_worker(config: Config, listener: socket.socket, ready: run.Ready) -> None:
    # The handler first: a test that saw "worker-start" may have SIGTERM sent at once.
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    record(config, "worker-start")
    ready()
    stopped.wait()
    time.sleep(0.2)  # draining takes a moment: the allocator must wait for it
    record(config, "worker-stop")


def crashing_worker(config: Config, listener: socket.socket, ready: run.Ready) -> None:
    record(config, "worker-start")
    if len(events(config)) == 2:  # the first start serves, then it dies and keeps dying
        ready()
        time.sleep(0.1)
    os._exit(3)


@contextlib.contextmanager
def supervising(config: Config, worker: Callable[..., None]) -> Iterator[Supervised]:
    """A Supervisor running in a thread; stopped with SIGTERM when the block ends."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        supervisor = run.Supervisor(config, listener, allocator=listening_allocator, worker=worker)
        supervised = Supervised(supervisor)
        thread = threading.Thread(target=lambda: supervised.status.append(supervisor.run()))
        thread.start()
        try:
            yield supervised
        finally:
            supervisor.push(signal.SIGTERM)
            thread.join(10)


class Supervised:
    def __init__(self, supervisor: run.Supervisor) -> None:
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
        supervisor = run.Supervisor(
            config, listener, allocator=lambda *_: os._exit(1), worker=steady_worker
        )
        assert supervisor.run() == 1
    assert events(config) == []  # no worker was started
