"""System tests: the real run.py as a subprocess, spoken to over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One ``run.py`` with its own port and state directory; its JSON log goes to a file."""

    def __init__(self, state_dir: Path, workers: int = 2, *extra: str) -> None:
        self.state_dir = state_dir
        self.workers = workers
        self.extra = extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        command = [
            sys.executable,
            "run.py",
            "--config", "/dev/null",
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--state-dir", str(self.state_dir),
            *self.extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_")}
        with open(self.log_path, "ab") as log:
            started_at = log.tell()
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"run.py exited with {self.process.returncode}:\n{self.log()}")
            if any(line.get("message") == "service ready" for line in self.log_lines(started_at)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"run.py did not become ready:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, and the exit status (raises if it takes longer than ``timeout``)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self, start: int = 0) -> str:
        """The log from byte ``start`` on (the file grows across restarts)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")

    def log_lines(self, start: int = 0) -> list[dict[str, Any]]:
        lines = []
        for line in self.log(start).splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"unparsed": line})
        return lines

    def child_pids(self, name: str) -> list[int]:
        """Every pid the supervisor started for a child (``allocator``, ``worker-1``…)."""
        return [
            line["child.pid"]
            for line in self.log_lines()
            if line.get("message") == "child started" and line.get("child") == name
        ]


@pytest.fixture
def service(short_tmp: Path) -> Iterator[Service]:
    running = Service(short_tmp)
    yield running
    running.kill()


class Outcome:
    """What a load run got back: numbers from 200s, and everything else, counted."""

    def __init__(self) -> None:
        self.numbers: list[str] = []
        self.unavailable = 0
        self.resets = 0
        self.reset_errors: list[str] = []
        self.other: list[tuple[int, str]] = []


async def load(
    url: str, total: int, concurrency: int = 64, stop: asyncio.Event | None = None
) -> Outcome:
    """``total`` canonical requests from ``concurrency`` clients (or until ``stop`` is set)."""
    outcome = Outcome()
    remaining = total
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and not (stop and stop.is_set()):
                remaining -= 1
                try:
                    async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as r:
                        body = await r.read()
                        if r.status == 200:
                            outcome.numbers.append(json.loads(body)["tracking_number"])
                        elif (
                            r.status == 503
                            and r.headers.get("Retry-After")
                            and r.content_type == "application/json"
                            and "error" in json.loads(body)
                        ):
                            outcome.unavailable += 1
                        else:
                            outcome.other.append((r.status, body.decode(errors="replace")))
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                    outcome.resets += 1
                    outcome.reset_errors.append(repr(exc))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcome
