"""Two hosts, one PostgreSQL: two complete services share one counter.

Each "host" is a real ``run.py`` with its own port, state directory and allocator, 2 workers,
and the same ``postgresql://`` store. Whatever happens to one allocator or to the database,
no number is ever issued twice, by one host or across the two.

Every issued number is decoded back to its counter (the key is in the database), so the tests
can also check that both hosts really drew from the shared counter in turn, and that every
counter lies below the durable mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.system.conftest import Outcome, PostgresServer, Service, counters_of, free_port, load
from tests.system.test_run import assert_valid
from tests.system.test_s10 import s10_query, series_counters

# Small, so that the hosts' reservations interleave many times in a few seconds of load.
RESERVE_STEP = 2000
# Long enough for the store's reconnection back-off and the allocator's retry, with room.
RECOVERY_TIMEOUT = 30.0


class SharedStore:
    """One database that both hosts use as their store."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetchval(self, query: str) -> object:
        connection = await asyncpg.connect(self.url, timeout=10)
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    async def mark(self) -> int:
        mark = await self.fetchval("SELECT reserved FROM tracking_counter")
        assert isinstance(mark, int)
        return mark

    async def counters(self, numbers: list[str]) -> list[int]:
        """The counter behind each number, which must lie below the mark stored now."""
        key = await self.fetchval("SELECT key FROM tracking_counter")
        assert isinstance(key, bytes)
        return await asyncio.to_thread(counters_of, key, numbers, await self.mark())


@pytest.fixture
def shared(server: PostgresServer) -> Iterator[SharedStore]:
    name = asyncio.run(server.create_database())
    yield SharedStore(server.database_url(name))
    asyncio.run(server.drop_database(name))


@contextlib.contextmanager
def two_hosts(short_tmp: Path, url: str, *extra: str) -> Iterator[tuple[Service, Service]]:
    """Two complete services on the store ``url`` (with ``extra`` flags), started; killed on
    the way out."""
    flags = ["--store", url, "--reserve-step", str(RESERVE_STEP), "--no-access-log", *extra]
    services = []
    for name in ("a", "b"):
        state_dir = short_tmp / name
        state_dir.mkdir(mode=0o700)
        services.append(Service(state_dir, 2, *flags))
    try:
        for service in services:
            service.start()
        yield services[0], services[1]
    finally:
        for service in services:
            service.kill()


@pytest.fixture
def hosts(short_tmp: Path, shared: SharedStore) -> Iterator[tuple[Service, Service]]:
    with two_hosts(short_tmp, shared.url) as pair:
        yield pair


class Traffic:
    """Concurrent load on both hosts until stopped; ``outcomes`` fill in as answers arrive."""

    def __init__(self, hosts: tuple[Service, Service], concurrency: int = 24) -> None:
        self._stop = asyncio.Event()
        self.outcomes = (Outcome(), Outcome())
        self._tasks = [
            asyncio.create_task(load(host.url, 10**9, concurrency, self._stop, outcome))
            for host, outcome in zip(hosts, self.outcomes, strict=True)
        ]

    async def stop(self) -> tuple[Outcome, Outcome]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes


async def until_issued_from(shared: SharedStore, mark: int, outcomes: tuple[Outcome, ...]) -> None:
    """Return once every host has issued a number from a counter at or above ``mark``."""
    async with asyncio.timeout(RECOVERY_TIMEOUT):
        for outcome in outcomes:
            # Polling: recovery shows only in the numbers the hosts hand out.
            while max(await shared.counters(outcome.numbers[-100:]), default=-1) < mark:  # noqa: ASYNC110
                await asyncio.sleep(0.2)


def check_no_duplicates(first: list[str], second: list[str]) -> None:
    assert len(set(first)) == len(first), "host A issued a number twice"
    assert len(set(second)) == len(second), "host B issued a number twice"
    assert set(first).isdisjoint(second), "the two hosts issued the same number"
    assert_valid(first)
    assert_valid(second)


def check_clean(outcome: Outcome) -> None:
    # Every answer was a number or a JSON 503 with Retry-After, and no connection was dropped.
    assert outcome.other == []
    assert outcome.resets == 0, outcome.reset_errors[:3]


