"""Stops, restarts and reloads that no client notices: drains, socket activation, SIGHUP.

The same behaviours are checked under a real systemd by .ci/systemd.sh (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY, NUMBER_PATTERN
from tests.system.conftest import Outcome, Service, check_unsurprising, load

# Starts run.py as systemd does under socket activation: the listening socket as fd 3,
# LISTEN_FDS=1 and LISTEN_PID set to the pid that run.py will have (exec keeps it).
ACTIVATE = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def socket_activated(service: Service, listener: socket.socket) -> None:
    service.prefix = [sys.executable, "-c", ACTIVATE, str(listener.fileno())]
    service.pass_fds = (listener.fileno(),)
    service.port = listener.getsockname()[1]
    service.url = f"http://127.0.0.1:{service.port}"


def drain_logged(service: Service, pid: int) -> bool:
    lines = service.log_lines()
    return any(x.get("message") == "draining" and x.get("process.pid") == pid for x in lines)


class Answer:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.status = 0
        self.connection = ""
        self.body: dict[str, Any] = {}
        self.error = ""


async def ask(session: aiohttp.ClientSession, answer: Answer) -> None:
    headers = {"X-Request-ID": answer.request_id}
    try:
        async with session.get(
            "/next-tracking-number", params=CANONICAL_QUERY, headers=headers
        ) as response:
            answer.status = response.status
            answer.connection = response.headers.get("Connection", "")
            answer.body = json.loads(await response.read())
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        answer.error = repr(exc)


async def until(condition: Callable[[], bool]) -> None:
    """Polls: what the test waits for shows in the log file or in other tasks' answers."""
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_a_draining_worker_answers_what_it_read_and_a_second_sigterm_changes_nothing(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 1, "--lease-timeout", "5")
    try:
        service.start()
        (allocator_pid,) = service.child_pids("allocator")
        (worker_pid,) = service.child_pids("worker-1")
        answers = [Answer(str(uuid.uuid4())) for _ in range(100)]
        before: set[str] = set()  # answered before the first SIGTERM

        async def run() -> None:
            # One connection per request. After one answer the worker holds at least 15
            # numbers of its first block (16 at this rate), so with the allocator stopped the
            # others wait for a lease, in flight.
            connector = aiohttp.TCPConnector(limit=len(answers))
            async with aiohttp.ClientSession(service.url, connector=connector) as session:
                first = Answer(str(uuid.uuid4()))
                await ask(session, first)
                assert first.status == 200
                os.kill(allocator_pid, signal.SIGSTOP)
                asking = [asyncio.create_task(ask(session, a)) for a in answers]
                await until(lambda: sum(a.status == 200 for a in answers) >= 15)
                before.update(a.request_id for a in answers if a.status)
                os.kill(worker_pid, signal.SIGTERM)
                await until(lambda: drain_logged(service, worker_pid))
                # What the supervisor used to do: a second SIGTERM once the first was handled.
                os.kill(worker_pid, signal.SIGTERM)
                os.kill(allocator_pid, signal.SIGCONT)
                await asyncio.gather(*asking)

        asyncio.run(run())
        assert [a.error for a in answers if a.error] == []
        assert {a.status for a in answers} <= {200, 503}
        assert all("error" in a.body for a in answers if a.status == 503)
        death = service.wait_for_message("child died; restarting", 1)
        assert (death["tracking.child_pid"], death["process.exit_code"]) == (worker_pid, 0)
        # Every answer the draining worker gave said Connection: close, and every request has
        # its access line.
        by_worker = {
            line["http.request.id"]: line["process.pid"] for line in service.access_lines()
        }
        drained = [
            a
            for a in answers
            if a.request_id not in before and by_worker.get(a.request_id) == worker_pid
        ]
        assert drained, "no request was in flight on the draining worker"
        assert {a.connection.lower() for a in drained} == {"close"}
        assert {a.request_id for a in answers} <= set(by_worker)
        assert service.stop(timeout=15) == 0
    finally:
        service.kill()


REQUEST = (
    f"GET /next-tracking-number?{urllib.parse.urlencode(CANONICAL_QUERY)}"
    " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
).encode()


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def test_a_connection_accepted_just_before_a_drain_gets_its_request_answered(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 1)
    try:
        service.start()
        (worker_pid,) = service.child_pids("worker-1")
        before = sockets_of(worker_pid)
        with socket.create_connection(("127.0.0.1", service.port)) as fresh:
            asyncio.run(until(lambda: sockets_of(worker_pid) > before))  # accepted
            os.kill(worker_pid, signal.SIGTERM)
            asyncio.run(until(lambda: drain_logged(service, worker_pid)))
            # The request comes after the drain began, on a connection accepted before it.
            fresh.sendall(REQUEST.replace(b"Connection: close\r\n", b""))
            fresh.settimeout(20)
            answer = b""
            while chunk := fresh.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200 "), answer[:300]
        assert b"\r\nconnection: close" in head
        death = service.wait_for_message("child died; restarting", 1)
        assert (death["tracking.child_pid"], death["process.exit_code"]) == (worker_pid, 0)
        assert service.stop(timeout=15) == 0
    finally:
        service.kill()


