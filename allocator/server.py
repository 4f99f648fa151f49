"""The allocator: the one process that owns the counter.

It leases half-open blocks of counter values to workers over a Unix socket. Every value it
grants lies inside a reservation that the store has already made durable, so no value is ever
granted twice: not after a crash, not after a restart. Gaps (values reserved but never used)
are allowed; duplicates never are.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable

from allocator import protocol
from allocator.protocol import (
    COUNTER_LIMIT,
    RESERVATION_BUCKETS,
    AllocatorError,
    AllocatorStatus,
    Granted,
    Hello,
    Histogram,
    Lease,
    ProtocolError,
    Recall,
    Recalled,
    Refused,
    Remember,
    Remembered,
    Report,
    Status,
    StatusQuery,
    StoreError,
    Welcome,
    WorkerCounters,
)
from allocator.store import Store, open_store
from config import lifecycle, logs
from config.lifecycle import until_stop_requested
from config.settings import Config

log = logging.getLogger("allocator")

# A connection may have this many requests in flight; past it, we stop reading from it.
MAX_INFLIGHT_PER_CONNECTION = 16
# A client that connects must say Hello within this time, or be dropped.
HELLO_TIMEOUT = 10.0
# With reserve_step = 0, reserve enough for this many seconds of leases at the recent rate.
RESERVE_SECONDS = 60.0
MAX_STEP = 1 << 40
# After a store failure, wait this long before trying to reserve again.
STORE_RETRY_DELAY = 1.0
# The issue rate is averaged over this many seconds of worker reports.
RATE_WINDOW = 60.0
# Expired idempotency keys are dropped from the store this often.
PURGE_INTERVAL = 600.0


class Allocator:
    """The counter's owner: an actor whose state only changes on its own event loop.

    ``next`` is the first value not yet leased. ``_ranges`` holds the durable, unleased
    reservations in order (one range for SQLite; with a shared store they need not touch).
    """

    def __init__(self, store: Store, reserve_step: int = 0) -> None:
        self.store = store
        self.fixed_step = reserve_step
        self.key = b""
        self.next = 0
        self.reserved = 0  # end of the last durable reservation
        self._ranges: collections.deque[list[int]] = collections.deque()
        self._reserving: asyncio.Task[None] | None = None
        self._store_failed_at = 0.0
        self._leased_since_reserve = 0
        self._last_reserve_at = time.monotonic()
        # What operators see in /allocator/status and /metrics.
        self.started_at = time.time()
        self._started = time.monotonic()
        self.last_store_error: str | None = None
        self.last_store_error_at: float | None = None
        self.last_checkpoint_at: float | None = None
        self.last_checkpoint_latency: float | None = None
        self.leases_total = 0
        self.leased_numbers_total = 0
        self.reservations_total = 0
        self.reservation_errors_total = 0
        self.reservation_seconds = Histogram.empty(RESERVATION_BUCKETS)

    async def start(self, supplied_key: bytes | None = None) -> None:
        await self.store.open()
        self.key = await self.store.load_key(supplied_key)
        # Everything below the durable mark may have been handed out before: start above it.
        self.next = self.reserved = await self.store.durable_mark()
        log.info(
            "allocator started",
            extra={"tracking.next": self.next, "tracking.store": self.store.kind},
        )

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    @property
    def available(self) -> int:
        return sum(stop - start for start, stop in self._ranges)

    async def lease(self, count: int) -> tuple[int, int]:
        """Grant up to ``count`` values as ``(start, stop)``; raises StoreError if none can be."""
        while not self._ranges:
            await self._reserve_now()
        block = self._ranges[0]
        start = block[0]
        stop = min(start + count, block[1])
        if stop == block[1]:
            self._ranges.popleft()
        else:
            block[0] = stop
        self.next = self._ranges[0][0] if self._ranges else stop
        self._leased_since_reserve += stop - start
        self.leases_total += 1
        self.leased_numbers_total += stop - start
        if self.available < self._step() // 2:
            self._reserve_in_background()
        return start, stop

    def _step(self) -> int:
        if self.fixed_step:
            return self.fixed_step
        # At least a second: a burst just after a reservation is not a rate.
        elapsed = max(time.monotonic() - self._last_reserve_at, 1.0)
        rate = self._leased_since_reserve / elapsed
        return int(min(max(self.store.default_step, rate * RESERVE_SECONDS), MAX_STEP))

    async def _reserve_now(self) -> None:
        if self._reserving is None:
            if time.monotonic() - self._store_failed_at < STORE_RETRY_DELAY:
                raise StoreError(self.last_store_error or "store unavailable")
            self._reserve_in_background()
        assert self._reserving is not None
        # Shielded: one lease giving up must not cancel the reservation others wait for.
        await asyncio.shield(self._reserving)
        if self.last_store_error and not self._ranges:
            raise StoreError(self.last_store_error)

    def _reserve_in_background(self) -> None:
        if self._reserving is None or self._reserving.done():
            self._reserving = asyncio.create_task(self._reserve(self._step()))

    async def _reserve(self, count: int) -> None:
        began = time.monotonic()
        try:
            start, stop = await self.store.reserve(count)
        except StoreError as exc:
            self.last_store_error = str(exc)
            self.last_store_error_at = time.time()
            self._store_failed_at = time.monotonic()
            self.reservation_errors_total += 1
            log.error(
                "reservation failed",
                extra={"error.type": type(exc).__name__, "error.message": str(exc)},
            )
            return
        finally:
            self._reserving = None
        latency = time.monotonic() - began
        self.last_store_error = self.last_store_error_at = None
        self.last_checkpoint_at = time.time()
        self.last_checkpoint_latency = latency
        self.reservations_total += 1
        self.reservation_seconds.observe(latency, RESERVATION_BUCKETS)
        self._leased_since_reserve = 0
        self._last_reserve_at = time.monotonic()
        if self._ranges and self._ranges[-1][1] == start:
            self._ranges[-1][1] = stop
        else:
            self._ranges.append([start, stop])
            if len(self._ranges) == 1:
                self.next = start
        self.reserved = stop
        log.info(
            "reserved",
            extra={
                "tracking.reserved": stop,
                "tracking.step": count,
                "event.duration": int(latency * 1e9),
            },
        )

    async def stop(self) -> None:
        """Final checkpoint: give back the unused tail so a clean restart leaves no gap."""
        if self._reserving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reserving
        try:
            if self._ranges and self._ranges[-1][1] == self.reserved:
                start = self._ranges[-1][0]
                if await self.store.release(start, self.reserved):
                    self.reserved = start
        except StoreError as exc:
            log.warning(
                "final checkpoint failed",
                extra={"error.type": type(exc).__name__, "error.message": str(exc)},
            )
        finally:
            self._ranges.clear()
            await self.store.close()


class AllocatorServer:
    """Serves an Allocator over a Unix socket: one task per connection, bounded in flight."""

    def __init__(self, allocator: Allocator, path: str, idempotency_ttl: float = 86400.0) -> None:
        self.allocator = allocator
        self.path = path
        self.idempotency_ttl = idempotency_ttl
        self._purging: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._leases_by_worker: dict[int, int] = {}  # connected workers, by pid
        self.worker_totals = WorkerCounters()
        self._issued: collections.deque[tuple[float, int]] = collections.deque()
        self.lease_refusals_total = 0

    async def start(self) -> None:
        sock = bind_unix_socket(self.path)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        self._purging = asyncio.create_task(self._purge_expired_keys())

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging
        if self._server is not None:
            self._server.close()
        # Hang up rather than cancel: each connection's task then ends on its own.
        for writer in self._connections.values():
            writer.close()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        slots = asyncio.Semaphore(MAX_INFLIGHT_PER_CONNECTION)
        pending: set[asyncio.Task[None]] = set()
        worker: int | None = None
        try:
            first = await asyncio.wait_for(protocol.read_frame(reader), HELLO_TIMEOUT)
            if first is None:
                return  # connected and left without a word: a readiness probe
            hello = protocol.decode_request(first)
            if not isinstance(hello, Hello):
                raise ProtocolError("a connection must start with Hello")
            writer.write(protocol.encode(Welcome(id=hello.id, key=self.allocator.key)))
            worker = hello.pid
            self._leases_by_worker[worker] = 0
            log.info("worker connected", extra={"tracking.worker_pid": worker})
            while (payload := await protocol.read_frame(reader)) is not None:
                request = protocol.decode_request(payload)
                await slots.acquire()
                answer = asyncio.create_task(self._answer(request, writer, worker))
                pending.add(answer)
                answer.add_done_callback(pending.discard)
                answer.add_done_callback(lambda _: slots.release())
        except (ProtocolError, TimeoutError) as exc:
            log.warning(
                "dropping allocator client",
                extra={"error.type": type(exc).__name__, "error.message": str(exc)},
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for answer in pending:
                answer.cancel()
            writer.close()
            del self._connections[task]
            if worker is not None:
                self._leases_by_worker.pop(worker, None)

    async def _answer(
        self, request: protocol.Request, writer: asyncio.StreamWriter, worker: int
    ) -> None:
        response: protocol.Message
        match request:
            case Lease(id=request_id, count=count):
                try:
                    start, stop = await self.allocator.lease(count)
                    response = Granted(id=request_id, start=start, stop=stop)
                    self._leases_by_worker[worker] = self._leases_by_worker.get(worker, 0) + 1
                except AllocatorError as exc:
                    self.lease_refusals_total += 1
                    log.warning(
                        "lease refused",
                        extra={"error.type": type(exc).__name__, "error.message": str(exc)},
                    )
                    response = Refused(id=request_id, reason=str(exc))
            case Report(counters=counters):
                self.worker_totals.add(counters)
                self._issued.append((time.monotonic(), counters.issued))
                return  # reports are one-way
            case Recall(id=request_id, key=key):
                response = await self._idempotency(
                    request_id, self.allocator.store.recall(key, time.time())
                )
            case Remember(id=request_id, key=key, fingerprint=fingerprint, response=answer):
                now = time.time()
                response = await self._idempotency(
                    request_id,
                    self.allocator.store.remember(
                        key, fingerprint, answer, now + self.idempotency_ttl, now
                    ),
                )
            case StatusQuery(id=request_id):
                response = Status(
                    id=request_id, allocator=self.status(), workers=self.worker_totals
                )
            case Hello(id=request_id):
                response = Welcome(id=request_id, key=self.allocator.key)
        if not writer.is_closing():
            writer.write(protocol.encode(response))

    async def _idempotency(
        self, request_id: int, store_call: Awaitable[Remembered | None]
    ) -> protocol.Message:
        try:
            remembered = await store_call
        except StoreError as exc:
            log.warning(
                "idempotency key store failed",
                extra={"error.type": type(exc).__name__, "error.message": str(exc)},
            )
            return Refused(id=request_id, reason=str(exc))
        if remembered is None:
            return Recalled(id=request_id, fingerprint=None, response=None)
        return Recalled(
            id=request_id, fingerprint=remembered.fingerprint, response=remembered.response
        )

    async def _purge_expired_keys(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            with contextlib.suppress(StoreError):  # the next round tries again
                await self.allocator.store.forget_expired(time.time())

    def issue_rate(self) -> float:
        """Numbers issued per second over the last RATE_WINDOW seconds, from worker reports."""
        now = time.monotonic()
        while self._issued and self._issued[0][0] < now - RATE_WINDOW:
            self._issued.popleft()
        window = min(RATE_WINDOW, self.allocator.uptime)
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
            store_up=allocator.last_store_error is None,
            last_checkpoint_at=allocator.last_checkpoint_at,
            last_checkpoint_latency_seconds=allocator.last_checkpoint_latency,
            last_store_error=allocator.last_store_error,
            last_store_error_at=allocator.last_store_error_at,
            leases_total=allocator.leases_total,
            leased_numbers_total=allocator.leased_numbers_total,
            lease_refusals_total=self.lease_refusals_total,
            reservations_total=allocator.reservations_total,
            reservation_errors_total=allocator.reservation_errors_total,
            reservation_seconds=allocator.reservation_seconds,
        )


def bind_unix_socket(path: str) -> socket.socket:
    """Bind ``path`` with mode 0600 in a directory only we can enter.

    A leftover file is removed only if it is a socket nobody listens on: a live allocator
    keeps its socket, and we never unlink something that is not a socket.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its allocator is gone
        else:
            raise OSError(f"another allocator is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600: never readable by others, not even briefly
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


def read_key_file(path: str) -> bytes:
    with open(path) as file:
        text = file.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path} must hold the key as hex digits") from None
    if len(key) != protocol.KEY_BYTES:
        raise ValueError(
            f"{path} must hold {protocol.KEY_BYTES} bytes ({2 * protocol.KEY_BYTES} hex digits)"
        )
    return key


