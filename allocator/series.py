"""Named counters: the default scheme's, and one per UPU S10 series (issue 20).

The default counter is the store's original one (``counter`` row, key and scheme beside it).
Every S10 series (one service indicator, one country) is a counter of its own, with its own
reservation mark, its own size (10**8 serials) and its own order, both fixed when the series is
made and stored with it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, NamedTuple

import msgspec

# The default scheme's counter: its name on the wire and in the status.
DEFAULT_SERIES = ""
# A UPU S10 series holds 10**8 serials (service/s10.py's SERIES_SIZE: a test pins them equal).
S10_SERIES_SIZE = 10**8
ORDERS = ("permuted", "sequential")
Order = Literal["permuted", "sequential"]
# "s10:RR:GB": the indicator and the country, upper case.
SERIES_PATTERN = r"^(?:s10:[A-Z]{2}:[A-Z]{2})?\Z"
SeriesName = Annotated[str, msgspec.Meta(pattern=SERIES_PATTERN)]
_NAME = re.compile(SERIES_PATTERN)


class Series(NamedTuple):
    """A series as the store keeps it: its mark, and what was fixed when it was made."""

    name: str
    order: str
    size: int
    reserved: int


def s10_series(indicator: str, country: str) -> str:
    """The counter name of the S10 series of ``indicator`` and ``country``: ``s10:RR:GB``."""
    name = f"s10:{indicator}:{country}"
    if not _NAME.match(name):
        raise ValueError(f"not an S10 series: {name!r}")
    return name
