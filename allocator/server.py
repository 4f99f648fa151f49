"""The allocator's socket server: accepts workers on a Unix socket, reads their frames, and
dispatches each request to the actor (``allocator.actor``) or to the idempotency keys.

This module is also the allocator process's entry point (``main``), the supervisor's child
target.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from allocator import protocol
from allocator.actor import Allocator
from allocator.commands import read_key_file
from allocator.counter import COUNTER_LIMIT
from allocator.errors import AllocatorError, ProtocolError, SeriesExhausted
from allocator.idempotency import IdempotencyKeys
from allocator.protocol import (
    Abandon,
    AllocatorStatus,
    Granted,
    Hello,
    Lease,
    Recall,
    Refused,
    Remember,
    Report,
    SeriesStatus,
    Status,
    StatusQuery,
    Welcome,
    WorkerCounters,
)

# Both stores are imported with this module, the allocator's entry point, rather than on their
# first use in open_store: a supervisor that imports the children's code before it forks
# (supervisor/targets.py) then restarts an allocator on the store code of its own release.
from allocator.store import open_store, postgres, sqlite  # noqa: F401
from allocator.unix_socket import OwnSocket
from config.settings import Config
from process import lifecycle, logs
from process.lifecycle import until_stop_requested
from process.logs import error_fields

log = logging.getLogger("allocator")

# A connection may have this many requests in flight; past it, we stop reading from it.
MAX_INFLIGHT_PER_CONNECTION = 16
# Idempotency requests have slots of their own, so that they never hold up a lease. Past
# this, one is refused at once rather than stop the reading (workers send no more than this).
# An Abandon takes no slot at all (see AllocatorServer._abandon).
MAX_IDEMPOTENCY_INFLIGHT_PER_CONNECTION = 16
BUSY = "too many idempotency requests in flight on this connection"
# A client that connects must say Hello within this time, or be dropped.
HELLO_TIMEOUT = 10.0
# The issue rate is averaged over this many seconds of worker reports.
RATE_WINDOW = 60.0
# The allocator checks this often that its socket file is still the one it bound. Connected
# workers do not notice a removed file, but every new connection (a reloaded or restarted
# worker, the supervisor's probe) would fail until the allocator binds it again.
SOCKET_CHECK_INTERVAL = 1.0


class AllocatorServer:
    """Serves an Allocator over a Unix socket: one task per connection, bounded in flight."""

    def __init__(
        self,
        allocator: Allocator,
        path: str,
        idempotency_ttl: float = 86400.0,
        idempotency_max_bytes: int = 1 << 30,
    ) -> None:
        self.allocator = allocator
        self.path = path
        self.idempotency = IdempotencyKeys(
            allocator.store, allocator.stats, idempotency_ttl, idempotency_max_bytes
        )
        self._server: asyncio.Server | None = None
        self._socket = OwnSocket(path)
        self._keeping_socket: asyncio.Task[None] | None = None
        # Abandons being written: they belong to the server, not to their connection.
        self._abandoning: set[asyncio.Task[None]] = set()
        self._connections: dict[asyncio.Task[None], protocol.Outbox] = {}
        self._leases_by_worker: dict[int, int] = {}  # connected workers, by pid
        self.worker_totals = WorkerCounters()
        # Numbers issued per second of the monotonic clock, over the last RATE_WINDOW seconds:
        # at most RATE_WINDOW + 1 entries, however many workers report and whoever reads it.
        self._issued: collections.deque[list[int]] = collections.deque()
        self._created = time.monotonic()  # reports can only have come in since

    async def start(self) -> None:
        await self.idempotency.measure()
        await self._listen()
        self.idempotency.start_purging()
        self._keeping_socket = asyncio.create_task(self._keep_socket())

    async def serve_until(self, stop: Coroutine[Any, Any, None]) -> None:
        """Serve until ``stop`` returns. Raises OSError if our socket file went and cannot be
        bound again (another allocator listens there): the supervisor then restarts us."""
        assert self._keeping_socket is not None, "start() first"
        stopping = asyncio.create_task(stop)
        try:
            await asyncio.wait(
                (stopping, self._keeping_socket), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if self._keeping_socket.done():
            self._keeping_socket.result()

    async def close(self) -> None:
        await self.idempotency.close()
        if self._keeping_socket is not None:
            self._keeping_socket.cancel()
            await asyncio.gather(self._keeping_socket, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        # Hang up rather than cancel: each connection's task then ends on its own.
        for outbox in self._connections.values():
            outbox.close()
        await asyncio.gather(*self._connections, return_exceptions=True)
        # Told before they hung up: heard before the store closes.
        await asyncio.gather(*self._abandoning, return_exceptions=True)
        self._socket.remove()

    async def _listen(self) -> None:
        sock = self._socket.bind()
        if self._server is not None:
            self._server.close()  # unreachable without its file; its connections go on
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def _keep_socket(self) -> None:
        """Bind the socket again whenever its file is gone (an operator's rm, a cleaner of
        the runtime directory); raises OSError when another allocator listens there."""
        while True:
            await asyncio.sleep(SOCKET_CHECK_INTERVAL)
            if not self._socket.intact:
                log.error(
                    "the allocator socket was removed or replaced; binding it again",
                    extra={"tracking.socket": self.path},
                )
                await self._listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        outbox = self._connections[task] = protocol.Outbox(writer)
        slots = asyncio.Semaphore(MAX_INFLIGHT_PER_CONNECTION)
        idempotency_slots = asyncio.Semaphore(MAX_IDEMPOTENCY_INFLIGHT_PER_CONNECTION)
        pending: set[asyncio.Task[None]] = set()
        worker: int | None = None
        try:
            first = await asyncio.wait_for(protocol.read_frame(reader), HELLO_TIMEOUT)
            if first is None:
                return  # connected and left without a word: a readiness probe
            hello = protocol.decode_request(first)
            if not isinstance(hello, Hello):
                raise ProtocolError("a connection must start with Hello")
            outbox.send(protocol.encode(self._welcome(hello.id)))
            worker = hello.pid
            self._leases_by_worker[worker] = 0
            log.info("worker connected", extra={"tracking.worker_pid": worker})
            while (payload := await protocol.read_frame(reader)) is not None:
                request = protocol.decode_request(payload)
                if isinstance(request, Lease):
                    granted = self._grant_now(request, worker)
                    if granted is not None:
                        outbox.send(protocol.encode(granted))
                        continue
                if isinstance(request, Abandon):
                    self._abandon(request)
                    continue
                if isinstance(request, Recall | Remember):
                    if idempotency_slots.locked():
                        outbox.send(protocol.encode(Refused(id=request.id, reason=BUSY)))
                        continue
                    mine = idempotency_slots
                else:
                    mine = slots
                await mine.acquire()
                answer = asyncio.create_task(self._answer(request, outbox, worker))
                pending.add(answer)
                answer.add_done_callback(pending.discard)
                answer.add_done_callback(lambda _, mine=mine: mine.release())
        except (ProtocolError, TimeoutError) as exc:
            log.warning("dropping allocator client", extra=error_fields(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for answer in pending:
                answer.cancel()
            outbox.close()  # answers of the last frames read go out first
            del self._connections[task]
            if worker is not None:
                self._leases_by_worker.pop(worker, None)

    async def _answer(
        self, request: protocol.Request, outbox: protocol.Outbox, worker: int
    ) -> None:
        response: protocol.Message
        match request:
            case Lease(id=request_id, count=count, series=""):
                response = await self._lease(request_id, count, worker)
            case Lease(id=request_id, count=count, series=series, order=order):
                response = await self._lease_series(request_id, series, order, count, worker)
            case Report(counters=counters):
                self.worker_totals.add(counters)
                self._count_issued(counters.issued)
                return  # reports are one-way
            case Recall(id=request_id, key=key, fingerprint=fingerprint):
                response = await self.idempotency.recall(request_id, key, fingerprint)
            case Remember(id=request_id, key=key, fingerprint=fingerprint, response=answer):
                response = await self.idempotency.remember(request_id, key, fingerprint, answer)
            case StatusQuery(id=request_id):
                response = Status(
                    id=request_id, allocator=self.status(), workers=self.worker_totals
                )
            case Hello(id=request_id):
                response = self._welcome(request_id)
        outbox.send(protocol.encode(response, protocol.MAX_RESPONSE_FRAME))

    def _abandon(self, request: Abandon) -> None:
        """Mark an answer abandoned, in a task of its own that takes no slot: it waits for the
        store behind every queued idempotency statement, and a lease read after it must not.

        It comes after the Remember of the same answer, whose task is older: both wait in
        arrival order for the store. It outlives its connection, so that a worker that tells
        us and exits (a reload) is still heard. One-way.
        """
        task = asyncio.create_task(self.idempotency.abandon(request.key, request.response))
        self._abandoning.add(task)
        task.add_done_callback(self._abandoning.discard)

    def _welcome(self, request_id: int) -> Welcome:
        return Welcome(id=request_id, key=self.allocator.key, scheme=self.allocator.scheme)

    def _grant_now(self, lease: Lease, worker: int) -> Granted | None:
        """The answer to a lease that holds no slot and needs no task (most: what the counter
        holds reserved covers it), or None if it must wait for the store."""
        granted = self.allocator.grant_now(lease.series, lease.count)
        if granted is None:
            return None
        start, stop, made = granted
        self._leases_by_worker[worker] = self._leases_by_worker.get(worker, 0) + 1
        if made is None:
            return Granted(id=lease.id, start=start, stop=stop)
        return Granted(id=lease.id, start=start, stop=stop, order=made.order, size=made.size)

    async def _lease(self, request_id: int, count: int, worker: int) -> Granted | Refused:
        try:
            start, stop = await self.allocator.lease(count)
        except AllocatorError as exc:
            self.allocator.stats.lease_refusals_total += 1
            log.warning("lease refused", extra=error_fields(exc))
            return Refused(id=request_id, reason=str(exc))
        self._leases_by_worker[worker] = self._leases_by_worker.get(worker, 0) + 1
        return Granted(id=request_id, start=start, stop=stop)

    async def _lease_series(
        self, request_id: int, series: str, order: str, count: int, worker: int
    ) -> Granted | Refused:
        try:
            start, stop, made = await self.allocator.lease_series(series, order, count)
        except SeriesExhausted as exc:
            self.allocator.stats.lease_refusals_total += 1
            return Refused(id=request_id, reason=str(exc), exhausted=True)
        except AllocatorError as exc:
            self.allocator.stats.lease_refusals_total += 1
            log.warning("lease refused", extra={"tracking.series": series, **error_fields(exc)})
            return Refused(id=request_id, reason=str(exc))
        self._leases_by_worker[worker] = self._leases_by_worker.get(worker, 0) + 1
        return Granted(id=request_id, start=start, stop=stop, order=made.order, size=made.size)

    def series_status(self) -> list[SeriesStatus]:
        """Every series in use: how much is used, and when it runs out at its lease rate."""
        statuses = []
        for name, reservations in sorted(self.allocator.series.items()):
            made = self.allocator.series_made[name]
            left = made.size - reservations.next
            rate = reservations.lease_rate()
            statuses.append(
                SeriesStatus(
                    name=name,
                    order=made.order,
                    size=made.size,
                    next=reservations.next,
                    reserved=reservations.reserved,
                    numbers_left=left,
                    used_ratio=reservations.next / made.size,
                    exhausted=reservations.exhausted and not reservations.available,
                    lease_rate_per_second=rate,
                    seconds_to_exhaustion=left / rate if rate > 0 else None,
                    reservations_total=reservations.reservations_total,
                    leased_numbers_total=reservations.leased_numbers_total,
                )
            )
        return statuses

    def _count_issued(self, count: int) -> None:
        second = int(time.monotonic())
        if self._issued and self._issued[-1][0] == second:
            self._issued[-1][1] += count
        else:
            self._issued.append([second, count])
        self._forget_old_issues(second)

    def _forget_old_issues(self, now: float) -> None:
        while self._issued and self._issued[0][0] < now - RATE_WINDOW:
            self._issued.popleft()

    def issue_rate(self) -> float:
        """Numbers issued per second over the last RATE_WINDOW seconds, from worker reports."""
        self._forget_old_issues(time.monotonic())
        window = min(RATE_WINDOW, time.monotonic() - self._created)
        return sum(n for _, n in self._issued) / max(window, 1.0)

    def status(self) -> AllocatorStatus:
        allocator = self.allocator
        rate = self.issue_rate()
        left = COUNTER_LIMIT - allocator.next
        return AllocatorStatus(
            store=allocator.store.kind,
            next=allocator.next,
            reserved=allocator.reserved,
            numbers_left=left,
            issue_rate_per_second=rate,
            seconds_to_exhaustion=left / rate if rate > 0 else None,
            connected_workers=len(self._leases_by_worker),
            leases_by_worker={str(pid): n for pid, n in self._leases_by_worker.items()},
            started_at=allocator.started_at,
            uptime_seconds=allocator.uptime,
            store_up=allocator.stats.last_store_error is None,
            idempotency_max_bytes=self.idempotency.max_bytes,
            series=self.series_status(),
            **msgspec.structs.asdict(allocator.stats),
        )


async def serve(config: Config, ready: Callable[[], None] = lambda: None) -> None:
    """Run the allocator until SIGTERM, or until the supervisor disappears."""
    parent_pid = os.getppid()
    # With the operator's key, a missing store is an error: a new one would issue every number
    # of the lost one again, exactly (see --init-store).
    store = open_store(config.store, create=not config.key_file)
    allocator = Allocator(store, config.reserve_step, config.s10_series_size)
    await allocator.start(*(read_key_file(config.key_file) if config.key_file else ()))
    server = AllocatorServer(
        allocator, config.allocator_socket, config.idempotency_ttl, config.idempotency_max_bytes
    )
    try:
        await server.start()
        log.info("allocator listening", extra={"tracking.socket": config.allocator_socket})
        ready()
        await server.serve_until(until_stop_requested(parent_pid))
    finally:
        await server.close()
        await allocator.stop()
        log.info(
            "allocator stopped",
            extra={"tracking.next": allocator.next, "tracking.reserved": allocator.reserved},
        )


def main(config: Config, ready: Callable[[], None]) -> None:
    """The allocator process: the supervisor's child target."""
    logs.configure(config.log_level)
    lifecycle.run(serve(config, ready), config.event_loop)
