"""System tests: the real run.py as a subprocess, spoken to over real HTTP, and the real
PostgreSQL server that several of them share."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import asyncpg
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
        self.env: dict[str, str] = {}  # added to run.py's environment
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
        env.update(self.env)
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
            line["tracking.child_pid"]
            for line in self.log_lines()
            if line.get("message") == "child started" and line.get("tracking.child") == name
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
    url: str,
    total: int,
    concurrency: int = 64,
    stop: asyncio.Event | None = None,
    outcome: Outcome | None = None,
) -> Outcome:
    """``total`` canonical requests from ``concurrency`` clients (or until ``stop`` is set).

    Answers are added to ``outcome`` as they arrive, when one is given to watch.
    """
    outcome = Outcome() if outcome is None else outcome
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


# --- PostgreSQL, for the store contract tests and the two-host tests --------------------------

POSTGRES_URL_VARIABLE = "TRACKING_TEST_POSTGRES_URL"
POSTGRES_DATA_VARIABLE = "TRACKING_TEST_POSTGRES_DATA"
POSTGRES_BIN_VARIABLE = "TRACKING_TEST_POSTGRES_BIN"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_server(what: str) -> NoReturn:
    """No server to test against: a skip on a developer's machine, a failure in CI."""
    hint = "source .ci/postgres.sh to start one"
    if running_in_ci():
        pytest.fail(f"CI is set but {what}: {hint}", pytrace=False)
    pytest.skip(f"{what} ({hint})")


class PostgresServer:
    """The PostgreSQL server that ``.ci/postgres.sh`` started (or any the variables name).

    The URL must name its database in the path (``postgresql://…/tracking?host=…``); its
    role creates and drops one database per test.
    """

    def __init__(self, url: str, data_dir: str, bin_dir: str) -> None:
        self.url = url
        self.data_dir = data_dir
        self.bin_dir = bin_dir

    @classmethod
    def from_environment(cls, *, restartable: bool = False) -> PostgresServer:
        """The configured server; skips (fails under CI) when there is none.

        ``restartable``: the test also needs the data directory, to restart the server.
        """
        url = os.environ.get(POSTGRES_URL_VARIABLE, "")
        if not url:
            missing_server(f"{POSTGRES_URL_VARIABLE} is not set")
        data_dir = os.environ.get(POSTGRES_DATA_VARIABLE, "")
        if restartable and not os.path.isdir(data_dir):
            missing_server(f"{POSTGRES_DATA_VARIABLE} does not name a data directory")
        bin_dir = os.environ.get(POSTGRES_BIN_VARIABLE, "/usr/lib/postgresql/15/bin")
        return cls(url, data_dir, bin_dir)

    def database_url(self, name: str, user: str | None = None) -> str:
        """The server's URL with ``name`` as its database (and ``user``, ``USER:PASSWORD``)."""
        scheme, sep, rest = self.url.partition("://")
        path = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        query = min((i for i in (rest.find(c, path) for c in "?#") if i >= 0), default=len(rest))
        authority = rest[:path]
        if user is not None:
            authority = f"{user}@{authority.rpartition('@')[2]}"
        return f"{scheme}{sep}{authority}/{name}{rest[query:]}"

    async def admin(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self.url, timeout=10)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Configured but unreachable is a broken set-up, never a reason to skip.
            pytest.fail(f"cannot reach {POSTGRES_URL_VARIABLE}: {exc}", pytrace=False)

    async def create_database(self) -> str:
        """A new empty database; its name (``database_url`` makes its URL)."""
        name = f"tn_{uuid.uuid4().hex[:12]}"
        admin = await self.admin()
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await self.admin()
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on the data directory as its owner (PostgreSQL refuses to run as root)."""
        command = [os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data_dir, *args]
        owner = pwd.getpwuid(os.stat(self.data_dir).st_uid).pw_name
        if os.geteuid() == 0 and owner != "root":
            command = ["runuser", "-u", owner, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def restart(self) -> None:
        """``pg_ctl restart``: every connection is cut, and the server is back when it returns."""
        self.pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", self._log)

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", "60", "-l", self._log)

    @property
    def _log(self) -> str:
        # The server must not inherit our pipes, or pg_ctl's caller would wait for it to exit.
        return os.path.join(self.data_dir, "pg_ctl.log")
