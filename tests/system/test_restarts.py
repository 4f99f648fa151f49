"""Stops, restarts and reloads that no client notices: drains, socket activation, SIGHUP.

The same behaviours are checked under a real systemd by .ci/systemd.sh (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import Service

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
            # One connection per request; the worker holds a block or two of 16 numbers at
            # start, so with the allocator stopped most of these wait for a lease, in flight.
            connector = aiohttp.TCPConnector(limit=len(answers))
            async with aiohttp.ClientSession(service.url, connector=connector) as session:
                os.kill(allocator_pid, signal.SIGSTOP)
                asking = [asyncio.create_task(ask(session, a)) for a in answers]
                await until(lambda: sum(a.status == 200 for a in answers) >= 16)
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
