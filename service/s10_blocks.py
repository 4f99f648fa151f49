"""A worker's blocks of S10 series (issue 20): small, per series, and only for the series it is
asked for.

Each series in use has its own ``SeriesBlocks``: the default counter's ``Issuer`` (a current
block and a spare, fetched when half the current one is used), leasing from the series'
counter and formatting S10 numbers. A worker keeps at most ``MAX_SERIES_HELD`` of them, the
most recently used, and their blocks are small (at most twice ``max_block`` values a series):
a thousand series in use hold a few hundred thousand values of 10**8 each, not a thousand of
the default counter's blocks. The values of a block it drops are a gap, never issued
(docs/architecture.md, "S10 series"; the memory measured in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from allocator.client import AllocatorClient, SeriesGrant
from allocator.series import s10_series
from config.indicators import allowed_indicators
from config.settings import Config
from ledger.records import Issued
from service import s10
from service.blocks import Issuer

# The series a worker holds blocks of, at most; the least recently used is dropped past it.
MAX_SERIES_HELD = 1024


class S10Formatter:
    """Turns a series' counters into its S10 numbers: the series' order, then the format."""

    def __init__(self, permute: s10.SeriesPermutation, indicator: str) -> None:
        self.permute = permute
        self._indicator = indicator

    def format_serial(self, origin: str, destination: str, serial: int) -> str:
        """The 13-character number; the series' country is the request's origin."""
        return s10.format_number(self._indicator, serial, origin)


class SeriesBlocks(Issuer):
    """One series' blocks: smaller than the default counter's, and lasting longer, so that a
    series used now and then holds a few values and asks the allocator seldom."""

    min_block = 32
    max_block = 1000
    lease_interval = 5.0

    def __init__(
        self, client: AllocatorClient, timeout: float, indicator: str, country: str, order: str
    ) -> None:
        super().__init__(client, timeout)
        self.series = s10_series(indicator, country)
        self._indicator, self._country, self._order = indicator, country, order
        self._made: SeriesGrant | None = None  # the first grant: the series' order and size

    async def _lease(self, size: int) -> tuple[int, int]:
        grant = await self._client.lease_series(self.series, self._order, size)
        self._made = self._made or grant
        return grant.start, grant.stop

    def _new_formatter(self) -> S10Formatter:  # type: ignore[override]
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


class S10Issuer:
    """The worker's S10 numbers: the operator's indicators, and the blocks of the series in use
    (at most MAX_SERIES_HELD, the most recently used)."""

    def __init__(self, client: AllocatorClient, config: Config) -> None:
        self._client = client
        self._timeout = config.lease_timeout
        self._order = config.s10_order
        self._listed = config.s10_indicators
        self._allowed = allowed_indicators(config.s10_indicators)
        # By (indicator, country), the most recently used last.
        self._series: collections.OrderedDict[tuple[str, str], SeriesBlocks] = (
            collections.OrderedDict()
        )

    @property
    def held(self) -> int:
        """How many series this worker holds blocks of."""
        return len(self._series)

    def refusal(self, indicator: str) -> str | None:
        """Why ``indicator`` is not issued here (a 400's message), or None if it is."""
        if s10.allows(self._allowed, indicator):
            return None
        return s10.refusal(indicator, self._listed)

    async def issue_many(self, indicator: str, country: str, count: int) -> list[Issued]:
        """``count`` numbers of the series of ``indicator`` and ``country`` (an allowed
        indicator); raises AllocatorError, SeriesExhausted once the series is used up."""
        blocks = self._blocks(indicator, country)
        if count == 1:
            # Most often from the block in hand: no await, no deadline to set up.
            issued = blocks.issue_nowait(country, "")
            if issued is not None:
                return [issued]
        return await blocks.issue_many(country, "", count)

    def _blocks(self, indicator: str, country: str) -> SeriesBlocks:
        key = (indicator, country)  # cheaper to look up than the series' name
        blocks = self._series.get(key)
        if blocks is None:
            blocks = self._series[key] = SeriesBlocks(
                self._client, self._timeout, indicator, country, self._order
            )
            if len(self._series) > MAX_SERIES_HELD:
                # Dropped, not cancelled: a request may be waiting for its block. What it
                # holds is a gap.
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        return blocks

    async def close(self) -> None:
        for blocks in self._series.values():
            await blocks.close()
        self._series.clear()