def report(label: str, first: Outcome, second: Outcome, **extra: object) -> None:
    details = "".join(f" {name}={value}" for name, value in extra.items())
    print(
        f"\n{label}: host A numbers={len(first.numbers)} 503s={first.unavailable} "
        f"resets={first.resets}; host B numbers={len(second.numbers)} "
        f"503s={second.unavailable} resets={second.resets}{details}"
    )


def test_two_hosts_under_concurrent_load_never_issue_the_same_number(
    hosts: tuple[Service, Service], shared: SharedStore
) -> None:
    async def run() -> tuple[Outcome, Outcome, list[int], list[int], int]:
        first, second = await asyncio.gather(*(load(h.url, 8_000, 24) for h in hosts))
        return (
            first,
            second,
            await shared.counters(first.numbers),
            await shared.counters(second.numbers),
            await shared.mark(),
        )

    first, second, counters_a, counters_b, mark = asyncio.run(run())
    report("two hosts", first, second, mark=mark)
    for outcome in (first, second):
        check_clean(outcome)
        assert outcome.unavailable == 0
        assert len(outcome.numbers) == 8_000
    check_no_duplicates(first.numbers, second.numbers)
    # Both drew from the shared counter in turn, not one after the other…
    assert min(counters_a) < max(counters_b)
    assert min(counters_b) < max(counters_a)
    # …and only below what the database holds as reserved.
    assert max(counters_a + counters_b) < mark
    for host in hosts:
        assert host.stop() == 0


def test_a_sigkilled_allocator_on_one_host_never_makes_a_duplicate(
    hosts: tuple[Service, Service], shared: SharedStore
) -> None:
    host_a = hosts[0]

    async def run() -> tuple[Outcome, Outcome]:
        traffic = Traffic(hosts)
        await asyncio.sleep(1.0)
        (allocator_pid,) = host_a.child_pids("allocator")
        os.kill(allocator_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        # Polling: the restart shows only in the log file.
        while len(host_a.child_pids("allocator")) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        return await traffic.stop()

    first, second = asyncio.run(run())
    report("SIGKILL host A's allocator", first, second)
    assert len(host_a.child_pids("allocator")) == 2, host_a.log()
    for outcome in (first, second):
        check_clean(outcome)
        assert len(outcome.numbers) > 500
    check_no_duplicates(first.numbers, second.numbers)

    # Host A issues again after its allocator came back, still unique across both hosts.
    after = asyncio.run(load(host_a.url, 2_000))
    assert len(after.numbers) == 2_000
    check_no_duplicates(first.numbers + after.numbers, second.numbers)
    for host in hosts:
        assert host.stop() == 0


def test_a_postgresql_restart_costs_at_most_503s_and_both_hosts_recover_by_themselves(
    hosts: tuple[Service, Service], shared: SharedStore
) -> None:
    server = PostgresServer.from_environment(restartable=True)

    async def run() -> tuple[Outcome, Outcome, float, int, int]:
        traffic = Traffic(hosts)
        await asyncio.sleep(1.0)
        began = time.monotonic()
        await asyncio.to_thread(server.restart)
        restart_seconds = time.monotonic() - began
        # Anything at or above this mark was reserved after the restart: a host that issues
        # such a number has reconnected and reserved again, on its own.
        mark_after_restart = await shared.mark()
        await until_issued_from(shared, mark_after_restart, traffic.outcomes)
        first, second = await traffic.stop()
        return first, second, restart_seconds, mark_after_restart, await shared.mark()

    first, second, restart_seconds, mark_after_restart, final_mark = asyncio.run(run())
    failures = [
        sum(line.get("message") == "reservation failed" for line in host.log_lines())
        for host in hosts
    ]
    report(
        "PostgreSQL restart",
        first,
        second,
        restart_s=f"{restart_seconds:.2f}",
        reservation_failures=failures,
    )
    for outcome in (first, second):
        check_clean(outcome)
    check_no_duplicates(first.numbers, second.numbers)
    counters = asyncio.run(shared.counters(first.numbers + second.numbers))
    assert max(counters) < final_mark
    assert final_mark > mark_after_restart

    # Recovered for good: a fresh batch on each host is served in full.
    for host in hosts:
        after = asyncio.run(load(host.url, 1_000))
        assert (len(after.numbers), after.unavailable) == (1_000, 0)
    for host in hosts:
        assert host.stop() == 0


def test_a_database_outage_longer_than_the_buffers_gives_json_503s_then_recovers(
    hosts: tuple[Service, Service], shared: SharedStore
) -> None:
    """Workers' blocks, then the allocators' durable remainders, run dry; then 503s, never a
    guessed number; and when the database is back, numbers flow again with nobody's help."""
    server = PostgresServer.from_environment(restartable=True)

    async def run() -> tuple[Outcome, Outcome, float, float]:
        traffic = Traffic(hosts)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.stop)
        began = time.monotonic()
        try:
            async with asyncio.timeout(RECOVERY_TIMEOUT):
                # Polling: the outage shows only in the answers.
                while not all(o.unavailable for o in traffic.outcomes):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            dry_after = time.monotonic() - began
        finally:
            await asyncio.to_thread(server.start)
        down_for = time.monotonic() - began
        # Numbers from at or above this mark come from reservations made after the outage.
        await until_issued_from(shared, await shared.mark(), traffic.outcomes)
        await asyncio.sleep(0.5)
        first, second = await traffic.stop()
        return first, second, dry_after, down_for

    first, second, dry_after, down_for = asyncio.run(run())
    failures = [
        sum(line.get("message") == "reservation failed" for line in host.log_lines())
        for host in hosts
    ]
    report(
        "PostgreSQL down",
        first,
        second,
        dry_after_s=f"{dry_after:.2f}",
        down_s=f"{down_for:.2f}",
        reservation_failures=failures,
    )
    for outcome in (first, second):
        check_clean(outcome)
        assert outcome.unavailable > 0
    assert all(failures), "both allocators saw the store fail"
    check_no_duplicates(first.numbers, second.numbers)
    counters = asyncio.run(shared.counters(first.numbers + second.numbers))
    assert max(counters) < asyncio.run(shared.mark())

    for host in hosts:
        after = asyncio.run(load(host.url, 1_000))
        assert (len(after.numbers), after.unavailable) == (1_000, 0)
    for host in hosts:
        assert host.stop() == 0


