"""The number path reads no clock: a number is a pure function of (key, counter, route).

A profiler sees every call into C, which is where every clock is read (time.time, monotonic,
perf_counter, datetime.now, …), so formatting numbers under it shows any clock read at all.
tests/system/test_clock.py shows the same from outside, with the wall clock moved under a
running service.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from allocator.counter import KNOWN_SCHEMES
from service.numbers import NumberFormatter, permutation

KEY = bytes(range(32))
CLOCKS = {
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
    "process_time",
    "process_time_ns",
    "thread_time",
    "thread_time_ns",
    "clock_gettime",
    "clock_gettime_ns",
    "localtime",
    "gmtime",
    "now",
    "utcnow",
    "today",
}


@contextmanager
def clock_reads() -> Iterator[list[str]]:
    """The names of the clock functions called (from C or Python) inside the block."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or getattr(owner, "__module__", "")
            if arg.__name__ in CLOCKS and module in ("time", "datetime"):
                seen.append(f"{module}.{arg.__name__}")

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def test_the_detector_sees_every_kind_of_clock_read() -> None:
    reads: list[Callable[[], object]] = [
        time.time,
        time.monotonic,
        time.perf_counter_ns,
        datetime.datetime.now,
        lambda: datetime.datetime.now(datetime.UTC),
        datetime.date.today,
    ]
    for read in reads:
        with clock_reads() as seen:
            read()
        assert seen, read


@pytest.mark.parametrize("scheme", KNOWN_SCHEMES)
def test_formatting_numbers_reads_no_clock(scheme: int) -> None:
    formatter = NumberFormatter(KEY, scheme)
    with clock_reads() as seen:
        numbers = [formatter.format("MY", "ID", counter) for counter in range(1000)]
        numbers += [formatter.format("US", "GB", counter) for counter in (0, 2**56 - 1)]
    assert seen == []
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("scheme", KNOWN_SCHEMES)
def test_the_permutation_reads_no_clock(scheme: int) -> None:
    permute = permutation(KEY, scheme)
    with clock_reads() as seen:
        assert [permute.invert(permute(x)) for x in range(1000)] == list(range(1000))
        assert permute.serials(0, 1000) == [permute(x) for x in range(1000)]
    assert seen == []