async def serve(config: Config, ready: Callable[[], None] = lambda: None) -> None:
    """Run the allocator until SIGTERM, or until the supervisor disappears."""
    parent_pid = os.getppid()
    allocator = Allocator(open_store(config.store), config.reserve_step)
    await allocator.start(read_key_file(config.key_file) if config.key_file else None)
    server = AllocatorServer(allocator, config.allocator_socket, config.idempotency_ttl)
    try:
        await server.start()
        log.info("allocator listening", extra={"tracking.socket": config.allocator_socket})
        ready()
        await until_stop_requested(parent_pid)
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


async def raise_reserved(config: Config, value: int) -> int:
    """The ``--raise-reserved-to`` command: raise the store's mark, never lower it.

    Safe while the service runs: the store raises the mark in one atomic statement, and the
    allocator reserves from the stored mark, so its next reservation starts above ``value``.
    """
    if not 0 <= value <= COUNTER_LIMIT:
        log.error("the mark must be between 0 and 2**56", extra={"tracking.reserved": value})
        return 2
    store = open_store(config.store)
    try:
        await store.open()
        await store.load_key()  # creates the row of a new store
        before = await store.durable_mark()
        after = await store.raise_mark(value)
    except AllocatorError as exc:
        log.error(
            "cannot raise the reservation mark",
            extra={"error.type": type(exc).__name__, "error.message": str(exc)},
        )
        return 1
    finally:
        await store.close()
    log.info(
        "reservation mark raised" if after > before else "reservation mark already high enough",
        extra={"tracking.reserved_before": before, "tracking.reserved": after},
    )
    return 0
