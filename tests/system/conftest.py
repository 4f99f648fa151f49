"""System tests: the real run.py as a subprocess, spoken to over real HTTP, and the real
PostgreSQL server that several of them share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import asyncpg
import pytest

from allocator.counter import NEW_STORE_SCHEME
from service.numbers import NumberFormatter, permutation
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
        self.prefix: list[str] = []  # run.py is started through this command (faketime …)
        self.pass_fds: tuple[int, ...] = ()  # file descriptors run.py inherits
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        command = [
            *self.prefix,
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
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=log, env=env, pass_fds=self.pass_fds
            )
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

    def wait_for_child(self, name: str, starts: int, timeout: float = 20.0) -> int:
        """The pid of the ``starts``-th start of a child, once the supervisor has logged it."""
        deadline = time.monotonic() + timeout
        while len(pids := self.child_pids(name)) < starts:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not started {starts} times:\n{self.log()}")
            time.sleep(0.05)
        return pids[starts - 1]

    def wait_for_message(self, message: str, count: int, timeout: float = 20.0) -> dict[str, Any]:
        """The ``count``-th log line whose message is ``message``, once it is there."""
        deadline = time.monotonic() + timeout
        while len(found := [x for x in self.log_lines() if x.get("message") == message]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {message!r} in the log:\n{self.log()}")
            time.sleep(0.05)
        return found[count - 1]

    def access_lines(self, start: int = 0) -> list[dict[str, Any]]:
        """The access log (one line per request, with the answering worker's pid)."""
        return [line for line in self.log_lines(start) if line.get("log.logger") == "access"]


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
    *,
    fresh_connections: bool = False,
    retry_resets: bool = True,
    params: dict[str, str] = CANONICAL_QUERY,
) -> Outcome:
    """``total`` canonical requests from ``concurrency`` clients (or until ``stop`` is set).

    Answers are added to ``outcome`` as they arrive, when one is given to watch. With
    ``fresh_connections`` every request has a connection of its own, so that the workers share
    the requests rather than each keeping the connections it happened to accept. Without
    ``retry_resets``, a GET whose connection is reset is counted as a reset, rather than sent
    again once by aiohttp (RFC 9112's retry of idempotent requests), which hides it. ``params``:
    the query, the canonical one by default.
    """
    outcome = Outcome() if outcome is None else outcome
    remaining = total
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=fresh_connections)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        if not retry_resets:
            session._retry_connection = False  # no public switch for it (aiohttp 3.14)

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and not (stop and stop.is_set()):
                remaining -= 1
                try:
                    async with session.get("/next-tracking-number", params=params) as r:
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


def sqlite_state(path: Path) -> tuple[bytes, int]:
    """The permutation key and the durable reservation mark in a SQLite store, read directly."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        key, mark = db.execute("SELECT key, reserved FROM counter").fetchone()
    return bytes(key), mark


def counters_of(key: bytes, numbers: Sequence[str], mark: int) -> list[int]:
    """The counter behind each number, which must lie below ``mark``.

    Found forwards: every counter below ``mark`` is permuted, as the service did to issue it,
    until each number's serial has turned up. No inverse of the permutation is involved, so a
    wrong inverse cannot place a counter below the mark that is not. A number that no counter
    below ``mark`` gives fails the test.
    """
    wanted = {int(number[4:15], 36) for number in numbers}
    found: dict[int, int] = {}
    permute = permutation(key, NEW_STORE_SCHEME)  # the service's stores are new: the new scheme
    for start in range(0, mark, 2**16):
        # A run at a time, as the worker computes them (FF1 costs far less so).
        for counter, serial in enumerate(permute.serials(start, min(start + 2**16, mark)), start):
            if serial in wanted:
                found[serial] = counter
        if len(found) == len(wanted):
            break
    strays = [number for number in numbers if int(number[4:15], 36) not in found]
    assert not strays, f"{len(strays)} numbers from no counter below {mark}, e.g. {strays[:3]}"
    counters = [found[int(number[4:15], 36)] for number in numbers]
    # The serial is the counter's (found above): the whole number (route, check character)
    # must be too.
    formatter = NumberFormatter(key, NEW_STORE_SCHEME)
    for number in numbers:
        assert formatter.format_serial(number[:2], number[2:4], int(number[4:15], 36)) == number
    return counters


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def check_unsurprising(outcome: Outcome) -> None:
    """Every answer was a number or a JSON 503 with Retry-After; no reset, nothing else."""
    assert outcome.other == [], outcome.other[:3]
    assert outcome.resets == 0, outcome.reset_errors[:3]


def unavailable_here(what: str, hint: str) -> NoReturn:
    """A tool this test needs is missing: a skip on a developer's machine, a failure in CI."""
    if running_in_ci():
        pytest.fail(f"CI is set but {what}: {hint}", pytrace=False)
    pytest.skip(f"{what} ({hint})")


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
