"""The allocator: the one actor that owns the counters.

It leases half-open blocks of counter values to workers, from the default counter or from a
named one (an S10 series: ``allocator.series``), each with its own durable reservations
(``allocator.reservations``). Gaps (values reserved but never used) are allowed; duplicates
never are. ``allocator.server`` serves it over a Unix socket.
"""

from __future__ import annotations

import functools
import logging
import time

from allocator.counter import KNOWN_SCHEMES
from allocator.errors import StoreError
from allocator.protocol import AllocatorStats
from allocator.reservations import STORE_RETRY_DELAY, GiveBack, Reservations, Take
from allocator.series import DEFAULT_SERIES, S10_SERIES_SIZE, Series
from allocator.store import Store, where

log = logging.getLogger("allocator")

__all__ = ["STORE_RETRY_DELAY", "Allocator"]

# A series' reservations when the operator sets no reserve_step and the rate asks for less:
# a series holds only 10**8 values, and a crash skips what was reserved and not leased.
SERIES_DEFAULT_STEP = 1000


class Allocator:
    """The counters' owner: an actor whose state only changes on its own event loop."""

    def __init__(
        self, store: Store, reserve_step: int = 0, series_size: int = S10_SERIES_SIZE
    ) -> None:
        self.store = store
        self.fixed_step = reserve_step
        # A new series' size: 10**8, smaller only in tests (the s10_series_size setting).
        self.series_size = series_size
        self.key = b""
        self.scheme = 0
        # What operators see in /allocator/status and /metrics; the server counts in it too.
        self.stats = AllocatorStats.empty()
        self.counter: Reservations | None = None  # the default counter, once started
        # The series in use (made or opened since the start), and how each was made.
        self.series: dict[str, Reservations] = {}
        self.series_made: dict[str, Series] = {}
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
            self.counter = self._reservations(
                DEFAULT_SERIES,
                self.store.reserve,
                self.store.release,
                await self.store.durable_mark(),
                self.store.default_step,
            )
            for series in await self.store.all_series():
                self._use(series)
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
                "tracking.series_count": len(self.series),
            },
        )

    def _reservations(
        self, name: str, take: Take, give_back: GiveBack, mark: int, default_step: int
    ) -> Reservations:
        return Reservations(
            name,
            take,
            give_back,
            mark=mark,
            default_step=default_step,
            fixed_step=self.fixed_step,
            stats=self.stats,
        )

    def _use(self, series: Series) -> Reservations:
        """The reservations of a series the store holds, from its stored mark."""
        store = self.store
        reservations = self._reservations(
            series.name,
            functools.partial(store.reserve_series, series.name),
            functools.partial(store.release_series, series.name),
            series.reserved,
            SERIES_DEFAULT_STEP,
        )
        reservations.exhausted = series.reserved >= series.size
        self.series[series.name] = reservations
        self.series_made[series.name] = series
        return reservations

    @property
    def next(self) -> int:
        """The default counter's first value not yet leased."""
        return self.counter.next if self.counter else 0

    @property
    def reserved(self) -> int:
        """The default counter's durable mark."""
        return self.counter.reserved if self.counter else 0

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    @property
    def available(self) -> int:
        return self.counter.available if self.counter else 0

    async def lease(self, count: int) -> tuple[int, int]:
        """Grant up to ``count`` values of the default counter as ``(start, stop)``; raises
        StoreError if none can be."""
        assert self.counter is not None, "start() first"
        return await self.counter.lease(count)

    async def lease_series(self, name: str, order: str, count: int) -> tuple[int, int, Series]:
        """Grant up to ``count`` values of the series ``name``, made with ``order`` at its first
        use, and how it was made (its order may not be ``order``: it never changes). Raises
        StoreError if none can be, SeriesExhausted once it is used up."""
        reservations = self.series.get(name)
        if reservations is None:
            made = await self.store.open_series(name, order, self.series_size)
            # Another lease may have opened it while we waited for the store.
            reservations = self.series.get(name) or self._use(made)
        start, stop = await reservations.lease(count)
        return start, stop, self.series_made[name]

    def grant_now(self, name: str, count: int) -> tuple[int, int, Series | None] | None:
        """Grant up to ``count`` values of the counter ``name`` (the default counter's or a
        series' in use) from what it holds reserved, with how the series was made; None when
        that needs the store (a new series, nothing reserved, used up): ``lease`` or
        ``lease_series`` then."""
        reservations = self.series.get(name) if name else self.counter
        if reservations is None:
            return None
        granted = reservations.grant_now(count)
        if granted is None:
            return None
        return *granted, self.series_made.get(name)

    async def stop(self) -> None:
        """Final checkpoint of every counter, then close the store."""
        try:
            for reservations in self.series.values():
                await reservations.stop()
            if self.counter is not None:
                await self.counter.stop()
        finally:
            await self.store.close()