def test_socket_activation_queues_connections_while_the_service_restarts(
    short_tmp: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=4096) as listener:
        service = Service(short_tmp, 2)
        socket_activated(service, listener)
        try:
            service.start()
            assert service.wait_for_message(
                "listening on the socket systemd passed; host and port settings not used", 1
            )
            first = asyncio.run(load(service.url, total=200, concurrency=8))
            check_unsurprising(first)
            assert service.stop(timeout=15) == 0
            # Nobody serves now, but the socket is open (systemd holds it): these connections
            # wait in its backlog instead of being refused.
            waiting = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(20)]
            for client in waiting:
                client.sendall(REQUEST)
            service.start()
            for client in waiting:
                with client:
                    client.settimeout(20)
                    answer = b""
                    while chunk := client.recv(65536):
                        answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert service.stop(timeout=15) == 0
        finally:
            service.kill()


def write_config(path: Path, text: str) -> None:
    # Written aside and renamed, as an editor does: SIGHUP never reads half a file.
    aside = path.with_suffix(".new")
    aside.write_text(text)
    aside.rename(path)


def reloaded(service: Service, count: int) -> dict[str, Any]:
    assert service.process is not None
    service.process.send_signal(signal.SIGHUP)
    return service.wait_for_message("reload done", count)


def test_a_reload_replaces_every_worker_one_at_a_time_and_no_request_fails(
    short_tmp: Path,
) -> None:
    config_file = short_tmp / "tracking.toml"
    write_config(config_file, "access_log = true\n")
    service = Service(short_tmp, 2, "--config", str(config_file))
    try:
        service.start()
        allocators = service.child_pids("allocator")
        first = {name: service.child_pids(name) for name in ("worker-1", "worker-2")}

        async def run() -> Outcome:
            stop = asyncio.Event()
            outcome = Outcome()
            traffic = asyncio.create_task(
                load(service.url, 10**9, concurrency=32, stop=stop, outcome=outcome)
            )
            await until(lambda: len(outcome.numbers) > 500)
            # reserve_step belongs to the allocator: logged as needing a restart, not applied.
            write_config(config_file, "access_log = false\nreserve_step = 123456\n")
            await asyncio.to_thread(reloaded, service, 1)
            count = len(outcome.numbers)
            await until(lambda: len(outcome.numbers) > count + 500)
            await asyncio.to_thread(reloaded, service, 2)
            count = len(outcome.numbers)
            await until(lambda: len(outcome.numbers) > count + 500)
            stop.set()
            await traffic
            return outcome

        outcome = asyncio.run(run())
        check_unsurprising(outcome)
        assert outcome.unavailable == 0
        assert len(set(outcome.numbers)) == len(outcome.numbers)
        # Each reload started a new worker-N, and the old one drained and exited 0.
        for name, pids in first.items():
            assert len(service.child_pids(name)) == len(pids) + 2
        drained = [x for x in service.log_lines() if x.get("message") == "worker drained"]
        assert sorted(x["tracking.child_pid"] for x in drained) == sorted(
            pid for name in first for pid in service.child_pids(name)[:2]
        )
        assert {x["process.exit_code"] for x in drained} == {0}
        assert service.child_pids("allocator") == allocators  # never replaced by a reload
        warning = service.wait_for_message(
            "reload: these settings need a restart; they keep their running values", 1
        )
        assert warning["tracking.reload.needs_restart"] == ["reserve_step"]
        # access_log = false reached the new workers: no access line from them.
        newest = {service.child_pids(name)[-1] for name in first}
        assert not [x for x in service.access_lines() if x["process.pid"] in newest]
        assert service.stop(timeout=15) == 0
    finally:
        service.kill()


def test_a_reload_with_a_broken_configuration_changes_nothing(short_tmp: Path) -> None:
    config_file = short_tmp / "tracking.toml"
    write_config(config_file, "access_log = true\n")
    service = Service(short_tmp, 2, "--config", str(config_file))
    try:
        service.start()
        workers = service.child_pids("worker-1") + service.child_pids("worker-2")
        for broken in ("access_log = \n", "no_such_setting = 1\n"):
            write_config(config_file, broken)
            assert service.process is not None
            service.process.send_signal(signal.SIGHUP)
            refused = service.wait_for_message(
                "reload refused: the configuration does not load; nothing changed",
                1 + (broken != "access_log = \n"),
            )
            assert refused["log.level"] == "error"
        outcome = asyncio.run(load(service.url, total=200, concurrency=8))
        check_unsurprising(outcome)
        assert service.child_pids("worker-1") + service.child_pids("worker-2") == workers
        assert service.stop(timeout=15) == 0
    finally:
        service.kill()


