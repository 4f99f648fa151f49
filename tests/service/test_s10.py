"""UPU S10 numbers: the check digit, the format and a series' order (service/s10.py)."""

import hashlib
import itertools
import random
import re

import pytest

from service import ff1
from service.s10 import (
    NUMBER_LENGTH,
    ONE_AT_A_TIME_BELOW,
    SERIES_SIZE,
    SeriesPermutation,
    check_digit,
    format_number,
)

KEY = bytes(range(32))
OTHER_KEY = hashlib.sha256(b"another key").digest()
S10_PATTERN = re.compile(r"^[A-Z]{2}[0-9]{8}[0-9][A-Z]{2}\Z")
# The examples: RR287043775IN is the case where 11 - (sum mod 11) = 11 gives 5.
VALID_NUMBERS = ["RR473124829GB", "EE471108151FR", "EB000717618HK", "RR287043775IN"]


@pytest.mark.parametrize("number", VALID_NUMBERS)
def test_check_digit_of_the_published_examples(number: str) -> None:
    assert check_digit(number[2:10]) == number[10]


def test_check_digit_maps_ten_to_zero_and_eleven_to_five() -> None:
    # A weighted sum of 0: 11 - 0 = 11, written 5.
    assert check_digit("00000000") == "5"
    # 7 * 8 = 56 = 5 * 11 + 1: 11 - 1 = 10, written 0.
    assert check_digit("70000000") == "0"


@pytest.mark.parametrize("number", VALID_NUMBERS)
def test_format_number_rebuilds_the_published_examples(number: str) -> None:
    assert format_number(number[:2], int(number[2:10]), number[11:]) == number


def test_format_number_pads_the_serial_to_eight_digits() -> None:
    number = format_number("RR", 42, "GB")

    assert number == "RR00000042" + check_digit("00000042") + "GB"
    assert len(number) == NUMBER_LENGTH
    assert S10_PATTERN.match(number)


@pytest.mark.parametrize("serial", [-1, SERIES_SIZE])
def test_format_number_refuses_a_serial_of_more_than_eight_digits(serial: int) -> None:
    with pytest.raises(ValueError, match="8 digits"):
        format_number("RR", serial, "GB")


# --- a series' order --------------------------------------------------------------------------

SMALL_SIZES = [1, 2, 7, 99, 100, 101, 1000, 1001, 4096]


@pytest.mark.parametrize("order", ["permuted", "sequential"])
@pytest.mark.parametrize("size", SMALL_SIZES)
def test_series_order_is_a_bijection_of_every_small_size(size: int, order: str) -> None:
    permutation = SeriesPermutation(KEY, "RR", "GB", order, size=size)

    serials = [permutation(counter) for counter in range(size)]

    assert sorted(serials) == list(range(size))
    assert [permutation.invert(serial) for serial in serials] == list(range(size))
    assert permutation.serials(0, size) == serials


def test_sequential_order_is_the_counter_itself() -> None:
    permutation = SeriesPermutation(KEY, "RR", "GB", "sequential")

    assert [permutation(c) for c in (0, 1, 2, SERIES_SIZE - 1)] == [0, 1, 2, SERIES_SIZE - 1]
    assert permutation.serials(10, 14) == [10, 11, 12, 13]
    assert permutation.invert(12345678) == 12345678


def test_permuted_order_is_not_the_counter() -> None:
    permutation = SeriesPermutation(KEY, "RR", "GB", "permuted", size=1000)

    serials = permutation.serials(0, 1000)

    # A random permutation of 1000 fixes about one point; consecutive counters look unrelated.
    assert sum(serial == counter for counter, serial in enumerate(serials)) < 10
    assert sum(abs(b - a) == 1 for a, b in itertools.pairwise(serials)) < 20


def series_serials(key: bytes, indicator: str, country: str, count: int = 64) -> list[int]:
    return SeriesPermutation(key, indicator, country, "permuted").serials(0, count)


def test_series_differ_by_indicator_country_and_key() -> None:
    base = series_serials(KEY, "RR", "GB")

    assert series_serials(KEY, "RR", "GB") == base
    for other in (
        series_serials(KEY, "RE", "GB"),
        series_serials(KEY, "RR", "FR"),
        series_serials(OTHER_KEY, "RR", "GB"),
    ):
        assert other != base
        assert len(set(other) & set(base)) < 3


def test_full_series_is_ff1_of_the_eight_digits_under_the_derived_key() -> None:
    """Over 10**8 no cycle walking: the serial is FF1 (the standard's algorithm, checked against
    NIST's samples in test_ff1.py) of the counter's 8 digits, the series as the tweak."""
    derived = hashlib.blake2b(key=KEY, digest_size=32, person=b"upu-s10-series").digest()
    permutation = SeriesPermutation(KEY, "EE", "FR", "permuted")
    counters = [0, 1, 2, 255, 256, 12_345_678, SERIES_SIZE - 1]
    counters += random.Random(20).sample(range(SERIES_SIZE), 20)

    for counter in counters:
        digits = ff1.encrypt(derived, b"EEFR", 10, ff1.numerals(counter, 10, 8))
        assert permutation(counter) == ff1.num(digits, 10), counter
        assert permutation.serials(counter, counter + 1) == [ff1.num(digits, 10)]
        assert permutation.invert(ff1.num(digits, 10)) == counter


# Frozen: a series' numbers must never change for a key (a change would reissue serials).
PINNED = {0: 76_945_032, 1: 85_749_297, 99_999_999: 41_554_242}


def test_pinned_serials_of_a_permuted_series() -> None:
    permutation = SeriesPermutation(KEY, "RR", "GB", "permuted")

    assert {counter: permutation(counter) for counter in PINNED} == PINNED


def test_call_in_any_order_agrees_with_serials() -> None:
    permutation = SeriesPermutation(KEY, "CP", "DE", "permuted", size=10_000)
    expected = permutation.serials(0, 10_000)
    counters = random.Random(7).sample(range(10_000), 2_000)

    assert [permutation(counter) for counter in counters] == [expected[c] for c in counters]


@pytest.mark.parametrize("size", [7, 1001, SERIES_SIZE])
def test_a_few_serials_one_by_one_agree_with_many_at_once(size: int) -> None:
    """Below ONE_AT_A_TIME_BELOW serials (a cold series' request) are computed in Python's
    integers, cycle walking included; more in one numpy call: the same serials."""
    permutation = SeriesPermutation(KEY, "LZ", "NL", "permuted", size=size)
    many = min(size, 200)
    expected = permutation.serials(0, many)
    for start in range(many):
        for count in range(1, ONE_AT_A_TIME_BELOW):
            stop = min(start + count, many)
            assert permutation.serials(start, stop) == expected[start:stop]


@pytest.mark.parametrize("counter", [-1, 1000])
def test_counter_outside_the_series_is_refused(counter: int) -> None:
    permutation = SeriesPermutation(KEY, "RR", "GB", "permuted", size=1000)

    with pytest.raises(ValueError, match="outside the series"):
        permutation(counter)
    with pytest.raises(ValueError, match="outside the series"):
        permutation.invert(counter)


def test_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown S10 order"):
        SeriesPermutation(KEY, "RR", "GB", "shuffled")


def test_the_numbers_check_digit_is_the_one_summed_digit_by_digit() -> None:
    """format_number looks the weighted sums up by halves (the hot path); check_digit sums."""
    serials = [*range(0, SERIES_SIZE, 9_973), *range(9_990, 10_010), SERIES_SIZE - 1]
    for serial in serials:
        number = format_number("RR", serial, "GB")
        assert number[10] == check_digit(number[2:10]), serial