def test_a_password_in_the_store_url_never_reaches_the_log(short_tmp: Path) -> None:
    """The settings logged at start and the store's errors show the URL redacted."""
    secret = "hunter2-do-not-log"
    url = f"postgresql://tracking:{secret}@/tracking?host={short_tmp}/no-server&password={secret}"
    service = Service(short_tmp, 1, "--store", url)
    try:
        with pytest.raises(RuntimeError):  # no database there: the allocator cannot start
            service.start(timeout=30)
    finally:
        service.kill()
    log = service.log()
    assert "cannot connect to postgresql://tracking:***@/tracking" in log
    assert secret not in log


# --- failover to a synchronous standby ---------------------------------------------------------

FAILOVER_PASSWORD = "failover-test-only"


class PrimaryAndStandby:
    """A PostgreSQL primary and a synchronous standby copied from it by ``pg_basebackup``, each
    in a temporary directory, listening on a loopback port (and a Unix socket for set-up).

    Run as the ``postgres`` user under root (PostgreSQL refuses root), else as ourselves. The
    role ``tracking`` logs in with a password over TCP: the hosts use libpq's multi-host URL
    with a port per host, as docs/scaling.md tells operators to.
    """

    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        # Short: the socket path (ROOT/.s.PGSQL.PORT) must fit in 107 bytes.
        self.root = tempfile.mkdtemp(prefix="tn-fo.", dir="/tmp")
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.primary = os.path.join(self.root, "primary")
        self.standby = os.path.join(self.root, "standby")
        self.primary_port, self.standby_port = free_port(), free_port()
        self.url = (
            f"postgresql://tracking:{FAILOVER_PASSWORD}@127.0.0.1:{self.primary_port},"
            f"127.0.0.1:{self.standby_port}/tracking?target_session_attrs=read-write"
        )

    def run(self, tool: str, *args: str) -> None:
        command = [*self.as_owner, os.path.join(self.bin_dir, tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.stdout}{done.stderr}"

    def pg_ctl(self, data: str, *args: str) -> None:
        self.run("pg_ctl", "-D", data, "-l", data + ".log", "-w", "-t", "60", *args)

    def admin_url(self, port: int) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}&port={port}"

    def start(self) -> None:
        self.run("initdb", "-D", self.primary, "-U", "postgres", "-E", "UTF8",
                 "--auth-local=trust", "--no-instructions")  # fmt: skip
        with open(os.path.join(self.primary, "pg_hba.conf"), "w") as hba:
            hba.write(
                "local all postgres trust\n"
                "local replication postgres trust\n"
                "host all tracking 127.0.0.1/32 scram-sha-256\n"
            )
        with open(os.path.join(self.primary, "postgresql.conf"), "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.primary_port}\n"
                f"unix_socket_directories = '{self.root}'\nunix_socket_permissions = 0700\n"
                "fsync = on\nsynchronous_commit = on\n"
            )
        self.pg_ctl(self.primary, "start")
        asyncio.run(self._create_role_and_database())
        self.run("pg_basebackup", "-D", self.standby, "-h", self.root, "-U", "postgres",
                 "-p", str(self.primary_port), "-X", "stream", "-c", "fast")  # fmt: skip
        with open(os.path.join(self.standby, "postgresql.conf"), "a") as conf:
            conf.write(
                f"\nport = {self.standby_port}\n"
                f"primary_conninfo = 'host={self.root} port={self.primary_port} user=postgres "
                "application_name=standby'\n"
                # Once promoted it stands alone, as an operator would run it until a new standby
                # is built: waiting for a standby that is gone would block every commit.
                "synchronous_standby_names = ''\n"
            )
        open(os.path.join(self.standby, "standby.signal"), "w").close()
        if self.as_owner:
            shutil.chown(os.path.join(self.standby, "standby.signal"), "postgres", "postgres")
        self.pg_ctl(self.standby, "start")
        asyncio.run(self._make_the_standby_synchronous())

    async def _create_role_and_database(self) -> None:
        admin = await asyncpg.connect(self.admin_url(self.primary_port), timeout=10)
        try:
            await admin.execute(f"CREATE ROLE tracking LOGIN PASSWORD '{FAILOVER_PASSWORD}'")
            await admin.execute("CREATE DATABASE tracking OWNER tracking")
        finally:
            await admin.close()

    async def _make_the_standby_synchronous(self) -> None:
        admin = await asyncpg.connect(self.admin_url(self.primary_port), timeout=10)
        try:
            # Only now: before the standby runs, every commit would wait for it. From here on a
            # commit returns once the standby has flushed it, so the promoted standby holds at
            # least every mark a host granted from.
            await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
            await admin.execute("SELECT pg_reload_conf()")
            async with asyncio.timeout(60):
                # Polling: replication state shows only in pg_stat_replication.
                while await self._sync_state(admin) != "sync":  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()

    @staticmethod
    async def _sync_state(admin: asyncpg.Connection) -> str | None:
        return await admin.fetchval(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
        )

    def crash_primary(self) -> None:
        """Like a power cut: no shutdown checkpoint, every connection dropped."""
        self.pg_ctl(self.primary, "stop", "-m", "immediate")

    def promote_standby(self) -> None:
        self.pg_ctl(self.standby, "promote")

    def remove(self) -> None:
        for data in (self.standby, self.primary):
            if os.path.exists(os.path.join(data, "postmaster.pid")):
                with contextlib.suppress(AssertionError):
                    self.pg_ctl(data, "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def primary_and_standby() -> Iterator[PrimaryAndStandby]:
    server = PostgresServer.from_environment()  # skips (fails under CI) without PostgreSQL
    cluster = PrimaryAndStandby(server.bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def test_a_crashed_primary_and_a_promoted_standby_make_no_duplicate_and_both_hosts_recover(
    short_tmp: Path, primary_and_standby: PrimaryAndStandby
) -> None:
    cluster = primary_and_standby
    shared = SharedStore(cluster.url)

    async def run(hosts: tuple[Service, Service]) -> tuple[Outcome, Outcome, int, int]:
        traffic = Traffic(hosts)
        async with asyncio.timeout(RECOVERY_TIMEOUT):
            # Polling: the load shows only in the answers.
            while min(len(o.numbers) for o in traffic.outcomes) < 500:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await asyncio.to_thread(cluster.crash_primary)
        await asyncio.to_thread(cluster.promote_standby)
        # Read through the hosts' own URL: only the promoted standby takes it now. Anything at
        # or above this mark was reserved after the promotion.
        mark_after_promotion = await shared.mark()
        await until_issued_from(shared, mark_after_promotion, traffic.outcomes)
        first, second = await traffic.stop()
        return first, second, mark_after_promotion, await shared.mark()

    with two_hosts(short_tmp, cluster.url) as hosts:
        first, second, mark_after_promotion, final_mark = asyncio.run(run(hosts))
        report("failover", first, second, mark_after_promotion=mark_after_promotion)
        for outcome in (first, second):
            check_clean(outcome)
        check_no_duplicates(first.numbers, second.numbers)
        counters = asyncio.run(shared.counters(first.numbers + second.numbers))
        assert max(counters) < final_mark

        # Recovered for good, with nobody's help: a fresh batch on each host is served in full,
        # still unique across both hosts and everything before.
        after = [asyncio.run(load(host.url, 1_000)) for host in hosts]
        for outcome in after:
            assert (len(outcome.numbers), outcome.unavailable) == (1_000, 0)
        check_no_duplicates(first.numbers + after[0].numbers, second.numbers + after[1].numbers)
        for host in hosts:
            assert host.stop() == 0
        for host in hosts:
            assert FAILOVER_PASSWORD not in host.log()


def test_two_hosts_share_each_s10_series_and_never_issue_the_same_number(
    short_tmp: Path, shared: SharedStore
) -> None:
    """Both hosts issue from the same S10 series at once, one of them losing its allocator to
    SIGKILL meanwhile: one counter per series in the shared store, no number twice."""
    series = (("RR", "GB"), ("EE", "FR"))
    queries = [s10_query(indicator, country) for indicator, country in series]

    async def run(hosts: tuple[Service, Service]) -> list[Outcome]:
        stop = asyncio.Event()
        outcomes = [Outcome() for _ in range(2 * len(queries))]
        tasks = [
            asyncio.create_task(load(host.url, 10**9, 8, stop, outcome, params=query))
            for (host, query), outcome in zip(
                itertools.product(hosts, queries), outcomes, strict=True
            )
        ]
        async with asyncio.timeout(RECOVERY_TIMEOUT):
            while min(len(o.numbers) for o in outcomes) < 200:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        (allocator_pid,) = hosts[0].child_pids("allocator")
        os.kill(allocator_pid, signal.SIGKILL)
        before = [len(o.numbers) for o in outcomes]
        async with asyncio.timeout(RECOVERY_TIMEOUT):
            while any(  # noqa: ASYNC110
                len(o.numbers) < n + 200 for o, n in zip(outcomes, before, strict=True)
            ):
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        return outcomes

    # A series' default step (1,000) with the hosts' small reserve_step: they interleave.
    with two_hosts(short_tmp, shared.url) as hosts:
        outcomes = asyncio.run(run(hosts))
        assert len(hosts[0].child_pids("allocator")) == 2
    for outcome in outcomes:
        check_clean(outcome)
    numbers = [number for outcome in outcomes for number in outcome.numbers]
    assert len(set(numbers)) == len(numbers), "an S10 number was issued twice"
    key = asyncio.run(shared.fetchval("SELECT key FROM tracking_counter"))
    marks = asyncio.run(series_marks(shared.url))
    assert isinstance(key, bytes)
    counters = series_counters(key, marks, numbers)
    for name, values in counters.items():
        assert len(set(values)) == len(values), name
    # Each host issued from each series, from one shared counter.
    for outcome in outcomes:
        assert len(outcome.numbers) >= 400


async def series_marks(url: str) -> dict[str, tuple[str, int, int]]:
    """Each series' (order, size, mark) in the shared store."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows = await connection.fetch("SELECT name, ordering, size, reserved FROM tracking_series")
    finally:
        await connection.close()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}
