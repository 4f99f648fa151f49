"""The allocator: the one actor that owns the counter.

It leases half-open blocks of counter values to workers. Every value it grants lies inside a
reservation that the store has already made durable, so no value is ever granted twice: not
after a crash, not after a restart. Gaps (values reserved but never used) are allowed;
duplicates never are. ``allocator.server`` serves it over a Unix socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from allocator.counter import KNOWN_SCHEMES
from allocator.errors import StoreError
from allocator.protocol import RESERVATION_BUCKETS, AllocatorStats
from allocator.store import Store, where
from process.logs import error_fields

log = logging.getLogger("allocator")

# With reserve_step = 0, reserve enough for this many seconds of leases at the recent rate.
RESERVE_SECONDS = 60.0
MAX_STEP = 1 << 40
# After a store failure, wait this long before trying to reserve again.
STORE_RETRY_DELAY = 1.0


class Allocator:
    """The counter's owner: an actor whose state only changes on its own event loop.

    ``next`` is the first value not yet leased. ``_ranges`` holds the durable, unleased
    reservations in order (one range for SQLite; with a shared store they need not touch).
    """

    def __init__(self, store: Store, reserve_step: int = 0) -> None:
        self.store = store
        self.fixed_step = reserve_step
        self.key = b""
        self.scheme = 0
        self.next = 0
        self.reserved = 0  # end of the last durable reservation
        self._ranges: collections.deque[list[int]] = collections.deque()
        self._reserving: asyncio.Task[None] | None = None
        self._store_failed_at = 0.0
        self._leased_since_reserve = 0
        self._last_reserve_at = time.monotonic()
        # What operators see in /allocator/status and /metrics; the server counts in it too.
        self.stats = AllocatorStats.empty()
        self.started_at = time.time()
        self._started = time.monotonic()

    async def start(
        self, supplied_key: bytes | None = None, supplied_scheme: int | None = None
    ) -> None:
        """Open the store and take its key and scheme (checked against the key_file's)."""
        await self.store.open()
        try:
            self.key = await self.store.load_key(supplied_key, supplied_scheme)
            if self.store.created:
                # Said out loud: a store that appears where one was expected (a wrong path, a
                # lost volume) starts the counter again, under a new key.
                source = "key_file" if supplied_key else "random"
                log.warning(
                    "new store created",
                    extra={**where(self.store), "tracking.key_source": source},
                )
            self.scheme = await self.store.load_scheme()
            if self.scheme not in KNOWN_SCHEMES:
                # A newer release's permutation: our workers would issue other numbers than its.
                raise StoreError(f"the key's permutation scheme {self.scheme} is unknown here")
            # Everything below the durable mark may have been handed out before: start above it.
            self.next = self.reserved = await self.store.durable_mark()
        except BaseException:
            # stop() is never called for a start that failed: close what open() opened.
            await self.store.close()
            raise
        log.info(
            "allocator started",
            extra={
                "tracking.next": self.next,
                "tracking.store": self.store.kind,
                "tracking.scheme": self.scheme,
            },
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
        self.stats.leases_total += 1
        self.stats.leased_numbers_total += stop - start
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
                raise StoreError(self.stats.last_store_error or "store unavailable")
            self._reserve_in_background()
        assert self._reserving is not None
        # Shielded: one lease giving up must not cancel the reservation others wait for.
        await asyncio.shield(self._reserving)
        if self.stats.last_store_error and not self._ranges:
            raise StoreError(self.stats.last_store_error)

    def _reserve_in_background(self) -> None:
        if self._reserving is None or self._reserving.done():
            self._reserving = asyncio.create_task(self._reserve(self._step()))

    async def _reserve(self, count: int) -> None:
        stats = self.stats
        began = time.monotonic()
        try:
            start, stop = await self.store.reserve(count)
        except StoreError as exc:
            stats.last_store_error = str(exc)
            stats.last_store_error_at = time.time()
            self._store_failed_at = time.monotonic()
            stats.reservation_errors_total += 1
            log.error("reservation failed", extra=error_fields(exc))
            return
        finally:
            self._reserving = None
        latency = time.monotonic() - began
        stats.last_store_error = stats.last_store_error_at = None
        stats.last_checkpoint_at = time.time()
        stats.last_checkpoint_latency_seconds = latency
        stats.reservations_total += 1
        stats.reservation_seconds.observe(latency, RESERVATION_BUCKETS)
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
        """Final checkpoint: give back the unleased tail (a restart skips what workers held)."""
        if self._reserving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reserving
        try:
            if self._ranges and self._ranges[-1][1] == self.reserved:
                start = self._ranges[-1][0]
                if await self.store.release(start, self.reserved):
                    self.reserved = start
        except StoreError as exc:
            log.warning("final checkpoint failed", extra=error_fields(exc))
        finally:
            self._ranges.clear()
            await self.store.close()
