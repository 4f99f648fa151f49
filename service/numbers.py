"""Tracking numbers: ``OO DD SSSSSSSSSSS C``.

``OO`` and ``DD`` are the origin and destination countries, ``S…`` is ``permute(counter)`` in
base 36 over 11 characters, and ``C`` is the ISO/IEC 7064 MOD 37,36 check character over the 15
characters before it. A number is a pure function of (key, scheme, counter, origin,
destination); the store records the scheme beside the key, so it never changes for a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from allocator.counter import COUNTER_LIMIT, SCHEME_FEISTEL4, SCHEME_FEISTEL10, SCHEME_FF1
from service import ff1

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SERIAL_LENGTH = 11
NUMBER_LENGTH = 2 + 2 + SERIAL_LENGTH + 1
COUNTER_BITS = 56


class Rounds(NamedTuple):
    """What a scheme's Feistel network is made of."""

    count: int
    # A keyed BLAKE2 constructor: hashlib.blake2b or hashlib.blake2s.
    blake2: Callable[..., hashlib._Hash]
    # The personalisation of round r is ``person % r``: one independent function per round.
    person: bytes


# Frozen: a key's numbers must never change (tests/service/test_numbers.py pins each scheme).
# Scheme 3, FF1, is ``FF1Permutation`` below.
FEISTEL_SCHEMES = {
    # Stores made before schemes were recorded: the margin of 4 rounds on 28-bit halves is only
    # about 2**14 known pairs (docs/architecture.md).
    SCHEME_FEISTEL4: Rounds(4, hashlib.blake2b, b"tracking-round%d"),
    # Stores made before scheme 3: 10 rounds, as NIST FF1. BLAKE2s finalises a 64-byte block
    # where BLAKE2b finalises 128 bytes: for our 4-byte inputs it is the cheaper PRF
    # (docs/performance.md).
    SCHEME_FEISTEL10: Rounds(10, hashlib.blake2s, b"tn10r%d"),
}

_VALUE = {char: value for value, char in enumerate(ALPHABET)}
_PAIR = 36**2


# ISO/IEC 7064 MOD 37,36 (a hybrid system, M = 36): the state after each character is
# ((state or M) * 2 mod (M + 1) + value) mod M, starting from M / 2.
def _step(state: int, value: int) -> int:
    return ((state or 36) * 2 % 37 + value) % 36


_INITIAL_STATE = 18


def _final(state: int) -> str:
    return ALPHABET[(1 - (state or 36) * 2 % 37) % 36]


def _state_after(text: str) -> int:
    state = _INITIAL_STATE
    for char in text:
        state = _step(state, _VALUE[char])
    return state


def check_character(text: str) -> str:
    """The MOD 37,36 check character of ``text`` (upper-case ``[0-9A-Z]``)."""
    return _final(_state_after(text))


class Parts(NamedTuple):
    """What a well-shaped number holds, as ``parse`` reads it."""

    origin: str
    destination: str
    serial: int  # the permuted counter
    check: str  # the check character, as written
    expected_check: str  # the check character of the 15 characters before it


def parse(number: str) -> Parts:
    """The parts of ``number``: 16 characters of ``ALPHABET`` (checked by the caller)."""
    body, check = number[:-1], number[-1]
    return Parts(body[:2], body[2:4], int(body[4:], 36), check, check_character(body))


