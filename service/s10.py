"""UPU S10 numbers: ``SS NNNNNNNN C CC``, 13 characters.

``SS`` is the service indicator (config/indicators.py says which are issued), ``NNNNNNNN`` the
serial, ``C`` the UPU check digit over the serial and ``CC`` the issuing operator's country. A
series (one indicator and one country) is a counter of its own; its serials are a keyed
permutation of that counter (``SeriesPermutation``), or the counter itself where an operator
asks for a sequential order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from config.indicators import IndicatorKind, allowed_indicators, classify
from service import ff1

__all__ = [
    "NUMBER_LENGTH",
    "ONE_AT_A_TIME_BELOW",
    "SERIES_SIZE",
    "IndicatorKind",
    "SeriesPermutation",
    "allowed_indicators",
    "allows",
    "check_digit",
    "classify",
    "format_number",
    "refusal",
]

SERIAL_DIGITS = 8
SERIES_SIZE = 10**SERIAL_DIGITS
NUMBER_LENGTH = 2 + SERIAL_DIGITS + 1 + 2
WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)

# Fewer serials than this are computed one by one in Python's integers (``FF1Blocks.encrypt_one``,
# about 8 µs each), more in one numpy call (about 80 µs however few): a cold series' request
# (service/s10_blocks.py) takes one to a few.
ONE_AT_A_TIME_BELOW = 8

# BLAKE2b's personalisation of the S10 key, derived from the store's so that no FF1 key serves
# two purposes; FF1's tweak then carries the series, so that series differ.
_SERIES_PERSON = b"upu-s10-series"


def check_digit(serial8: str) -> str:
    """The UPU S10 check digit of 8 digits: 11 - (weighted sum mod 11); 10 -> 0, 11 -> 5."""
    return _check_of(
        sum(int(digit) * weight for digit, weight in zip(serial8, WEIGHTS, strict=True))
    )


def _check_of(total: int) -> str:
    """The check digit of a serial whose digits' weighted sum is ``total``."""
    check = 11 - total % 11
    return "0" if check == 10 else "5" if check == 11 else str(check)


def _weighted(weights: Sequence[int]) -> list[int]:
    """The weighted sum of the digits of every four-digit value, as ``check_digit`` sums."""
    return [sum(int(d) * w for d, w in zip(f"{n:04d}", weights, strict=True)) for n in range(10**4)]


# The hot path's check digit (``format_number``): the weighted sums of a serial's first and
# last four digits looked up, not summed digit by digit (0.8 against 2.8 µs a number); the
# check digit of every remainder mod 11.
_FIRST, _LAST = _weighted(WEIGHTS[:4]), _weighted(WEIGHTS[4:])
_CHECK = [_check_of(remainder) for remainder in range(11)]


def format_number(indicator: str, serial: int, country: str) -> str:
    """The 13-character S10 number of ``serial`` (below 10**8) in a series."""
    if not 0 <= serial < SERIES_SIZE:
        raise ValueError(f"an S10 serial is 8 digits, not {serial}")
    first, last = divmod(serial, 10**4)
    check = _CHECK[(_FIRST[first] + _LAST[last]) % 11]
    return f"{indicator}{serial:08d}{check}{country}"


def allows(allowed: frozenset[str], indicator: str) -> bool:
    """Whether the operator's indicators (``config.indicators.allowed_indicators``) hold it."""
    return indicator in allowed


def refusal(indicator: str, listed: Sequence[str]) -> str:
    """Why the issuing route refuses ``indicator`` (its 400 message), given the operator's
    ``s10_indicators``; the caller has checked that ``allows`` is false."""
    kind = classify(indicator)
    if kind == "reserved":
        return (
            f"{indicator} is reserved by UPU S10 (indicators beginning with J, K, S, T or W) and "
            "is never issued"
        )
    if kind == "unknown":
        return f"{indicator!r} is not a UPU S10 service indicator"
    use = "international" if kind == "international" else "domestic or bilateral"
    return (
        f"{indicator} (for {use} use) is not among the indicators this operator issues "
        f"(s10_indicators: {', '.join(listed) or 'none'})"
    )


