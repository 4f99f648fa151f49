"""One named counter's reservations: what the store made durable, and what is not leased yet.

The allocator (``allocator.actor``) keeps one of these for the default counter and one for each
S10 series in use. Every value it grants lies inside a reservation the store has already made
durable, so no value is ever granted twice: not after a crash, not after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from allocator.errors import SeriesExhausted, StoreError
from allocator.protocol import RESERVATION_BUCKETS, AllocatorStats
from process.logs import error_fields

log = logging.getLogger("allocator")

# With reserve_step = 0, reserve enough for this many seconds of leases at the recent rate.
RESERVE_SECONDS = 60.0
MAX_STEP = 1 << 40
# After a store failure, wait this long before trying to reserve again.
STORE_RETRY_DELAY = 1.0
# A series' lease rate (its forecast) is averaged over this many seconds.
RATE_WINDOW = 60.0

Take = Callable[[int], Awaitable[tuple[int, int]]]
GiveBack = Callable[[int, int], Awaitable[bool]]


class Reservations:
    """A counter's durable, unleased reservations, in order (``_ranges``: one range for SQLite;
    with a shared store they need not touch). ``next`` is the first value not yet leased; it
    never moves backwards. State only changes on the allocator's event loop.
    """

    def __init__(
        self,
        name: str,
        take: Take,
        give_back: GiveBack,
        *,
        mark: int,
        default_step: int,
        fixed_step: int,
        stats: AllocatorStats,
    ) -> None:
        self.name = name
        self._take = take
        self._give_back = give_back
        self.default_step = default_step
        self.fixed_step = fixed_step
        self.stats = stats  # shared by every counter of the allocator
        # Everything below the durable mark may have been handed out before: start above it.
        self.next = self.reserved = mark
        self.exhausted = False  # a series the store has no value left in (never undone)
        self.reservations_total = 0
        self.leased_numbers_total = 0
        self._ranges: collections.deque[list[int]] = collections.deque()
        self._reserving: asyncio.Task[None] | None = None
        self._store_failed_at = 0.0
        self._leased_since_reserve = 0
        self._last_reserve_at = time.monotonic()
        # Values leased per second of the monotonic clock, over the last RATE_WINDOW seconds,
        # and their sum (kept as they come and go: a series reads its rate at every lease).
        self._leased: collections.deque[list[int]] = collections.deque()
        self._leased_in_window = 0
        self._created = time.monotonic()

    @property
    def available(self) -> int:
        return sum(stop - start for start, stop in self._ranges)

    async def lease(self, count: int) -> tuple[int, int]:
        """Grant up to ``count`` values as ``(start, stop)``; raises StoreError if none can be
        (SeriesExhausted once a series is used up)."""
        while (granted := self.grant_now(count)) is None:
            if self.exhausted:
                raise SeriesExhausted(self.name)
            await self._reserve_now()
        return granted

    def grant_now(self, count: int) -> tuple[int, int] | None:
        """Grant up to ``count`` values from what is reserved already, or None if nothing is
        (``lease`` then waits for the store): the server answers these without a task."""
        if not self._ranges:
            return None
        block = self._ranges[0]
        start = block[0]
        stop = min(start + count, block[1])
        if stop == block[1]:
            self._ranges.popleft()
        else:
            block[0] = stop
        self.next = self._ranges[0][0] if self._ranges else stop
        self._leased_since_reserve += stop - start
        self.leased_numbers_total += stop - start
        self.stats.leases_total += 1
        self.stats.leased_numbers_total += stop - start
        self._count_leased(stop - start)
        if self.available < self._step() // 2 and not self.exhausted:
            self._reserve_in_background()
        return start, stop

    def lease_rate(self) -> float:
        """Values leased per second over the last RATE_WINDOW seconds."""
        now = time.monotonic()
        self._forget_old_leases(now)
        window = min(RATE_WINDOW, now - self._created)
        return self._leased_in_window / max(window, 1.0)

    def _count_leased(self, count: int) -> None:
        second = int(time.monotonic())
        if self._leased and self._leased[-1][0] == second:
            self._leased[-1][1] += count
        else:
            self._leased.append([second, count])
        self._leased_in_window += count
        self._forget_old_leases(second)

    def _forget_old_leases(self, now: float) -> None:
        while self._leased and self._leased[0][0] < now - RATE_WINDOW:
            self._leased_in_window -= self._leased.popleft()[1]

    def _step(self) -> int:
        if self.fixed_step:
            return self.fixed_step
        if self.name:
            # A series leases small blocks now and then: only a minute's rate is one (a block
            # just after a reservation would look like a rush, and reserve again at once).
            rate = self.lease_rate()
            return int(min(max(self.default_step, rate * RESERVE_SECONDS), MAX_STEP))
        # At least a second: a burst just after a reservation is not a rate.
        elapsed = max(time.monotonic() - self._last_reserve_at, 1.0)
        rate = self._leased_since_reserve / elapsed
        return int(min(max(self.default_step, rate * RESERVE_SECONDS), MAX_STEP))

    async def _reserve_now(self) -> None:
        if self._reserving is None:
            if time.monotonic() - self._store_failed_at < STORE_RETRY_DELAY:
                raise StoreError(self.stats.last_store_error or "store unavailable")
            self._reserve_in_background()
        assert self._reserving is not None
        # Shielded: one lease giving up must not cancel the reservation others wait for.
        await asyncio.shield(self._reserving)
        if self.stats.last_store_error and not self._ranges and not self.exhausted:
            raise StoreError(self.stats.last_store_error)

    def _reserve_in_background(self) -> None:
        if self._reserving is None or self._reserving.done():
            self._reserving = asyncio.create_task(self._reserve(self._step()))

    async def _reserve(self, count: int) -> None:
        stats = self.stats
        began = time.monotonic()
        try:
            start, stop = await self._take(count)
        except StoreError as exc:
            stats.last_store_error = str(exc)
            stats.last_store_error_at = time.time()
            self._store_failed_at = time.monotonic()
            stats.reservation_errors_total += 1
            log.error("reservation failed", extra={**self._named, **error_fields(exc)})
            return
        finally:
            self._reserving = None
        latency = time.monotonic() - began
        stats.last_store_error = stats.last_store_error_at = None
        if start == stop:
            # Only a series ends: the store has nothing left in it, now or ever. What is in
            # hand is still granted; then every lease is refused as exhausted.
            self.exhausted = True
            log.warning("series fully reserved", extra={"tracking.series": self.name})
            return
        stats.last_checkpoint_at = time.time()
        stats.last_checkpoint_latency_seconds = latency
        stats.reservations_total += 1
        stats.reservation_seconds.observe(latency, RESERVATION_BUCKETS)
        self.reservations_total += 1
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
            # A series' own message: allocator.marks reads the default counter's marks only.
            "series reserved" if self.name else "reserved",
            extra={
                **self._named,
                "tracking.reserved": stop,
                "tracking.step": count,
                "event.duration": int(latency * 1e9),
            },
        )

    @property
    def _named(self) -> dict[str, str]:
        """The series' log field; none for the default counter, whose lines are as they were
        (allocator.marks reads its marks)."""
        return {"tracking.series": self.name} if self.name else {}

    async def stop(self) -> None:
        """Final checkpoint: give back the unleased tail (a restart skips what workers held)."""
        if self._reserving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reserving
        try:
            if self._ranges and self._ranges[-1][1] == self.reserved:
                start = self._ranges[-1][0]
                if await self._give_back(start, self.reserved):
                    self.reserved = start
        except StoreError as exc:
            log.warning("final checkpoint failed", extra={**self._named, **error_fields(exc)})
        finally:
            self._ranges.clear()
