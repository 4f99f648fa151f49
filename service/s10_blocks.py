"""A worker's S10 numbers (issue 20): blocks only for the few series that are busy here.

A series is HOT in a worker once it gets ``HOT_REQUESTS`` requests within ``HOT_WINDOW``
seconds, while fewer than ``MAX_HOT`` are. Only hot series hold blocks (``SeriesBlocks``: the
default counter's ``Issuer``, a current block and a spare of 32 to 1,000 values, about 5 s of
the series' rate), so most of their requests take a number without an await. Every other
series is COLD and holds no values: a request leases exactly the values it needs. That costs
a round trip to the allocator each time (the price of holding nothing, measured in
docs/performance.md), but not a durable reservation: the allocator reserves a minute of each
series' rate ahead (``allocator.reservations``). A thousand series in use thus cost a worker
at most ``MAX_HOT`` blocks. What a cold request must not pay again is its series' FF1 setup:
the permutations of the ``MAX_KNOWN`` series used last are kept apart from the blocks.

A hot series that turns quiet loses its blocks at the next look (one a window); their unused
values are a gap, never issued (docs/architecture.md, "S10 series"; the figures in
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from allocator.client import AllocatorClient, SeriesGrant
from allocator.errors import AllocatorUnavailable
from allocator.series import s10_series
from config.indicators import allowed_indicators
from config.settings import Config
from ledger.records import Issued
from service import s10
from service.blocks import BATCH_SLICE, Issuer, give_way

log = logging.getLogger("service.issuer")

# A series turns hot after this many requests within HOT_WINDOW seconds: at that rate its
# smallest block (SeriesBlocks.min_block) lasts 4 s, and a request in its window that finds
# it cold costs one lease.
HOT_WINDOW = 1.0
HOT_REQUESTS = 8
# The series a worker holds blocks of, at most.
MAX_HOT = 64
# The series whose permutation a worker keeps (about 3 KB each), the most recently used.
MAX_KNOWN = 2048


class S10Formatter:
    """Turns a series' counters into its S10 numbers: the series' order, then the format."""

    def __init__(self, permute: s10.SeriesPermutation, indicator: str) -> None:
        self.permute = permute
        self._indicator = indicator

    def format_serial(self, origin: str, destination: str, serial: int) -> str:
        """The 13-character number; the series' country is the request's origin."""
        return s10.format_number(self._indicator, serial, origin)


class SeriesBlocks(Issuer):
    """A hot series' blocks: smaller than the default counter's, and lasting longer, so that
    a series that turns quiet leaves a small gap."""

    min_block = 32
    max_block = 1000
    lease_interval = 5.0

    def __init__(
        self,
        client: AllocatorClient,
        timeout: float,
        indicator: str,
        country: str,
        order: str,
        permute: s10.SeriesPermutation | None = None,
    ) -> None:
        super().__init__(client, timeout)
        self.series = s10_series(indicator, country)
        self._indicator, self._country, self._order = indicator, country, order
        self._permute = permute  # the series' order, when a cold request learnt it first
        self._made: SeriesGrant | None = None  # the first grant: the series' order and size

    async def _lease(self, size: int) -> tuple[int, int]:
        grant = await self._client.lease_series(self.series, self._order, size)
        self._made = self._made or grant
        return grant.start, grant.stop

    def _new_formatter(self) -> S10Formatter:  # type: ignore[override]
        permute = self._permute
        if permute is None:
            assert self._client.key is not None
            assert self._made is not None
            # The series' own order and size, as stored when it was made: never the setting's.
            permute = s10.SeriesPermutation(
                self._client.key, self._indicator, self._country, self._made.order, self._made.size
            )
        return S10Formatter(permute, self._indicator)

    async def close(self) -> None:
        """Stop fetching; the allocator client is the worker's, not this series'."""
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill


class _Series:
    """What a worker keeps of a series it was asked for: its order once the allocator has
    told it, its blocks while it is hot, and how many requests it got lately."""

    __slots__ = ("blocks", "last_window", "name", "permute", "requests", "window_start")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.permute: s10.SeriesPermutation | None = None
        self.blocks: SeriesBlocks | None = None
        self.window_start = now
        self.requests = 0  # since window_start
        self.last_window = 0  # in the window before it

    def count(self, now: float) -> None:
        """One more request; a new window once HOT_WINDOW has passed."""
        elapsed = now - self.window_start
        if elapsed >= HOT_WINDOW:
            # A request-less window between them: the last one had none.
            self.last_window = self.requests if elapsed < 2 * HOT_WINDOW else 0
            self.window_start, self.requests = now, 0
        self.requests += 1

    def quiet(self, now: float) -> bool:
        """Fewer than HOT_REQUESTS requests in the last whole window."""
        elapsed = now - self.window_start
        if elapsed >= 2 * HOT_WINDOW:
            return True  # a whole window without one
        if elapsed >= HOT_WINDOW:
            return self.requests < HOT_REQUESTS
        return self.last_window < HOT_REQUESTS


class S10Issuer:
    """The worker's S10 numbers: the operator's indicators, blocks for the hot series (at most
    MAX_HOT), exact leases for the others."""

    def __init__(
        self, client: AllocatorClient, config: Config, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._timeout = config.lease_timeout
        self._order = config.s10_order
        self._listed = config.s10_indicators
        self._allowed = allowed_indicators(config.s10_indicators)
        self._clock = clock
        # By (indicator, country): every series known (at most MAX_KNOWN, the most recently
        # used last), and those of them that are hot (at most MAX_HOT).
        self._known: collections.OrderedDict[tuple[str, str], _Series] = collections.OrderedDict()
        self._hot: dict[tuple[str, str], _Series] = {}
        self._sweep_at = clock() + HOT_WINDOW  # when the hot set is next looked through

    @property
    def held(self) -> int:
        """How many series this worker holds blocks of: its hot series."""
        return len(self._hot)

    def refusal(self, indicator: str) -> str | None:
        """Why ``indicator`` is not issued here (a 400's message), or None if it is."""
        if s10.allows(self._allowed, indicator):
            return None
        return s10.refusal(indicator, self._listed)

    def issue_nowait(self, indicator: str, country: str) -> Issued | None:
        """One number of a hot series from the block in hand, or None (a cold series, or an
        empty block): then ``issue_many`` issues it, and counts the request."""
        key = (indicator, country)  # cheaper to look up than the series' name
        series = self._hot.get(key)
        if series is None:
            return None
        assert series.blocks is not None
        issued = series.blocks.issue_nowait(country, "")
        if issued is not None:
            self._counted(key, series, self._clock())
        return issued

    async def issue_many(self, indicator: str, country: str, count: int) -> list[Issued]:
        """``count`` numbers of the series of ``indicator`` and ``country`` (an allowed
        indicator); raises AllocatorError, SeriesExhausted once the series is used up."""
        now = self._clock()
        key = (indicator, country)
        series = self._known.get(key)
        if series is None:
            series = self._known_anew(key, now)
        self._counted(key, series, now)
        blocks = series.blocks
        if blocks is None and series.requests >= HOT_REQUESTS and len(self._hot) < MAX_HOT:
            blocks = self._make_hot(key, series)
        if blocks is None:
            return await self._lease_exactly(series, indicator, country, count)
        if count == 1:
            # Most often from the block in hand: no await, no deadline to set up.
            issued = blocks.issue_nowait(country, "")
            if issued is not None:
                return [issued]
        return await blocks.issue_many(country, "", count)

    def _counted(self, key: tuple[str, str], series: _Series, now: float) -> None:
        """One more request of a known series: the most recently used now, and one more in
        its window; and once a window, the hot series that turned quiet go cold."""
        self._known.move_to_end(key)
        series.count(now)
        if now >= self._sweep_at:
            self._shed_quiet(now)

    def _known_anew(self, key: tuple[str, str], now: float) -> _Series:
        """A series not known (or forgotten): known now, the least recently used forgotten
        beyond MAX_KNOWN."""
        series = self._known[key] = _Series(s10_series(*key), now)
        if len(self._known) > MAX_KNOWN:
            forgotten_key, forgotten = self._known.popitem(last=False)
            if forgotten.blocks is not None:
                self._make_cold(forgotten_key, forgotten)
        return series

    def _shed_quiet(self, now: float) -> None:
        """Every hot series that turned quiet loses its blocks. Looked for once a window, not
        at every request: a look at the least recently used hot series cost each request
        0.4 µs (docs/performance.md, "S10 numbers at our numbers' cost")."""
        self._sweep_at = now + HOT_WINDOW
        quiet = [(key, series) for key, series in self._hot.items() if series.quiet(now)]
        for key, series in quiet:
            self._make_cold(key, series)

    def _make_hot(self, key: tuple[str, str], series: _Series) -> SeriesBlocks:
        indicator, country = key
        blocks = series.blocks = SeriesBlocks(
            self._client, self._timeout, indicator, country, self._order, series.permute
        )
        # Busy in this window: not quiet before a whole window has passed.
        series.last_window = series.requests
        self._hot[key] = series
        return blocks

    def _make_cold(self, key: tuple[str, str], series: _Series) -> None:
        # Dropped, not cancelled: a request may be waiting for its block. What it holds is
        # a gap.
        series.blocks = None
        del self._hot[key]

    async def _lease_exactly(
        self, series: _Series, indicator: str, country: str, count: int
    ) -> list[Issued]:
        """``count`` numbers leased for this request alone, within one lease timeout (the
        allocator may grant fewer than asked: a reservation's end)."""
        issued: list[Issued] = []
        try:
            # One number is one lease, within the client's own deadline (the same timeout):
            # no timer of ours to set and cancel.
            async with asyncio.timeout(self._timeout if count > 1 else None):
                while len(issued) < count:
                    grant = await self._client.lease_series(
                        series.name, self._order, count - len(issued)
                    )
                    permute = series.permute or self._permutation(series, indicator, country, grant)
                    serials = permute.serials(grant.start, grant.stop)
                    for counter, serial in enumerate(serials, grant.start):
                        number = s10.format_number(indicator, serial, country)
                        issued.append(Issued(counter, number))
                        if len(issued) % BATCH_SLICE == 0 and len(issued) < count:
                            await give_way(len(issued))
        except TimeoutError:
            raise AllocatorUnavailable("no values from the allocator in time") from None
        return issued

    def _permutation(
        self, series: _Series, indicator: str, country: str, grant: SeriesGrant
    ) -> s10.SeriesPermutation:
        """The series' order and size as stored when it was made (never the setting's), kept."""
        assert self._client.key is not None
        series.permute = s10.SeriesPermutation(
            self._client.key, indicator, country, grant.order, grant.size
        )
        return series.permute

    async def close(self) -> None:
        # Said at the stop: the values these blocks hold become gaps.
        log.info("s10 blocks dropped", extra={"tracking.s10_hot_series": len(self._hot)})
        for series in self._hot.values():
            assert series.blocks is not None
            await series.blocks.close()
        self._hot.clear()
        self._known.clear()