def _digits(size: int) -> int:
    """FF1's length for ``[0, size)``: the digits of ``size - 1``, at least FF1's two."""
    return max(2, len(str(size - 1)))


class SeriesPermutation:
    """A series' order: a bijection of ``[0, size)``, from the series' counter to its serial.

    Permuted, it is NIST FF1 (10 rounds of AES-256, as the default scheme's permutation,
    docs/architecture.md) on the serial's decimal digits, with a key derived from the store's
    and the series as the tweak, so that series differ. Over 10**8 it needs no cycle walking;
    a smaller ``size`` (tests) walks the cycle of ``10**digits`` until the value falls inside.
    Sequential, it is the identity.
    """

    # FF1's cost is per call, not per value (docs/performance.md): serials are computed a
    # chunk at a time, and ``__call__`` keeps the last chunk, since a worker takes a block's
    # counters in order. One chunk of uint64 per series is 2 KiB.
    chunk = 256

    def __init__(
        self, key: bytes, indicator: str, country: str, order: str, size: int = SERIES_SIZE
    ) -> None:
        if order not in ("permuted", "sequential"):
            raise ValueError(f"unknown S10 order {order!r}")
        if not 1 <= size <= SERIES_SIZE:
            raise ValueError(f"a series holds 1 to {SERIES_SIZE} serials, not {size}")
        self.size = size
        self.order = order
        self._digits = _digits(size)
        self._key = hashlib.blake2b(key=key, digest_size=32, person=_SERIES_PERSON).digest()
        self._tweak = (indicator + country).encode("ascii")
        self._blocks: ff1.FF1Blocks | None = None
        if order == "permuted":
            self._blocks = ff1.FF1Blocks(self._key, 10, self._digits, self._tweak)
        self._memo_start = -1
        self._memo = np.empty(0, dtype=np.uint64)

    def __call__(self, counter: int) -> int:
        if not 0 <= counter < self.size:
            raise ValueError(f"counter {counter} is outside the series (size {self.size})")
        if self._blocks is None:
            return counter
        offset = counter - self._memo_start
        if not 0 <= offset < len(self._memo):
            self._memo_start = counter - counter % self.chunk
            stop = min(self._memo_start + self.chunk, self.size)
            self._memo = self._encrypt(np.arange(self._memo_start, stop, dtype=np.uint64))
            offset = counter - self._memo_start
        return int(self._memo[offset])

    def serials(self, start: int, stop: int) -> list[int]:
        """The serials of the counters ``[start, stop)``, in order."""
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"counters {start} to {stop} are outside the series")
        if self._blocks is None:
            return list(range(start, stop))
        if stop - start < ONE_AT_A_TIME_BELOW:
            return [self._encrypt_one(counter) for counter in range(start, stop)]
        return self._encrypt(np.arange(start, stop, dtype=np.uint64)).tolist()

    def invert(self, serial: int) -> int:
        """The counter whose serial is ``serial`` (below ``size``)."""
        if not 0 <= serial < self.size:
            raise ValueError(f"serial {serial} is outside the series (size {self.size})")
        if self._blocks is None:
            return serial
        value = serial
        while True:
            digits = ff1.numerals(value, 10, self._digits)
            value = ff1.num(ff1.decrypt(self._key, self._tweak, 10, digits), 10)
            if value < self.size:
                return value

    def _encrypt_one(self, counter: int) -> int:
        assert self._blocks is not None
        value = self._blocks.encrypt_one(counter)
        while value >= self.size:  # cycle walking, as in ``_encrypt``
            value = self._blocks.encrypt_one(value)
        return value

    def _encrypt(self, counters: np.ndarray) -> np.ndarray:
        assert self._blocks is not None
        values = self._blocks.encrypt(counters)
        # Cycle walking: following FF1's cycle from a value inside ``[0, size)`` to the next
        # one inside is a bijection of ``[0, size)``.
        outside = values >= self.size
        while outside.any():
            values[outside] = self._blocks.encrypt(values[outside])
            outside = values >= self.size
        return values
