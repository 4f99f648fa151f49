"""Numbers do not reveal their order: nothing about the next number follows from the last one.

Over 10,000 consecutive numbers, for every varying position of the next number (the 11 serial
characters and the check character) and every position of the previous one, a chi-square
test of independence finds no relation; nor is the step from one character to the next at the
same position anything but uniform. tests/service/test_numbers.py has the spread over the
whole domain and the per-position uniformity.

The statistics are run on weak mappings too (the counter itself, a multiplication, one XOR),
which they must catch: that is what shows they can fail.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise

import pytest

from allocator.counter import KNOWN_SCHEMES
from service.numbers import ALPHABET, NumberFormatter, check_character

KEY = bytes(range(32))
SAMPLE = 10_000
VARYING = range(4, 16)  # the serial (4-14) and the check character (15)
# A z-score this high happens by chance about once in 3.5 million tests: with 156 tests per
# sample, an honest permutation passes; any real dependence scores far higher.
Z_LIMIT = 5.0


def z_score(chi_square: float, degrees: int) -> float:
    """How far a chi-square statistic is above its expectation, in standard deviations
    (Wilson-Hilferty: the cube root of chi-square/df is nearly normal)."""
    scale = 2 / (9 * degrees)
    return ((chi_square / degrees) ** (1 / 3) - (1 - scale)) / math.sqrt(scale)


def independence(pairs: Sequence[tuple[str, str]]) -> float:
    """z-score of the chi-square test that the two sides of ``pairs`` are independent."""
    joint = Counter(pairs)
    left = Counter(a for a, _ in pairs)
    right = Counter(b for _, b in pairs)
    if len(left) == 1 or len(right) == 1:
        return math.inf  # a constant position: predictable outright
    n = len(pairs)
    chi_square = 0.0
    for a, count_a in left.items():
        for b, count_b in right.items():
            expected = count_a * count_b / n
            chi_square += (joint[(a, b)] - expected) ** 2 / expected
    return z_score(chi_square, (len(left) - 1) * (len(right) - 1))


def step_randomness(pairs: Sequence[tuple[str, str]]) -> float:
    """z-score of the chi-square test that the step (next - previous) mod 36 is distributed as
    it would be between independent characters. (Uniform for most positions; not for the
    leading one, which only reaches J because 2**56 < 36**11.)"""
    n = len(pairs)
    steps = Counter((ALPHABET.index(b) - ALPHABET.index(a)) % 36 for a, b in pairs)
    before = Counter(ALPHABET.index(a) for a, _ in pairs)
    after = Counter(ALPHABET.index(b) for _, b in pairs)
    chi_square, degrees = 0.0, -1
    for step in range(36):
        expected = sum(before[v] * after[(v + step) % 36] for v in range(36)) / n
        if expected > 0:
            chi_square += (steps[step] - expected) ** 2 / expected
            degrees += 1
        elif steps[step]:
            return math.inf
    return z_score(chi_square, degrees) if degrees > 0 else math.inf


def worst_dependence(numbers: Sequence[str]) -> tuple[float, str]:
    """The highest z-score over every test, and which test it was."""
    worst = (-math.inf, "")
    for position in VARYING:
        same = [(a[position], b[position]) for a, b in pairwise(numbers)]
        worst = max(worst, (step_randomness(same), f"step at position {position}"))
        for previous in VARYING:
            pairs = [(a[previous], b[position]) for a, b in pairwise(numbers)]
            worst = max(worst, (independence(pairs), f"{previous} -> {position}"))
    return worst


def numbers_from(serial_of: Callable[[int], int], start: int) -> list[str]:
    """Numbers whose serial is ``serial_of(counter)``, formatted like the service's."""
    digits = []
    for counter in range(start, start + SAMPLE):
        value, text = serial_of(counter), ""
        for _ in range(11):
            value, digit = divmod(value, 36)
            text = ALPHABET[digit] + text
        digits.append("MYID" + text + check_character("MYID" + text))
    return digits


@pytest.mark.parametrize("scheme", KNOWN_SCHEMES, ids=lambda scheme: f"scheme{scheme}")
@pytest.mark.parametrize("start", [0, 2**56 - SAMPLE], ids=["from-0", "to-the-end"])
def test_no_position_of_a_number_is_predictable_from_the_previous_number(
    start: int, scheme: int
) -> None:
    formatter = NumberFormatter(KEY, scheme)
    numbers = [formatter.format("MY", "ID", c) for c in range(start, start + SAMPLE)]
    z, test = worst_dependence(numbers)
    assert z < Z_LIMIT, f"{test}: z = {z:.1f}"


@pytest.mark.parametrize(
    "weak",
    [
        lambda c: c,  # the counter itself
        lambda c: (c * 0x9E3779B97F4A7C15) % 2**56,  # a multiplicative hash
        lambda c: c ^ 0x5A5A5A5A5A5A5A,  # a fixed XOR
    ],
    ids=["identity", "multiply", "xor"],
)
def test_the_statistics_catch_weak_mappings(weak: Callable[[int], int]) -> None:
    z, _ = worst_dependence(numbers_from(weak, 2**40))
    assert z > 10 * Z_LIMIT