PATH = f"/next-tracking-number?{urllib.parse.urlencode(CANONICAL_QUERY)}"


def reloaded_and_draining(service: Service, count: int) -> None:
    """A reload, once the workers it replaces have begun to drain (every answer they give
    from then on closes its connection)."""
    old = [service.child_pids(f"worker-{n}")[-1] for n in range(1, service.workers + 1)]
    reloaded(service, count)
    asyncio.run(until(lambda: all(drain_logged(service, pid) for pid in old)))


class PooledClient:
    """Keep-alive connections reused as Python's http.client reuses them: without checking
    that the server still holds them first (as many Java and Go clients do too). A reset is
    recorded as a failure, never sent again."""

    def __init__(self, port: int, size: int) -> None:
        self.connections = [
            http.client.HTTPConnection("127.0.0.1", port, timeout=20) for _ in range(size)
        ]
        self.answers: list[tuple[int, dict[str, Any]]] = []  # status, body
        self.failures: list[str] = []

    def use_each(self) -> list[bool]:
        """One request on every connection; for each answer, whether it closed its connection
        (``Connection: close``, as http.client reads it)."""
        closed = []
        for connection in self.connections:
            try:
                connection.request("GET", PATH)
                response = connection.getresponse()
                body = json.loads(response.read())
            except (http.client.HTTPException, ConnectionError) as exc:
                self.failures.append(repr(exc))
                connection.close()
                continue
            self.answers.append((response.status, body))
            closed.append(response.will_close)
        return closed

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


def test_a_reload_fails_no_request_of_a_client_that_reuses_idle_connections_unchecked(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 2)
    client: PooledClient | None = None
    try:
        service.start()
        client = PooledClient(service.port, 8)
        client.use_each()
        reloads = 4
        after_reloads: list[list[bool]] = []  # whether each answer closed its connection
        for reload in range(1, reloads + 1):
            # Every connection is idle, kept alive by a worker that the reload replaces.
            reloaded_and_draining(service, reload)
            # Reused at once, as a busy client does: the draining worker answers, and closes.
            after_reloads.append(client.use_each())
            # Connected again (to the new workers), and idle until the next reload.
            after_reloads.append(client.use_each())
        assert client.failures == [], f"{len(client.failures)} failed: {client.failures[:2]}"
        assert after_reloads == [[True] * 8, [False] * 8] * reloads
        assert len(client.answers) == 8 * (1 + 2 * reloads)
        assert {status for status, _ in client.answers} == {200}
        assert all(re.match(NUMBER_PATTERN, body["tracking_number"]) for _, body in client.answers)
        # Each old worker drained once its connections were closed, and exited 0.
        service.wait_for_message("worker drained", 2 * reloads)
        assert {
            x["process.exit_code"]
            for x in service.log_lines()
            if x.get("message") == "worker drained"
        } == {0}
        client.close()
        assert service.stop(timeout=15) == 0
    finally:
        if client is not None:
            client.close()
        service.kill()


@pytest.mark.parametrize(
    "settings",
    [
        # Closed at the end of the drain's window: shutdown_timeout - lease_timeout.
        ("--shutdown-timeout", "3", "--lease-timeout", "1"),
        # Closed at keepalive_timeout, as always, when that comes first (60 s would outlast
        # the test's waits).
        ("--shutdown-timeout", "60", "--keepalive-timeout", "1"),
    ],
    ids=["drain-window", "keepalive-timeout"],
)
def test_a_connection_idle_through_a_drain_is_closed_and_the_worker_exits_0(
    short_tmp: Path, settings: tuple[str, ...]
) -> None:
    service = Service(short_tmp, 1, *settings)
    client: PooledClient | None = None
    try:
        service.start()
        (old,) = service.child_pids("worker-1")
        client = PooledClient(service.port, 1)
        assert client.use_each() == [False]
        reloaded(service, 1)
        drained = service.wait_for_message("worker drained", 1)
        assert (drained["tracking.child_pid"], drained["process.exit_code"]) == (old, 0)
        # The server closed it: a client that checks before reuse sees the end of the stream.
        sock = client.connections[0].sock
        assert sock is not None
        sock.settimeout(20)
        assert sock.recv(1) == b""
        client.close()
        assert service.stop(timeout=15) == 0
    finally:
        if client is not None:
            client.close()
        service.kill()
