"""The worker's blocks of counter values (``Issuer``), turned into tracking numbers.

The worker holds a current block and a spare one (double buffering). When half of the current
block is used it asks the allocator for the spare in the background, so a request never waits
on the allocator while the worker holds unused values. Block sizes follow the observed issue
rate, aiming at about one lease per second. The serials of a block are computed a chunk at a
time (``Permutation.chunk``), as its counters are taken: FF1 costs far less a serial over many
counters at once, and a chunk holds up the event loop for less than a millisecond, however big
the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from allocator.client import AllocatorClient
from allocator.errors import AllocatorError, AllocatorUnavailable
from ledger.records import Issued
from service.numbers import NumberFormatter

if TYPE_CHECKING:
    from service.s10_blocks import S10Formatter

# Named for the Issuer: operators filter on this log.logger (docs/operations.md).
log = logging.getLogger("service.issuer")

MIN_BLOCK = 16
# A batch gives way to the worker's other requests after every BATCH_SLICE numbers, and to the
# processes woken on its core after every YIELD_CPU_EVERY (``give_way``): 1000 numbers are
# about 2 ms of CPU with scheme 3, 256 about 0.5 ms (docs/architecture.md, "Batches").
BATCH_SLICE = 16
YIELD_CPU_EVERY = 256  # a multiple of BATCH_SLICE
MAX_BLOCK = 100_000
LEASE_INTERVAL = 1.0  # seconds one block should last at the current rate


async def give_way(taken: int) -> None:
    """After ``taken`` numbers of a batch, at a slice's end: let in this worker's other
    requests, and now and then the processes woken on this core."""
    # A process the kernel wakes on this core (a client on the same host, the allocator, the
    # other worker) would otherwise wait for the next scheduler tick, however many slices that
    # takes: the scheduler need not preempt a running batch for it. But not at every slice:
    # the scheduler lets every runnable process have its turn first, and a busy neighbour
    # (another service, a backup) made a 100-number batch wait out six of its time slices.
    if taken % YIELD_CPU_EVERY == 0:
        os.sched_yield()
    await asyncio.sleep(0)


class Issuer:
    """The default counter's blocks (``service.s10_blocks`` has a series' own)."""

    # Block sizes: about ``lease_interval`` seconds of the issue rate, within these bounds.
    min_block = MIN_BLOCK
    max_block = MAX_BLOCK
    lease_interval = LEASE_INTERVAL

    def __init__(self, client: AllocatorClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._formatter: NumberFormatter | S10Formatter | None = None
        self._next = self._stop = 0  # the current block [_next, _stop)
        self._refill_at = 0  # when _next reaches this, fetch the spare
        # The serials of the counters [_chunk_start, _chunk_start + len(_chunk)), all of them
        # in the current block.
        self._chunk_start = 0
        self._chunk: list[int] = []
        self._spare: tuple[int, int] | None = None
        self._refill: asyncio.Task[None] | None = None
        self._taken = 0  # values taken since the last lease request
        self._last_lease_at = time.monotonic()
        self.last_error: AllocatorError | None = None

    @property
    def buffered(self) -> int:
        spare = self._spare[1] - self._spare[0] if self._spare else 0
        return self._stop - self._next + spare

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def can_issue(self) -> bool:
        """True while a request would get a number: values in hand, or a working allocator."""
        return self.buffered > 0 or (self.connected and self.last_error is None)

    def issue_nowait(self, origin: str, destination: str) -> Issued | None:
        """A number from the blocks in hand, or None when they are empty (see ``issue``)."""
        counter = self._take()
        if counter is None:
            return None
        formatter = self._formatter
        assert formatter is not None  # set with the first block
        index = counter - self._chunk_start
        if not 0 <= index < len(self._chunk):
            permute = formatter.permute
            self._chunk_start, index = counter, 0
            self._chunk = permute.serials(counter, min(counter + permute.chunk, self._stop))
        return Issued(counter, formatter.format_serial(origin, destination, self._chunk[index]))

    async def issue(self, origin: str, destination: str) -> Issued:
        """Wait, at most the lease timeout, for a block; raises AllocatorError when none comes."""
        (issued,) = await self.issue_many(origin, destination, 1)
        return issued

    async def issue_many(self, origin: str, destination: str, count: int) -> list[Issued]:
        """``count`` numbers, waiting for blocks as needed, all within one lease timeout;
        raises AllocatorError when they do not come (values already taken become a gap)."""
        numbers: list[Issued] = []
        try:
            async with asyncio.timeout(self._timeout):
                while len(numbers) < count:
                    issued = self.issue_nowait(origin, destination)
                    if issued is not None:
                        numbers.append(issued)
                        if len(numbers) % BATCH_SLICE == 0 and len(numbers) < count:
                            await give_way(len(numbers))
                        continue
                    refill = self._refill
                    if refill is None:  # the last refill failed and none is running
                        raise self.last_error or AllocatorUnavailable("no block available")
                    await asyncio.shield(refill)
                    if self.last_error is not None and self.buffered == 0:
                        raise self.last_error  # fail fast: the allocator just said no
        except TimeoutError:
            raise AllocatorUnavailable("no block from the allocator in time") from None
        return numbers

    def prefetch(self) -> None:
        """Ask for a block now if none is in hand or on its way."""
        if self.buffered == 0:
            self._start_refill()

    async def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        await self._client.close()

    def _take(self) -> int | None:
        counter = self._next
        if counter >= self._stop:
            if self._spare is None:
                self._start_refill()
                return None
            counter, self._stop = self._spare
            self._spare = None
            self._refill_at = counter + (self._stop - counter) // 2
        self._next = counter + 1
        self._taken += 1
        if counter >= self._refill_at:
            self._start_refill()
        return counter

    def _start_refill(self) -> None:
        if self._refill is None and self._spare is None:
            self._refill_at = self._stop  # no second trigger while this one runs
            self._refill = asyncio.create_task(self._fetch(self._block_size()))

    def _block_size(self) -> int:
        now = time.monotonic()
        rate = self._taken / max(now - self._last_lease_at, 1e-3)
        self._taken, self._last_lease_at = 0, now
        return int(min(max(rate * self.lease_interval, self.min_block), self.max_block))

    async def _lease(self, size: int) -> tuple[int, int]:
        """A block of at most ``size`` values from the allocator."""
        return await self._client.lease(size)

    def _new_formatter(self) -> NumberFormatter:
        """What turns this issuer's counters into numbers, made with its first block."""
        # The key and its scheme come with the connection.
        assert self._client.key is not None
        assert self._client.scheme is not None
        return NumberFormatter(self._client.key, self._client.scheme)

    async def _fetch(self, size: int) -> None:
        try:
            start, stop = await self._lease(size)
        except AllocatorError as exc:
            if self.last_error is None or str(exc) != str(self.last_error):
                log.warning("lease failed", extra={"error.message": str(exc)})
            self.last_error = exc
            return
        finally:
            self._refill = None
        self.last_error = None
        if self._formatter is None:
            self._formatter = self._new_formatter()
        if self._next >= self._stop:
            self._next, self._stop = start, stop
            self._refill_at = start + (stop - start) // 2
        else:
            self._spare = (start, stop)