def _pair_tables() -> tuple[list[str], bytes, bytes]:
    """Two-character base-36 digits, and the check state after one or two more characters.

    Formatting then costs six table look-ups instead of eleven divisions and fifteen check
    steps. The permuted serials are random, so each look-up lands anywhere in the tables: they
    must stay small enough for the caches, which three-character ones are not under load
    (docs/performance.md has the sizes and costs).
    """
    digits = [ALPHABET[i // 36] + ALPHABET[i % 36] for i in range(_PAIR)]
    # rows[state][value] is the state after one more character; after_two is rows joined.
    rows = [bytes(_step(state, value) for value in range(36)) for state in range(36)]
    after_one = b"".join(rows)
    after_two = b"".join(rows[rows[state][a]] for state in range(36) for a in range(36))
    return digits, after_one, after_two


_DIGITS, _AFTER_ONE, _AFTER_TWO = _pair_tables()
_FINAL = [_final(state) for state in range(36)]


class Permutation(Protocol):
    """A scheme's keyed bijection from counters to serials (``permutation`` makes one)."""

    # Serials, and what ``invert`` takes, are below this.
    domain: int
    # How many serials ``serials`` is asked for at a time: a whole block at once would hold up
    # the event loop, one at a time would lose what FF1 gains by the block (docs/performance.md).
    chunk: int

    def __call__(self, counter: int) -> int: ...

    def invert(self, serial: int) -> int:
        """The counter of ``serial``; FF1's may be 2**56 or more: a serial never issued."""
        ...

    def serials(self, start: int, stop: int) -> list[int]:
        """The serials of the counters ``[start, stop)``, in order."""
        ...


class Feistel:
    """A keyed bijection on ``[0, 2**(2 * half_bits))``: a balanced Feistel network.

    The round functions are keyed BLAKE2, one personalisation per round, as ``scheme`` says.
    Production uses ``half_bits=28`` (the 56-bit counter space); tests use a small domain to
    check, exhaustively and through this same code, that it is a bijection.
    """

    # A serial costs about 5 µs, one at a time or not: a chunk of 16 holds up the event loop
    # about as long as a request does.
    chunk = 16

    def __init__(self, key: bytes, scheme: int, half_bits: int = COUNTER_BITS // 2) -> None:
        if not 1 <= half_bits <= 32:
            raise ValueError("half_bits must be between 1 and 32")
        rounds = FEISTEL_SCHEMES.get(scheme)
        if rounds is None:
            raise ValueError(f"unknown permutation scheme {scheme}")
        self.domain = 1 << (2 * half_bits)
        self._half_bits = half_bits
        self._mask = (1 << half_bits) - 1
        # Keying BLAKE2 costs more than hashing four bytes, so key once and copy per round
        # (through the bound copy methods: this is the hottest loop of a request).
        self._rounds = tuple(
            rounds.blake2(key=key, digest_size=4, person=rounds.person % r).copy
            for r in range(rounds.count)
        )

    def __call__(self, counter: int) -> int:
        bits, mask, from_bytes = self._half_bits, self._mask, int.from_bytes
        left, right = counter >> bits, counter & mask
        for keyed in self._rounds:
            h = keyed()
            h.update(right.to_bytes(4, "little"))
            left, right = right, left ^ (from_bytes(h.digest(), "little") & mask)
        return (left << bits) | right

    def invert(self, value: int) -> int:
        bits, mask, from_bytes = self._half_bits, self._mask, int.from_bytes
        left, right = value >> bits, value & mask
        for keyed in reversed(self._rounds):
            h = keyed()
            h.update(left.to_bytes(4, "little"))
            left, right = right ^ (from_bytes(h.digest(), "little") & mask), left
        return (left << bits) | right

    def serials(self, start: int, stop: int) -> list[int]:
        return [self(counter) for counter in range(start, stop)]


# Scheme 3's FF1 parameters: the serial's 11 base-36 characters, and no tweak, since the key
# serves this one purpose (docs/architecture.md, "The permutation").
FF1_RADIX = 36
FF1_TWEAK = b""


class FF1Permutation:
    """Scheme 3: NIST SP 800-38G FF1 with AES-256 on the serial's 11 base-36 characters.

    FF1 permutes all 36**11 serials, and the counters (below 2**56) are a part of them: the
    serial of a counter is FF1 of its 11 digits, with no cycle walking. So a serial can be any
    11 characters, and one whose inverse is 2**56 or more was never issued.
    """

    domain = FF1_RADIX**SERIAL_LENGTH
    # 256 serials cost about 80 µs at once, 0.3 µs each (docs/performance.md).
    chunk = 256

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._blocks = ff1.FF1Blocks(key, FF1_RADIX, SERIAL_LENGTH, FF1_TWEAK)

    def __call__(self, counter: int) -> int:
        return self.serials(counter, counter + 1)[0]

    def invert(self, serial: int) -> int:
        digits = ff1.numerals(serial, FF1_RADIX, SERIAL_LENGTH)
        return ff1.num(ff1.decrypt(self._key, FF1_TWEAK, FF1_RADIX, digits), FF1_RADIX)

    def serials(self, start: int, stop: int) -> list[int]:
        return self._blocks.encrypt(np.arange(start, stop, dtype=np.uint64)).tolist()


def serial_limit(scheme: int | None) -> int:
    """Every serial of ``scheme`` is below this. With the scheme not known yet (no allocator
    since the worker started), any 11 characters: a number is never called invalid wrongly."""
    return COUNTER_LIMIT if scheme in FEISTEL_SCHEMES else FF1Permutation.domain


def permutation(key: bytes, scheme: int) -> Permutation:
    """The permutation of ``key`` under ``scheme`` (the store's)."""
    if scheme == SCHEME_FF1:
        return FF1Permutation(key)
    return Feistel(key, scheme)


class NumberFormatter:
    """Turns counters into tracking numbers for one key and its scheme."""

    def __init__(self, key: bytes, scheme: int) -> None:
        self.permute = permutation(key, scheme)
        self._route_states: dict[str, int] = {}

    def format(self, origin: str, destination: str, counter: int) -> str:
        """The 16-character number of ``counter``, one at a time (the worker takes serials a
        chunk at a time, ``Issuer``)."""
        return self.format_serial(origin, destination, self.permute(counter))

    def format_serial(self, origin: str, destination: str, serial: int) -> str:
        """The 16-character number; origin and destination are upper-case alpha-2 codes."""
        route = origin + destination
        state = self._route_states.get(route)
        if state is None:
            state = self._route_states[route] = _state_after(route)
        # 11 base-36 digits = 1 + 2 + 2 + 2 + 2 + 2, most significant first.
        rest, f = divmod(serial, _PAIR)
        rest, e = divmod(rest, _PAIR)
        rest, d = divmod(rest, _PAIR)
        rest, c = divmod(rest, _PAIR)
        a, b = divmod(rest, _PAIR)
        state = _AFTER_ONE[state * 36 + a]
        state = _AFTER_TWO[state * _PAIR + b]
        state = _AFTER_TWO[state * _PAIR + c]
        state = _AFTER_TWO[state * _PAIR + d]
        state = _AFTER_TWO[state * _PAIR + e]
        state = _AFTER_TWO[state * _PAIR + f]
        digits = _DIGITS
        return (
            route + ALPHABET[a] + digits[b] + digits[c] + digits[d] + digits[e] + digits[f]
            + _FINAL[state]
        )  # fmt: skip
